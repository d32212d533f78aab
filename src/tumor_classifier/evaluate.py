"""Evaluation a reviewer would accept: one unshuffled pass, predictions paired with labels by
file, every number next to the majority-class baseline, with patient-level bootstrap
confidence intervals."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report

from .cache import CachedImages, cache_images
from .config import save_json
from .data import read_split_table, scan_folder
from .metrics import bootstrap_intervals, compute_metrics
from .near_copies import near_copy_sources, read_thumbnails, thumbnails
from .other_breast import (
    WithOtherBreast,
    pair_with_other_breasts,
    woman_of,
    women_from_names,
)
from .plots import plot_confusion_matrix, plot_reliability, plot_roc, save_figure
from .predict import Classifier

logger = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000


def patient_groups(files: Sequence[Path | str], data_dir: Path) -> list[str] | None:
    """Each file's patient from the `split.csv` next to or above `data_dir` (as `prepare`
    writes it); None when there is none or it does not list every file."""
    table = read_split_table(data_dir)
    if table is None:
        return None
    folder, rows = table
    patients = {(folder / row["file"]).resolve(): row["patient_id"] for row in rows}
    groups = [patients.get(Path(file).resolve()) for file in files]
    return [str(group) for group in groups] if all(groups) else None


def resampled_patients(files: Sequence[Path | str], data_dir: Path
                       ) -> tuple[list[str] | None, str]:
    """The patients whose images the bootstrap resamples together, and where they come
    from: split.csv's `patient_id` (`patient_groups`); otherwise what the file names tell
    (`other_breast.woman_of`: DDSM's `A_0001_1.LEFT_CC`, mini-MIAS's `mdb001` and
    `mdb002`) where every name tells one and no two names repeat; otherwise None, and the
    bootstrap resamples images."""
    groups = patient_groups(files, data_dir)
    if groups is not None:
        return groups, "split.csv"
    women = women_from_names(files)
    return (women, "file names") if women is not None else (None, "")


def describe_near_copies(files: Sequence[Path | str],
                         sources: Sequence[tuple[str, str] | None]) -> str | None:
    """One line on the images that are near-copies of the model's own training images, or
    None when there are none."""
    found = [(file, source) for file, source in zip(files, sources, strict=True) if source]
    if not found:
        return None
    counts = {split: sum(source[0] == split for _, source in found)
              for split in dict.fromkeys(source[0] for _, source in found)}
    same = [Path(file).resolve() == Path(source[1]).resolve() for file, source in found]
    file, (split, original) = found[0]
    example = (f"{file}, itself a {split} image" if same[0]
               else f"{file} and {split} image {original}")
    # The run's own files (its validation split given to evaluate) need another split, not
    # another grouping; copies under other names need both.
    advice = ("Evaluate on images the model was not fitted on (the dataset's test/ split)"
              if all(same) else "Remove the copies, or split with `tumor-classifier prepare "
              "folders --group-near-copies`, which keeps each picture's copies on one side")
    return (
        f"{len(found)} of {len(files)} images are near-copies of images the model was fitted "
        f"on ({', '.join(f'{count} {split}' for split, count in counts.items())}; for "
        f"example {example}): numbers measured on them are optimistic. {advice}."
    )


def fitted_patients(files: Sequence[Path | str],
                    references: dict[str, tuple[Any, Sequence[Path | str]]]
                    ) -> list[tuple[str, str] | None]:
    """For each file, the (split, file) of another image the model was fitted on
    (`references`: split -> (thumbnails, files), as `read_thumbnails` gives) whose name
    gives the same patient (`other_breast.woman_of`: DDSM's `A_0001_1.LEFT_CC` and
    `A_0001_1.RIGHT_MLO`), earlier splits first; None where there is none or the name
    tells no patient. The image itself is not counted: `near_copy_sources` finds it.
    Nothing is found where two fitted or two given files share a name (a folder per
    patient, say): names then do not tell images apart, let alone patients."""
    fitted_names = [Path(name).name for _, names in references.values() for name in names]
    given_names = [Path(file).name for file in files]
    if (len(set(fitted_names)) < len(fitted_names)
            or len(set(given_names)) < len(given_names)):
        return [None] * len(files)
    fitted: dict[str, list[tuple[str, str]]] = {}
    for split, (_, names) in references.items():
        for name in names:
            if (key := woman_of(Path(name).name)) is not None:
                fitted.setdefault(key, []).append((split, str(name)))
    found: list[tuple[str, str] | None] = []
    for file in files:
        key = woman_of(Path(file).name)
        others = [(split, name) for split, name in fitted.get(key or "", [])
                  if Path(name).name != Path(file).name]
        found.append(others[0] if others else None)
    return found


def _interval(intervals: dict[str, Any], key: str) -> str:
    value = intervals.get(key)
    return "" if not value else f"  [{value[0]:.3f}, {value[1]:.3f}]"


def format_summary(metrics: dict[str, Any], report: str) -> str:
    """The human-readable report: headline numbers with 95% CIs, then per-task and
    per-class detail."""
    intervals = metrics.get("confidence_intervals", {})
    auc = metrics["macro_auc_ovr"]
    lines = []
    for key, what, column in (
            ("near_copies", "near-copies of images the model was fitted on", "near_copy_of"),
            ("same_patient_as_fitted", "of patients the model was fitted on, by their file "
             "names", "same_patient_as")):
        found = metrics.get(key) or {}
        if sum(found.values()):
            counts = ", ".join(f"{n} {split}" for split, n in found.items() if n)
            lines.append(
                f"WARNING: {sum(found.values())} of {metrics['n']} images are {what} "
                f"({counts}); these numbers are optimistic (predictions.csv: {column}).")
    lines += [
        f"n = {metrics['n']} images; 95% CIs: bootstrap over "
        f"{metrics.get('bootstrap_unit', 'images')}"
        + ("; each image's probabilities averaged with its top-bottom flip's (TTA)"
           if metrics.get("tta") else ""),
        f"accuracy           {metrics['accuracy']:.3f}{_interval(intervals, 'accuracy')}",
        f"majority baseline  {metrics['majority_baseline']:.3f} "
        f"(always '{metrics['majority_class']}')",
        f"balanced accuracy  {metrics['balanced_accuracy']:.3f}"
        f"{_interval(intervals, 'balanced_accuracy')}",
        f"macro AUC (OvR)    {'n/a' if auc is None else f'{auc:.3f}'}"
        f"{_interval(intervals, 'macro_auc_ovr')}",
    ]
    for task, values in metrics.get("binary", {}).items():
        task_auc = "n/a" if values["auc"] is None else f"{values['auc']:.3f}"
        lines.append(f"{task:<19}AUC {task_auc}{_interval(intervals, f'auc_{task}')}")
        for point, numbers in values.items():
            if point == "auc":
                continue
            sensitivity, specificity = numbers["sensitivity"], numbers["specificity"]
            lines.append(
                f"    {point:<30} sensitivity "
                f"{'n/a' if sensitivity is None else f'{sensitivity:.3f}'}, specificity "
                f"{'n/a' if specificity is None else f'{specificity:.3f}'}"
            )
    lines.append(f"calibration        ECE {metrics['expected_calibration_error']:.3f}, "
                 f"NLL {metrics['negative_log_likelihood']:.3f} (the class frequencies "
                 f"alone: {metrics['prevalence_baseline_nll']:.3f})")
    return "\n".join(lines) + "\n\n" + report


def write_evaluation(
    out: Path,
    files: Sequence[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    unreadable: Sequence[str] = (),
    groups: Sequence[str] | None = None,
    thresholds: dict[str, float] | None = None,
    copies: Sequence[tuple[str, str] | None] | None = None,
    checked_splits: Sequence[str] = (),
    tta: bool | None = None,
    relatives: Sequence[tuple[str, str] | None] | None = None,
    groups_from: str = "split.csv",
) -> dict[str, Any]:
    """Write metrics.json, predictions.csv, report.txt and the plots into `out`.

    `copies` (from `near_copy_sources`, checked against `checked_splits`) adds the column
    `near_copy_of` to predictions.csv and their counts to the metrics and the report;
    `relatives` (from `fitted_patients`, the same splits) adds `same_patient_as` likewise;
    `tta`, whether the probabilities are test-time augmented, is recorded with them;
    `groups_from` says where `groups`, the patients the bootstrap resamples, came from."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(labels, probabilities, class_names, thresholds)
    if tta is not None:
        metrics["tta"] = tta
    metrics["confidence_intervals"] = bootstrap_intervals(
        labels, probabilities, class_names, groups, BOOTSTRAP_RESAMPLES)
    metrics["bootstrap_unit"] = f"patients ({groups_from})" if groups else "images"
    metrics["bootstrap_resamples"] = BOOTSTRAP_RESAMPLES
    metrics["unreadable"] = list(unreadable)
    near = None if copies is None else [source or ("", "") for source in copies]
    metrics["near_copies"] = None if near is None else {
        split: sum(source == split for source, _ in near) for split in checked_splits}
    kin = None if relatives is None else [source or ("", "") for source in relatives]
    metrics["same_patient_as_fitted"] = None if kin is None else {
        split: sum(source == split for source, _ in kin) for split in checked_splits}
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
            + (["near_copy_of"] if near is not None else [])
            + (["same_patient_as"] if kin is not None else [])
        )
        for index, (file, label, row) in enumerate(
                zip(files, labels, probabilities, strict=True)):
            writer.writerow(
                [file, class_names[label], class_names[int(np.argmax(row))]]
                + [f"{value:.6f}" for value in row]
                + ([near[index][1]] if near is not None else [])
                + ([kin[index][1]] if kin is not None else [])
            )
    save_figure(
        plot_confusion_matrix(np.array(metrics["confusion_matrix"]), class_names),
        out / "confusion_matrix.png",
    )
    save_figure(plot_roc(labels, probabilities, class_names), out / "roc.png")
    save_figure(plot_reliability(labels, probabilities), out / "reliability.png")
    return metrics


def evaluate(
    run_dir: Path | str,
    data_dir: Path | str,
    out: Path | str | None = None,
    workers: int = 0,
    cache_dir: Path | None = None,
    tta: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on a class-folder dataset and write the report.

    Args:
        run_dir: a run directory written by `train`.
        data_dir: a folder with one subfolder per class (for example `DATA/test`).
        out: where the report goes; default `RUN_DIR/evaluation/<data folder name>`.
        tta: average the predictions of the image and its top-bottom flip; None: as the
            run's config.json says (`Classifier`).

    Returns:
        The metrics (also in `metrics.json`).
    """
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    classifier = Classifier.load(run_dir, tta=tta)
    folder = scan_folder(data_dir, classifier.class_names)
    images = cache_images(folder.root, folder.files, classifier.image_size,
                          classifier.channels, cache_dir, workers, "reading",
                          crop=classifier.crop_breast)
    inputs: CachedImages | WithOtherBreast = images
    failures = images.failures
    if classifier.other_breast:
        inputs, failures = pair_with_other_breasts(images, folder.files)
    for message in failures.values():
        logger.error("%s", message)
    keep = np.array([index not in failures for index in range(len(folder.files))], bool)
    if not keep.any():
        raise ValueError(f"{data_dir}: none of the {len(keep)} images could be read.")
    # One unshuffled pass in file order; rows that failed to decode are dropped after.
    probabilities = classifier.predict_batch(inputs)[keep]
    files = [str(path) for path, kept in zip(folder.files, keep, strict=True) if kept]
    labels = np.asarray(folder.labels)[keep]
    copies, relatives, checked = None, None, []
    references = read_thumbnails(run_dir)
    if references is None:
        logger.info("%s: a run from before 2026-11-27 (no thumbnails.npz): near-copies of "
                    "its training images are not looked for", run_dir)
    else:
        copies = near_copy_sources(thumbnails(inputs, np.flatnonzero(keep)), references)
        checked = list(references)
        warning = describe_near_copies(files, copies)
        if warning:
            logger.warning("%s: %s", data_dir, warning)
        relatives = fitted_patients(files, references)
        if any(relatives):
            found = [(file, source) for file, source in zip(files, relatives, strict=True)
                     if source]
            logger.warning(
                "%s: %d of %d images are of patients the model was fitted on, by their file "
                "names (for example %s and %s image %s): numbers measured on them are "
                "optimistic. Evaluate on patients the model never saw (`tumor-classifier "
                "prepare folders` splits by patient).", data_dir, len(found), len(files),
                Path(found[0][0]).name, found[0][1][0], Path(found[0][1][1]).name)
    out = Path(out) if out else run_dir / "evaluation" / data_dir.resolve().name
    groups, groups_from = resampled_patients(files, data_dir)
    metrics = write_evaluation(
        out, files, labels, probabilities, classifier.class_names, list(failures.values()),
        groups, classifier.thresholds, copies, checked, classifier.tta, relatives, groups_from,
    )
    metrics["report_dir"] = str(out)
    return metrics
