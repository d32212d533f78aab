from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from tumor_classifier.plots import (
    plot_confusion_matrix,
    plot_history,
    plot_reliability,
    plot_roc,
    save_figure,
)


def test_confusion_matrix_shows_counts_and_row_rates_on_the_axes_given() -> None:
    matrix = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    figure, axes = plt.subplots(1, 2)
    assert plot_confusion_matrix(matrix, ["BEN", "CAN", "NOR"], axes=axes) is figure
    counts = [text.get_text() for text in axes[0].texts]
    rates = [text.get_text() for text in axes[1].texts]
    assert counts == ["3", "1", "0", "0", "0", "0", "2", "2", "4"]
    # rows are the true class; a class without images is a row of zeros, not NaN
    assert rates == ["0.75", "0.25", "0.00", "0.00", "0.00", "0.00", "0.25", "0.25", "0.50"]
    assert [label.get_text() for label in axes[0].get_xticklabels()] == ["BEN", "CAN", "NOR"]
    assert (axes[0].get_xlabel(), axes[0].get_ylabel()) == ("predicted", "true")
    with pytest.raises(ValueError, match=r"axes: expected two \(left and right panels\), got 1"):
        plot_confusion_matrix(matrix, ["BEN", "CAN", "NOR"], axes=[axes[0]])
    plt.close(figure)


def test_history_draws_each_metric_per_epoch_and_validation_only_when_there() -> None:
    history = {"loss": [1.0, 0.5, 0.25], "accuracy": [0.3, 0.6, 0.9],
               "val_loss": [1.1, 0.9, 1.2], "val_accuracy": [0.2, 0.4, 0.3]}
    figure = plot_history(history)
    loss, accuracy = figure.axes
    assert [list(line.get_ydata()) for line in loss.lines] == [history["loss"],
                                                              history["val_loss"]]
    assert list(accuracy.lines[0].get_xdata()) == [1, 2, 3]  # epochs count from 1
    plt.close(figure)
    figure = plot_history({"loss": [1.0, 0.5], "accuracy": [0.3, 0.6]})
    assert [len(ax.lines) for ax in figure.axes] == [1, 1]
    plt.close(figure)


def test_roc_has_one_curve_per_class_present_and_the_chance_line() -> None:
    labels = np.array([0, 0, 2, 2, 2])  # no CAN among them
    probabilities = np.array([[0.6, 0.1, 0.3], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6],
                              [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])
    figure, ax = plt.subplots()
    assert plot_roc(labels, probabilities, ["BEN", "CAN", "NOR"], ax=ax) is figure
    assert [line.get_label() for line in ax.lines] == ["BEN", "NOR", "chance"]
    false_positive_rate, true_positive_rate, _ = roc_curve(labels == 2, probabilities[:, 2])
    np.testing.assert_array_equal(ax.lines[1].get_xdata(), false_positive_rate)
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), true_positive_rate)
    plt.close(figure)


def test_reliability_bars_are_the_accuracy_per_confidence_bin_by_hand() -> None:
    # 15 equal-width bins (CALIBRATION_BINS). Predicted-class confidences 0.98 and 0.96
    # (bin 14/15 to 1; one right, one wrong: accuracy 0.5) and 0.55 (bin 8/15 to 9/15;
    # right: accuracy 1). ECE = (2 x |0.5 - 0.97| + 1 x |1 - 0.55|) / 3 = 0.463.
    labels = np.array([0, 1, 2])
    probabilities = np.array([[0.98, 0.02, 0.0], [0.96, 0.04, 0.0], [0.25, 0.2, 0.55]])
    figure = plot_reliability(labels, probabilities)
    ax = figure.axes[0]
    bars = sorted((bar.get_x() + bar.get_width() / 2, bar.get_height())
                  for bar in ax.patches)
    np.testing.assert_allclose(bars, [(8.5 / 15, 1.0), (14.5 / 15, 0.5)])
    assert ax.get_title() == "Reliability (ECE 0.463)"
    plt.close(figure)


def test_save_figure_writes_the_image_and_closes_the_figure(tmp_path: Path) -> None:
    figure = plot_history({"loss": [1.0, 0.5], "accuracy": [0.3, 0.6]})
    out = tmp_path / "plots" / "history.png"
    save_figure(figure, out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600
    assert not plt.fignum_exists(figure.number)
