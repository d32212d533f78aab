from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tumor_classifier.metrics import (
    apply_temperature,
    auc,
    bootstrap_intervals,
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    sensitivity_specificity,
    threshold_at_specificity,
)

NAMES = ("BEN", "CAN", "NOR")


def test_auc_equals_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + truth * 0.3, 1)  # many ties
    assert auc(truth, scores) == pytest.approx(roc_auc_score(truth, scores))
    assert auc(np.ones(5, bool), np.arange(5)) is None


def test_threshold_at_90_percent_specificity_by_hand() -> None:
    # ten negatives scored 0.0..0.9, positives 0.85 and 0.95
    truth = np.array([False] * 10 + [True, True])
    scores = np.array([i / 10 for i in range(10)] + [0.85, 0.95])
    threshold = threshold_at_specificity(truth, scores)
    # 9 of 10 negatives must fall below t: the lowest such t is the 10th negative, 0.9
    assert threshold == pytest.approx(0.9)
    result = sensitivity_specificity(truth, scores >= threshold)
    assert result == {"sensitivity": 0.5, "specificity": 0.9}


def test_expected_calibration_error_by_hand() -> None:
    # two bins used: confidence 0.9 (2 images, 1 correct) and 0.6 (2 images, both correct)
    probabilities = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05],
                              [0.2, 0.6, 0.2], [0.2, 0.6, 0.2]])
    labels = np.array([0, 1, 1, 1])
    expected = (2 * abs(0.5 - 0.9) + 2 * abs(1.0 - 0.6)) / 4
    assert expected_calibration_error(labels, probabilities) == pytest.approx(expected)


def test_temperature_scaling_lowers_validation_nll_and_keeps_decisions() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[labels]
    overconfident = apply_temperature(np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                                      0.25)
    temperature = fit_temperature(labels, overconfident)
    calibrated = apply_temperature(overconfident, temperature)
    assert temperature > 1.5
    assert negative_log_likelihood(labels, calibrated) < negative_log_likelihood(
        labels, overconfident)
    np.testing.assert_array_equal(calibrated.argmax(1), overconfident.argmax(1))
    np.testing.assert_allclose(calibrated.sum(1), 1.0, atol=1e-6)


def test_bootstrap_resamples_patients_not_images() -> None:
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0],    # woman a: right
                              [0.9, 0.1, 0.0], [0.7, 0.3, 0.0]])   # woman b: wrong
    by_patient = bootstrap_intervals(labels, probabilities, NAMES, ["a", "a", "b", "b"],
                                     resamples=2000, seed=0)
    assert by_patient["accuracy"] == [0.0, 1.0]
    again = bootstrap_intervals(labels, probabilities, NAMES, ["a", "a", "b", "b"],
                                resamples=2000, seed=0)
    assert again == by_patient  # fixed seed, same intervals


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 150)
    probabilities = rng.dirichlet(np.ones(3), 150) * 0.5 + np.eye(3)[labels] * 0.5
    metrics = compute_metrics(labels, probabilities, NAMES)
    intervals = bootstrap_intervals(labels, probabilities, NAMES, resamples=1000, seed=0)
    for key, value in (("accuracy", metrics["accuracy"]),
                       ("macro_auc_ovr", metrics["macro_auc_ovr"]),
                       ("auc_CAN_vs_rest", metrics["binary"]["CAN_vs_rest"]["auc"])):
        low, high = intervals[key]
        assert low <= value <= high and high - low < 0.3


def test_binary_tasks_in_compute_metrics() -> None:
    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[.6, .3, .1], [.2, .7, .1], [.1, .2, .7], [.5, .1, .4]])
    metrics = compute_metrics(labels, probabilities, NAMES,
                              thresholds={"CAN_vs_rest": 0.5, "abnormal_vs_normal": 0.5})
    abnormal = metrics["binary"]["abnormal_vs_normal"]
    # abnormal = BEN or CAN: images 0 and 1; argmax calls image 3 abnormal (BEN)
    assert abnormal["argmax"] == {"sensitivity": 1.0, "specificity": 0.5}
    assert abnormal["at_validation_90_specificity"]["specificity"] == 0.5
    assert metrics["binary"]["CAN_vs_rest"]["auc"] == pytest.approx(1.0)


def test_the_clinical_questions_find_their_classes_by_synonym() -> None:
    from tumor_classifier.config import class_index, describe_class

    # breast-ultrasound sets name their folders benign/malignant/normal
    assert class_index(("benign", "malignant", "normal"), "CAN") == 1
    assert class_index(("Benign", "Malignant", "Normal"), "NOR") == 2
    assert class_index(("BEN", "CAN", "NOR"), "NOR") == 2
    assert class_index(("a", "b"), "NOR") is None
    assert class_index(("NOR", "normal"), "NOR") is None  # ambiguous: neither is chosen
    assert describe_class("malignant") == "Malignant finding" and describe_class("x") == "x"
    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[.6, .3, .1], [.2, .7, .1], [.1, .2, .7], [.5, .1, .4]])
    by_name = compute_metrics(labels, probabilities, NAMES)["binary"]
    by_synonym = compute_metrics(labels, probabilities, ("benign", "malignant", "normal"))
    assert by_synonym["binary"] == by_name and set(by_name) == {"CAN_vs_rest",
                                                                "abnormal_vs_normal"}
    assert compute_metrics(labels, probabilities, ("a", "b", "c"))["binary"] == {}


def test_a_class_missing_from_the_labels_but_predicted_is_scored_quietly() -> None:
    # A validation split without CAN films: balanced accuracy is the mean recall of the
    # classes present, (1/2 + 2/2) / 2, and nothing is printed about it.
    labels = np.array([0, 0, 2, 2])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1],
                              [0.1, 0.2, 0.7], [0.2, 0.1, 0.7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = compute_metrics(labels, probabilities, ["BEN", "CAN", "NOR"])
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["per_class"]["CAN"]["auc_ovr"] is None
    assert metrics["binary"]["CAN_vs_rest"]["auc"] is None
