"""Evaluation a reviewer would accept: one unshuffled pass, predictions paired with labels by
file, every number next to the majority-class baseline."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from .cache import cache_images
from .config import save_json
from .data import scan_folder
from .plots import plot_confusion_matrix, plot_roc, save_figure
from .predict import Classifier

logger = logging.getLogger(__name__)


def compute_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Metrics of class probabilities against integer labels.

    AUCs are one-vs-rest; a class absent from `labels` (or the only one present) has no AUC
    (None), and the macro AUC averages the classes that have one.
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
        positives = labels == index
        auc = None
        if 0 < positives.sum() < len(labels):
            auc = float(roc_auc_score(positives, probabilities[:, index]))
            aucs.append(auc)
        per_class[name] = {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
            "auc_ovr": auc,
        }
    majority = int(np.argmax(counts))
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "majority_baseline": float(counts[majority] / max(len(labels), 1)),
        "majority_class": class_names[majority],
        "macro_auc_ovr": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
        "class_names": list(class_names),
    }


def format_summary(metrics: dict[str, Any], report: str) -> str:
    auc = metrics["macro_auc_ovr"]
    return (
        f"n = {metrics['n']}\n"
        f"accuracy           {metrics['accuracy']:.3f}\n"
        f"majority baseline  {metrics['majority_baseline']:.3f} "
        f"(always '{metrics['majority_class']}')\n"
        f"balanced accuracy  {metrics['balanced_accuracy']:.3f}\n"
        f"macro AUC (OvR)    {'n/a' if auc is None else f'{auc:.3f}'}\n\n"
        f"{report}"
    )


def write_evaluation(
    out: Path,
    files: Sequence[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    unreadable: Sequence[str] = (),
) -> dict[str, Any]:
    """Write metrics.json, predictions.csv, report.txt and the plots into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(labels, probabilities, class_names)
    metrics["unreadable"] = list(unreadable)
    report = classification_report(
        labels,
        probabilities.argmax(axis=1),
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        zero_division=0,
        digits=3,
    )
    save_json(metrics, out / "metrics.json")
    (out / "report.txt").write_text(format_summary(metrics, report), encoding="utf-8")
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["file", "label", "prediction"] + [f"prob_{name}" for name in class_names]
        )
        for file, label, row in zip(files, labels, probabilities, strict=True):
            writer.writerow(
                [file, class_names[label], class_names[int(np.argmax(row))]]
                + [f"{value:.6f}" for value in row]
            )
    save_figure(
        plot_confusion_matrix(np.array(metrics["confusion_matrix"]), class_names),
        out / "confusion_matrix.png",
    )
    save_figure(plot_roc(labels, probabilities, class_names), out / "roc.png")
    return metrics


def evaluate(
    run_dir: Path | str,
    data_dir: Path | str,
    out: Path | str | None = None,
    workers: int = 0,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on a class-folder dataset and write the report.

    Args:
        run_dir: a run directory written by `train`.
        data_dir: a folder with one subfolder per class (for example `DATA/test`).
        out: where the report goes; default `RUN_DIR/evaluation/<data folder name>`.

    Returns:
        The metrics (also in `metrics.json`).
    """
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    classifier = Classifier.load(run_dir)
    folder = scan_folder(data_dir, classifier.class_names)
    images = cache_images(folder.root, folder.files, classifier.image_size,
                          classifier.channels, cache_dir, workers, "reading")
    failures = images.failures
    for message in failures.values():
        logger.error("%s", message)
    keep = np.array([index not in failures for index in range(len(folder.files))], bool)
    if not keep.any():
        raise ValueError(f"{data_dir}: none of the {len(keep)} images could be read.")
    # One unshuffled pass in file order; rows that failed to decode are dropped after.
    probabilities = classifier.predict_batch(images)[keep]
    files = [str(path) for path, kept in zip(folder.files, keep, strict=True) if kept]
    labels = np.asarray(folder.labels)[keep]
    out = Path(out) if out else run_dir / "evaluation" / data_dir.resolve().name
    metrics = write_evaluation(
        out, files, labels, probabilities, classifier.class_names, list(failures.values())
    )
    metrics["report_dir"] = str(out)
    return metrics
