"""Cross-validation grouped by patient and stratified by label: the way to choose between
models on a small dataset (never a single split, never the test split).

Each fold gets its own folder of links to the original files (the dataset is only read),
its own run directory, and its evaluation on the held-out patients; the summary reports
every metric's mean and standard deviation over folds, plus the pooled out-of-fold metrics
with patient-level bootstrap confidence intervals.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .cache_maintenance import remove_entries_under
from .config import TrainConfig, load_json, save_json
from .data import scan_pooled
from .datasets import link_file, write_csv
from .evaluate import write_evaluation
from .near_copies import join_near_copies
from .other_breast import (
    pair_sides,
    pair_within_patients,
    straddling_patients,
    women_from_names,
)
from .patients import patients_from_dicom, read_groups

logger = logging.getLogger(__name__)

# Share of each fold's training patients held out for validation (early stopping,
# checkpoint choice, temperature and thresholds).
VALIDATION_FOLDS = 4


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    patient: str
    # The same woman's other breast (split.csv's optional other_breast column).
    other_breast: Path | None = None


def load_samples(data_dir: Path, groups_csv: Path | None = None,
                 patient_from_dicom: bool = False) -> list[Sample]:
    """Every image of a dataset with its label and patient.

    From `DATA_DIR/split.csv` (as `prepare` writes it; all splits are pooled), or from the
    class folders of DATA_DIR with patients from `groups_csv` (`file,patient_id`, file
    relative to DATA_DIR, and optionally `laterality` and `view` to pair the breasts) or,
    with `patient_from_dicom`, from each DICOM header (`patients.patients_from_dicom`:
    numbered, never written; laterality and view pair the breasts) or, with neither and
    no split.csv, from the file names where every one says whose the film is
    (`other_breast.women_from_names`). Films not paired so are paired by their names where
    both are one patient's (`other_breast.pair_within_patients`).
    """
    data_dir = Path(data_dir)
    table = data_dir / "split.csv"
    if groups_csv is not None or patient_from_dicom or not table.is_file():
        # An already split dataset is pooled: cv makes its own splits.
        folder = scan_pooled(data_dir)
        views = sides = [""] * len(folder.files)
        if groups_csv is not None:
            patients, views, sides = read_groups(Path(groups_csv), data_dir, folder.files)
        elif patient_from_dicom:
            patients, views, sides = patients_from_dicom(folder.files)
        elif (women := women_from_names(folder.files)) is not None:
            # Every name says whose the film is (DDSM's side and view words, mini-MIAS's
            # numbered pairs): the women are the patients.
            patients = women
            logger.info("%s: each image's patient from its file name: %d women.", data_dir,
                        len(set(women)))
        else:
            raise FileNotFoundError(
                f"{data_dir}: no split.csv, no --groups CSV and no file names that say whose "
                "each film is; cross-validation needs the "
                "patient of every image (it never splits by image). Pass --groups with "
                "file,patient_id or, for DICOM files, --patient-from-dicom; or make a "
                f"split.csv with `tumor-classifier prepare folders {data_dir} DEST "
                "--patient-pattern REGEX` (or --one-image-per-patient) and cross-validate "
                "DEST.")
        # Laterality and view (the CSV's optional columns, or the headers'), then the
        # names, pair each film with its other breast.
        others = pair_within_patients(folder.files, patients, pair_sides(patients, views, sides))
        return [Sample(path, folder.class_names[label], patient,
                       folder.files[other] if other is not None else None)
                for path, label, patient, other in zip(folder.files, folder.labels, patients,
                                                       others, strict=True)]
    with table.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "file" not in rows[0] or "patient_id" not in rows[0]:
        raise ValueError(f"{table}: expected the columns file,patient_id (and label).")
    return [Sample(data_dir / row["file"], row["label"], row["patient_id"],
                   data_dir / row["other_breast"] if row.get("other_breast") else None)
            for row in rows]


def patient_folds(labels: list[str], patients: list[str], folds: int,
                  seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, validation, test) row indices of each fold; a patient is in exactly one
    test fold and, within a fold, in exactly one of the three parts."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}.")
    if len(set(patients)) < folds * 2:
        raise ValueError(f"{len(set(patients))} patients are too few for {folds} folds.")
    rows = np.arange(len(labels))
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    result = []
    for rest, test in outer.split(rows, labels, patients):
        inner = StratifiedGroupKFold(n_splits=VALIDATION_FOLDS, shuffle=True,
                                     random_state=seed)
        train_part, validation_part = next(inner.split(
            rest, [labels[i] for i in rest], [patients[i] for i in rest]))
        result.append((rest[train_part], rest[validation_part], test))
    return result


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the numeric leaves of a metrics dict ("binary.CAN_vs_rest.auc": ...)."""
    values: dict[str, float] = {}
    for key, value in metrics.items():
        if key in ("confusion_matrix", "confidence_intervals", "class_names", "n",
                   "bootstrap_resamples", "unreadable"):
            continue
        if isinstance(value, dict):
            values.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[f"{prefix}{key}"] = float(value)
    return values


def _write_fold_data(fold_dir: Path, rows: list[list[str]], link_sources: dict[str, Path],
                     circles: dict[Path, list[tuple[float, float, float]]]) -> None:
    """The fold's dataset: links to the films, split.csv and the lesion circles."""
    for relative, *_ in rows:
        link_file(link_sources[relative], fold_dir / "data" / relative)
    if circles:  # lesion circles follow their films into the fold
        write_csv(fold_dir / "data" / "annotations.csv", ["file", "x", "y", "radius"],
                  [[relative, x, y, radius] for relative, *_ in rows
                   for x, y, radius in circles.get(link_sources[relative], [])])
    # Written last: a fold with its split.csv has all its files (for --resume).
    write_csv(fold_dir / "data" / "split.csv",
              ["file", "label", "patient_id", "split", "other_breast"], rows)


def _pool(metrics: dict[str, Any], test: Any, samples: list[Sample], in_fold: dict[Path, str],
          fold_dir: Path, class_names: tuple[str, ...], probabilities: np.ndarray,
          predicted: np.ndarray) -> None:
    """Put the fold's own test predictions (paired by file) into the pooled arrays, rather
    than decoding and predicting the test films a second time."""
    if tuple(metrics["class_names"]) != class_names:
        raise ValueError(f"{fold_dir} lacks a class: {metrics['class_names']}")
    with (Path(metrics["report_dir"]) / "predictions.csv").open(encoding="utf-8") as f:
        by_file = {row["file"]: [float(row[f"prob_{name}"]) for name in class_names]
                   for row in csv.DictReader(f)}
    for index in test:
        test_file = str(fold_dir / "data" / in_fold[samples[index].path.resolve()])
        if test_file in by_file:  # unreadable files were left out by evaluate
            probabilities[index] = by_file[test_file]
            predicted[index] = True


def _women_in_two_test_folds(samples: list[Sample],
                             parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                             source: Path | str) -> str | None:
    """One line when the patients given (`source`: split.csv or --groups) part images whose
    file names say they are one woman's (`other_breast.straddling_patients`) into different
    test folds, or None."""
    test_fold = np.zeros(len(samples), np.int64)
    for fold, (_, _, test) in enumerate(parts):
        test_fold[test] = fold + 1
    straddling, _ = straddling_patients([sample.path for sample in samples],
                                        [f"fold {fold}" for fold in test_fold])
    if not straddling:
        return None
    example = " and ".join(f"{file.name} in {fold}"
                           for fold, file in list(straddling[0].items())[:2])
    return (f"{len(straddling)} women's images are tested in different folds, though their "
            f"file names or DICOM headers say they are one woman's (for example {example}): "
            f"the patients of {source} part them, and each such fold is tested on women it "
            "was fitted on. Give each woman one patient (--groups, or prepare folders "
            "--patient-pattern or --patient-from-dicom).")


def _run_fold(out: Path, fold: int, folds: int, split: tuple[np.ndarray, ...],
              samples: list[Sample], config: TrainConfig,
              circles: dict[Path, list[tuple[float, float, float]]], cache_dir: Path | None
              ) -> tuple[dict[str, Any], dict[Path, str]]:
    """Fold `fold`'s test metrics and each source file's name in it: its data written (linked),
    its model trained and tested; under --resume, what an interrupted run finished is kept."""
    fold_dir = out / f"fold{fold + 1}"
    placed = [(part, samples[index])
              for part, indices in zip(("train", "validation", "test"), split, strict=True)
              for index in indices]
    # Each source file's name in the fold, so that the other breast can follow its film.
    in_fold = {sample.path.resolve(): f"{part}/{sample.label}/{sample.patient}__"
               f"{sample.path.name}" for part, sample in placed}
    rows = []
    link_sources: dict[str, Path] = {}
    for part, sample in placed:
        relative = in_fold[sample.path.resolve()]
        # Folds are by patient, so the other breast is in the same part; an empty cell
        # where the dataset does not name it.
        other = (in_fold.get(sample.other_breast.resolve(), "") if sample.other_breast
                 else "")
        rows.append([relative, sample.label, sample.patient, part, other])
        link_sources[relative] = sample.path.resolve()
    table = fold_dir / "data" / "split.csv"
    done = fold_dir / "fold.json"  # written when the fold's training and test are over
    if config.resume and table.is_file():
        with table.open(encoding="utf-8") as f:
            if list(csv.reader(f))[1:] != rows:
                raise ValueError(
                    f"{fold_dir}: its patients differ from this run's fold {fold + 1}; "
                    "--resume needs the same DATA_DIR, --folds, --groups or "
                    "--patient-from-dicom, --seed and --group-near-copies.")
        if done.is_file():
            return load_json(done), in_fold
    else:
        _write_fold_data(fold_dir, rows, link_sources, circles)
    from .evaluate import evaluate
    from .train import train

    run = fold_dir / "run"
    started = time.perf_counter()
    seconds: float | None = None
    if config.resume and (run / "config.json").is_file():  # trained, not yet tested
        run_dir = run
    else:  # a resumed fold's time is that of its resumed part
        run_dir = train(dataclasses.replace(
            config, data_dir=str(fold_dir / "data"), out=str(run),
            resume=config.resume and (run / "backup").is_dir()))
        seconds = time.perf_counter() - started
    metrics = evaluate(run_dir, fold_dir / "data" / "test", cache_dir=cache_dir)
    metrics["train_seconds"] = seconds
    save_json(metrics, done)
    if fold > 0:
        # This fold's cache entries copied the previous fold's rows, and hold every
        # image: the previous fold's are no longer needed (cv's disk use stays about
        # one decoded copy of the dataset, not one per fold).
        remove_entries_under(out / f"fold{fold}", cache_dir)
    auc = metrics["macro_auc_ovr"]  # None where a class is missing from the test fold
    logger.info("fold %d/%d: accuracy %.3f, macro AUC %s, trained in %s s", fold + 1,
                folds, metrics["accuracy"], "n/a" if auc is None else f"{auc:.3f}",
                "?" if seconds is None else f"{seconds:.0f}")
    return metrics, in_fold


def cross_validate(data_dir: Path, out: Path, config: TrainConfig, folds: int = 5,
                   groups_csv: Path | None = None, group_near_copies: bool = False,
                   patient_from_dicom: bool = False) -> dict[str, Any]:
    """Train and evaluate `folds` models, each tested on patients it never saw.

    Args:
        data_dir: a prepared dataset (with split.csv), or class folders plus `groups_csv`
            or `patient_from_dicom` (`load_samples`).
        out: where the fold folders, run directories and the summary go.
        config: training options; `data_dir` and `out` are set per fold.
        group_near_copies: first join the patients of near-copies of one picture
            (`near_copies.join_near_copies`), so that no picture is on both sides of a fold.

    Returns:
        The summary (also `out/cv_summary.json`).
    """
    out = Path(out)
    if config.resume and not (out / "fold1").is_dir():
        raise FileNotFoundError(f"{out}: no interrupted cross-validation to resume (no fold1/); "
                                "run cv without --resume.")
    if not config.resume and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: folder exists and is not empty; choose another --out, "
                              "or continue an interrupted cv there with --resume.")
    samples = load_samples(Path(data_dir), groups_csv, patient_from_dicom)
    if group_near_copies:
        joined = join_near_copies(Path(data_dir), [sample.path for sample in samples],
                                  [sample.patient for sample in samples], config.workers)
        samples = [dataclasses.replace(sample, patient=patient)
                   for sample, patient in zip(samples, joined, strict=True)]
    labels = [sample.label for sample in samples]
    class_names = tuple(sorted(set(labels)))
    parts = patient_folds(labels, [sample.patient for sample in samples], folds, config.seed)
    # Patients read from the DICOM headers are the headers' women: nothing to check.
    message = None if patient_from_dicom else _women_in_two_test_folds(
        samples, parts, groups_csv or "split.csv")
    if message:
        logger.warning("%s: %s", data_dir, message)
    circles: dict[Path, list[tuple[float, float, float]]] = {}
    if (Path(data_dir) / "annotations.csv").is_file():
        from .patches import load_annotations

        circles = load_annotations(Path(data_dir))

    per_fold: list[dict[str, Any]] = []
    pooled_probabilities = np.zeros((len(samples), len(class_names)), np.float32)
    predicted = np.zeros(len(samples), bool)
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    from .asymmetry import reuse_features  # not at the top: it loads keras

    # A seed_asymmetry fold reuses the probe features of films an earlier fold computed.
    with reuse_features():
        for fold, split in enumerate(parts):
            metrics, in_fold = _run_fold(out, fold, folds, split, samples, config, circles,
                                         cache_dir)
            per_fold.append(metrics)
            _pool(metrics, split[2], samples, in_fold, out / f"fold{fold + 1}", class_names,
                  pooled_probabilities, predicted)

    keys = sorted(set().union(*(_scalars(metrics) for metrics in per_fold)))
    summary_rows: dict[str, dict[str, float | None]] = {}
    for key in keys:
        values = [_scalars(metrics).get(key) for metrics in per_fold]
        finite = [value for value in values if value is not None]
        summary_rows[key] = {
            "mean": float(np.mean(finite)) if finite else None,
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        }
    label_index = np.array([class_names.index(label) for label in labels])[predicted]
    kept = [sample for sample, done in zip(samples, predicted, strict=True) if done]
    # Whether the folds' predictions were test-time augmented (the runs' default).
    tta = per_fold[-1].get("tta")
    pooled = write_evaluation(
        out / "pooled", [str(sample.path) for sample in kept], label_index,
        pooled_probabilities[predicted], class_names,
        groups=[sample.patient for sample in kept], tta=tta)
    summary = {
        "folds": folds,
        # As the folds trained: the preset, size and pairing that the defaults chose.
        "config": {key: value for key, value in
                   load_json(out / f"fold{folds}" / "run" / "config.json")["training"].items()
                   if key not in ("data_dir", "out")},
        "data_dir": str(data_dir),
        "group_near_copies": group_near_copies,
        "tta": tta,
        "images": len(samples),
        "patients": len({sample.patient for sample in samples}),
        "per_fold_mean_std": summary_rows,
        # Test-fold images that are near-copies of their fold's training or validation images
        # (another patient's copy of the same picture): every number above is then optimistic.
        "near_copies_in_test_folds": sum(sum((metrics.get("near_copies") or {}).values())
                                         for metrics in per_fold),
        # ... and images of women their fold was fitted on, by file names (DDSM's).
        "same_patient_in_test_folds": sum(
            sum((metrics.get("same_patient_as_fitted") or {}).values()) for metrics in per_fold),
        "pooled_out_of_fold": {key: pooled[key] for key in (
            "n", "accuracy", "balanced_accuracy", "majority_baseline", "macro_auc_ovr",
            "binary", "expected_calibration_error", "negative_log_likelihood",
            "prevalence_baseline_nll", "confidence_intervals", "per_class")},
    }
    save_json(summary, out / "cv_summary.json")
    return summary


def format_cv(summary: dict[str, Any]) -> str:
    """The headline rows of a cross-validation summary as text."""
    rows = summary["per_fold_mean_std"]
    pooled = summary["pooled_out_of_fold"]
    intervals = pooled["confidence_intervals"]
    lines = [f"{summary['folds']}-fold cross-validation by patient: {summary['images']} "
             f"images of {summary['patients']} patients"
             + ("; predictions averaged with the top-bottom flip (TTA)"
                if summary.get("tta") else ""),
             f"{'metric':<34}{'mean ± sd over folds':>22}{'pooled [95% CI]':>26}"]
    for key, pooled_key in (
        ("accuracy", "accuracy"), ("balanced_accuracy", "balanced_accuracy"),
        ("majority_baseline", None), ("macro_auc_ovr", "macro_auc_ovr"),
        ("binary.CAN_vs_rest.auc", "auc_CAN_vs_rest"),
        ("binary.abnormal_vs_normal.auc", "auc_abnormal_vs_normal"),
        ("expected_calibration_error", None), ("negative_log_likelihood", None),
        ("prevalence_baseline_nll", None), ("train_seconds", None),
    ):
        if key not in rows or rows[key]["mean"] is None:
            continue
        mean, std = rows[key]["mean"], rows[key]["std"] or 0.0
        pooled_text = ""
        if pooled_key:
            value = pooled.get(pooled_key)
            if value is None:
                value = pooled["binary"][pooled_key[4:]]["auc"]
            interval = intervals.get(pooled_key)
            pooled_text = f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]"
                                              if interval else "")
        lines.append(f"{key:<34}{f'{mean:.3f} ± {std:.3f}':>22}{pooled_text:>26}")
    if summary.get("near_copies_in_test_folds"):
        lines.append(f"WARNING: {summary['near_copies_in_test_folds']} test-fold images are "
                     "near-copies of images their fold's model was fitted on (each fold's "
                     "predictions.csv: near_copy_of); these numbers are optimistic. "
                     "--group-near-copies keeps each picture's copies in one fold.")
    if summary.get("same_patient_in_test_folds"):
        lines.append(f"WARNING: {summary['same_patient_in_test_folds']} test-fold images are "
                     "of women their fold's model was fitted on, by their file names (each "
                     "fold's predictions.csv: same_patient_as); these numbers are optimistic. "
                     "Give each woman one patient (--groups, or prepare folders "
                     "--patient-pattern).")
    return "\n".join(lines)
