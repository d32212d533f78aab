"""Plots of a run: training history, confusion matrix, ROC curves.

Each function draws on the axes it is given (`ax=None`, or `axes=None` for the two-panel
plots: a new figure when None), returns the figure and never shows it (scikit-learn's
display convention), so the notebook and the CLI use the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; a notebook's inline backend still renders returned figures
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def save_figure(figure: Figure, path: Path) -> None:
    """Write `figure` as an image (format from the suffix) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def _two_panels(axes: Sequence[Any] | None, size: tuple[float, float]
                ) -> tuple[Figure, Sequence[Any]]:
    if axes is None:
        figure, new = plt.subplots(1, 2, figsize=size)
        return figure, list(new)
    if len(axes) != 2:
        raise ValueError(f"axes: expected two (left and right panels), got {len(axes)}.")
    return axes[0].figure, axes


def plot_history(history: Mapping[str, Sequence[float]], axes: Sequence[Any] | None = None
                 ) -> Figure:
    """Loss and accuracy per epoch, training and validation, side by side."""
    figure, axes = _two_panels(axes, (10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[metric], marker="o", label="training")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.legend()
        ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str],
                          axes: Sequence[Any] | None = None) -> Figure:
    """Counts and row-normalised rates (rows true, columns predicted; a class with no
    images has a row of zeros)."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    figure, axes = _two_panels(axes, (10, 4.2))
    panels: list[tuple[Any, np.ndarray, str, str]] = [
        (axes[0], matrix, "Counts", "d"),
        (axes[1], normalised, "Row-normalised (recall on the diagonal)", ".2f"),
    ]
    for ax, values, title, style in panels:
        image = ax.imshow(values, cmap="Blues", vmin=0)
        threshold = values.max() / 2 if values.size else 0
        for (row, column), value in np.ndenumerate(values):
            ax.text(column, row, format(value, style), ha="center", va="center",
                    color="white" if value > threshold else "black")
        ax.set_xticks(range(len(class_names)), class_names)
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        figure.colorbar(image, ax=ax, fraction=0.046)
    figure.tight_layout()
    return figure


def plot_roc(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str],
             ax: Any = None) -> Figure:
    """One-vs-rest ROC curve per class (classes absent from `labels` are left out)."""
    if ax is None:
        figure, ax = plt.subplots(figsize=(5, 5))
    else:
        figure = ax.figure
    for index, name in enumerate(class_names):
        positives = np.asarray(labels) == index
        if 0 < positives.sum() < len(positives):
            false_positive_rate, true_positive_rate, _ = roc_curve(
                positives, probabilities[:, index]
            )
            ax.plot(false_positive_rate, true_positive_rate, label=name)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one class vs rest")
    ax.legend(loc="lower right")
    return figure


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, ax: Any = None) -> Figure:
    """Reliability diagram: accuracy against confidence of the predicted class, per bin."""
    from .metrics import expected_calibration_error, reliability_bins

    if ax is None:
        figure, ax = plt.subplots(figsize=(5, 5))
    else:
        figure = ax.figure
    confidence, accuracy, counts = reliability_bins(labels, probabilities)
    used = counts > 0
    width = 1.0 / len(counts)
    centres = (np.arange(len(counts)) + 0.5) * width
    ax.bar(centres[used], accuracy[used], width=width * 0.9, alpha=0.7, label="accuracy")
    ax.plot(confidence[used], accuracy[used], "o", color="black", label="mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ece = expected_calibration_error(labels, probabilities)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    return figure
