"""Metrics a reviewer would accept: per-class and binary AUCs, sensitivity and specificity at
the argmax decision and at a fixed specificity, calibration, and patient-level bootstrap
confidence intervals. Pure functions of (labels, probabilities); nothing here reads files."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from .config import class_index

TARGET_SPECIFICITY = 0.9
CALIBRATION_BINS = 15


def auc(positives: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged, the same value as
    `sklearn.metrics.roc_auc_score`); None when only one class is present."""
    positives = np.asarray(positives, bool)
    count_positive = int(positives.sum())
    count_negative = len(positives) - count_positive
    if count_positive == 0 or count_negative == 0:
        return None
    ranks = rankdata(scores)
    rank_sum = float(ranks[positives].sum())
    return (rank_sum - count_positive * (count_positive + 1) / 2) / (
        count_positive * count_negative
    )


def binary_tasks(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The two clinical questions, where the classes allow them:

    - `CAN_vs_rest`: malignant or not; score = P(CAN).
    - `abnormal_vs_normal`: any finding (BEN or CAN) or normal; score = 1 - P(NOR).

    The classes are found by name, BEN/CAN/NOR or a synonym (`config.CLASS_SYNONYMS`).

    Returns each task's (truth, score, argmax decision) as arrays.
    """
    predicted = np.asarray(probabilities).argmax(axis=1)
    tasks = {}
    if (index := class_index(class_names, "CAN")) is not None:
        tasks["CAN_vs_rest"] = (labels == index, probabilities[:, index], predicted == index)
    if (index := class_index(class_names, "NOR")) is not None:
        tasks["abnormal_vs_normal"] = (
            labels != index, 1.0 - probabilities[:, index], predicted != index
        )
    return tasks


def sensitivity_specificity(truth: np.ndarray, decision: np.ndarray) -> dict[str, float | None]:
    truth, decision = np.asarray(truth, bool), np.asarray(decision, bool)
    positives, negatives = truth.sum(), (~truth).sum()
    return {
        "sensitivity": float((decision & truth).sum() / positives) if positives else None,
        "specificity": float((~decision & ~truth).sum() / negatives) if negatives else None,
    }


def threshold_at_specificity(truth: np.ndarray, scores: np.ndarray,
                             specificity: float = TARGET_SPECIFICITY) -> float | None:
    """The lowest threshold t (decision: score >= t) whose specificity is at least
    `specificity`: the most sensitive operating point that keeps it. None without
    negatives."""
    truth, scores = np.asarray(truth, bool), np.asarray(scores, float)
    negatives = np.sort(scores[~truth])
    if len(negatives) == 0:
        return None
    # Specificity at t is the share of negatives strictly below t.
    for candidate in np.unique(np.concatenate([negatives, [np.nextafter(negatives[-1], 2)]])):
        if np.mean(negatives < candidate) >= specificity:
            return float(candidate)
    return float(np.nextafter(negatives[-1], 2))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> float:
    """Top-label ECE: the bin-size-weighted mean |accuracy - confidence| over equal-width
    confidence bins."""
    confidence, accuracy, counts = reliability_bins(labels, probabilities, bins)
    used = counts > 0
    return float(np.sum(np.abs(accuracy[used] - confidence[used]) * counts[used])
                 / max(counts.sum(), 1))


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray,
                     bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean confidence, accuracy and count of each equal-width top-label confidence bin."""
    confidence = np.asarray(probabilities).max(axis=1)
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins).astype(float)
    safe = np.maximum(counts, 1)
    mean_confidence = np.bincount(which, confidence, minlength=bins) / safe
    mean_accuracy = np.bincount(which, correct.astype(float), minlength=bins) / safe
    return mean_confidence, mean_accuracy, counts


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax(log p / T): the model's softmax with its logits divided by T (the log of a
    softmax is the logits up to a constant, which softmax ignores)."""
    logits = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exponentials = np.exp(logits)
    return (exponentials / exponentials.sum(axis=1, keepdims=True)).astype(np.float32)


def negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float:
    picked = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Temperature scaling (Guo et al., 2017): the T in [0.05, 20] that minimises the
    negative log-likelihood of `labels`. It never changes the argmax decision."""
    labels = np.asarray(labels, int)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(
            labels, apply_temperature(probabilities, float(np.exp(log_t)))),
        bounds=(np.log(0.05), np.log(20.0)), method="bounded",
    )
    return float(np.exp(result.x))


def compute_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every metric of one evaluation.

    Args:
        labels: integer class per image.
        probabilities: (n, classes) predicted probabilities.
        class_names: in output order.
        thresholds: per binary task, the threshold that gave 90% specificity on the
            validation split; where given, sensitivity and specificity there are reported.
    """
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    indices = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    counts = np.bincount(labels, minlength=len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    per_class: dict[str, dict[str, Any]] = {}
    aucs = []
    for index, name in enumerate(class_names):
        value = auc(labels == index, probabilities[:, index])
        if value is not None:
            aucs.append(value)
        per_class[name] = {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
            "auc_ovr": value,
        }
    binary: dict[str, Any] = {}
    for task, (truth, score, decision) in binary_tasks(labels, probabilities,
                                                        class_names).items():
        binary[task] = {"auc": auc(truth, score),
                        "argmax": sensitivity_specificity(truth, decision)}
        threshold = (thresholds or {}).get(task)
        if threshold is not None:
            binary[task]["at_validation_90_specificity"] = {
                "threshold": threshold, **sensitivity_specificity(truth, score >= threshold)}
    majority = int(np.argmax(counts))
    with warnings.catch_warnings():
        # A split without some class (said where it is scanned) still gets predictions of
        # it: balanced accuracy is then the mean recall of the classes present (as in
        # `_headline`), and scikit-learn's warning about it would be noise on the console.
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        balanced_accuracy = float(balanced_accuracy_score(labels, predicted))
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": balanced_accuracy,
        "majority_baseline": float(counts[majority] / max(len(labels), 1)),
        "majority_class": class_names[majority],
        "macro_auc_ovr": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "binary": binary,
        "expected_calibration_error": expected_calibration_error(labels, probabilities),
        "negative_log_likelihood": negative_log_likelihood(labels, probabilities),
        # The log-loss of giving every image the split's class frequencies: what the
        # probabilities are worth next to knowing only how common each class is, as the
        # majority baseline is for the accuracy. A model trained with class weights scores
        # above it more easily than its ranking suggests (README, "Calibration and class
        # weights").
        "prevalence_baseline_nll": negative_log_likelihood(
            labels, np.tile(counts / max(len(labels), 1), (len(labels), 1))),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
        "class_names": list(class_names),
    }


def _headline(labels: np.ndarray, probabilities: np.ndarray,
              class_names: Sequence[str]) -> dict[str, float]:
    """The metrics that get confidence intervals, computed fast (no scikit-learn)."""
    predicted = probabilities.argmax(axis=1)
    recalls = [np.mean(predicted[labels == index] == index)
               for index in range(len(class_names)) if np.any(labels == index)]
    values = {"accuracy": float(np.mean(predicted == labels)),
              "balanced_accuracy": float(np.mean(recalls))}
    aucs = []
    for index, name in enumerate(class_names):
        value = auc(labels == index, probabilities[:, index])
        values[f"auc_{name}"] = np.nan if value is None else value
        if value is not None:
            aucs.append(value)
    values["macro_auc_ovr"] = float(np.mean(aucs)) if aucs else np.nan
    for task, (truth, score, _) in binary_tasks(labels, probabilities, class_names).items():
        value = auc(truth, score)
        values[f"auc_{task}"] = np.nan if value is None else value
    return values


def bootstrap_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    groups: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals for accuracy, balanced accuracy and every AUC.

    Resamples whole groups (women, when `groups` gives the patient of each image) with
    replacement, so two films of one woman are never treated as independent evidence.
    A resample in which a class is missing gives no AUC for it and is left out of that
    AUC's interval.
    """
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    group_ids = np.arange(len(labels)) if groups is None else np.unique(
        np.asarray(groups), return_inverse=True)[1]
    members = [np.flatnonzero(group_ids == group) for group in range(group_ids.max() + 1)]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(resamples):
        chosen = rng.integers(0, len(members), len(members))
        rows = np.concatenate([members[group] for group in chosen])
        for key, value in _headline(labels[rows], probabilities[rows], class_names).items():
            samples.setdefault(key, []).append(value)
    tail = (1 - level) / 2 * 100
    intervals: dict[str, list[float] | None] = {}
    for key, values in samples.items():
        finite = np.asarray(values)[np.isfinite(values)]
        intervals[key] = (None if len(finite) < resamples / 2 else
                          [float(np.percentile(finite, tail)),
                           float(np.percentile(finite, 100 - tail))])
    return intervals
