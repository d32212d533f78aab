"""Who each image belongs to: where patients come from (a CSV, file names, DICOM headers)
and the split by patient that every dataset builder makes. A patient is never on two sides
of a split; `cv` groups its folds by the same patients.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import SPLITS
from .other_breast import dicom_patient


def split_patients(
    patient_labels: dict[str, str],
    fractions: tuple[float, float, float],
    seed: int,
) -> dict[str, str]:
    """Assign each patient to train/validation/test, stratified by the patient's label.

    Within each stratum the patients are shuffled with `seed` and cut by `fractions`
    (largest-remainder rounding), so every split gets its share of each label.
    """
    if len(fractions) != 3 or any(value < 0 for value in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}.")
    total = float(sum(fractions))
    shares = np.array(fractions, dtype=float) / total
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    by_label: dict[str, list[str]] = defaultdict(list)
    for patient, label in sorted(patient_labels.items()):
        by_label[label].append(patient)
    for label in sorted(by_label):
        patients = by_label[label]
        order = rng.permutation(len(patients))
        exact = shares * len(patients)
        counts = np.floor(exact).astype(int)
        for index in np.argsort(-(exact - counts), kind="stable")[: len(patients) - counts.sum()]:
            counts[index] += 1
        bounds = np.cumsum(counts)
        for position, patient_index in enumerate(order):
            split = SPLITS[int(np.searchsorted(bounds, position, side="right"))]
            assignment[patients[patient_index]] = split
    return assignment


def read_groups(table: Path, source: Path, files: Sequence[Path]
                ) -> tuple[list[str], list[str], list[str]]:
    """The patient of each of `files` from a CSV `file,patient_id` (file relative to
    `source`), as `prepare folders --groups` and `cv --groups` take it; and each file's
    view and side from the optional columns `view` and `laterality` (empty where absent),
    for `pair_sides`.

    Raises:
        FileNotFoundError: no such CSV.
        ValueError: the columns are missing, or an image has no patient.
    """
    if not table.is_file():
        raise FileNotFoundError(f"{table}: --groups CSV not found; check the path.")
    with table.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "file" not in rows[0] or "patient_id" not in rows[0]:
        raise ValueError(f"{table}: expected the columns file,patient_id (file relative to "
                         f"{source}).")
    by_file = {(source / row["file"]).resolve(): row for row in rows}
    found = [by_file.get(path.resolve(), {}) for path in files]
    patients = [(row.get("patient_id") or "").strip() for row in found]
    missing = [path for path, patient in zip(files, patients, strict=True) if not patient]
    if missing:
        raise ValueError(
            f"{table}: no patient_id for {len(missing)} of {len(files)} image(s), e.g. "
            f"{missing[0].relative_to(source)}; add a row for every image."
        )
    return (patients, [(row.get("view") or "").strip() for row in found],
            [(row.get("laterality") or "").strip() for row in found])


def patients_from_names(pattern: str, names: list[str]) -> list[str]:
    """Each name's patient: the first group of `pattern` (a regular expression searched
    in the path below the class folder), or the whole match where it has no group."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"--patient-pattern {pattern!r}: not a regular expression ({error})."
        ) from None
    patients, missing = [], []
    for name in names:  # paths below the class folder: a patient's folder counts too
        match = regex.search(name)
        patient = (match.group(1) if regex.groups else match.group(0)) if match else None
        if not patient:
            missing.append(name)
        patients.append(patient or "")
    if missing:
        raise ValueError(
            f"--patient-pattern {pattern!r} finds no patient in {len(missing)} of {len(names)} "
            f"file name(s), e.g. {missing[0]}; fix the pattern or pass --groups CSV."
        )
    return patients


def patients_from_dicom(files: Sequence[Path]) -> tuple[list[str], list[str], list[str]]:
    """Each DICOM file's patient as `patient-0001`, `patient-0002`, ... (numbered in file
    order, from `other_breast.dicom_patient`'s one-way keys: no identifier is written),
    view and side, for `pair_sides`; `prepare folders` and `cv` take `--patient-from-dicom`.

    Raises:
        ValueError: files that are not DICOM, cannot be parsed or have no PatientID, one
            line each.
    """
    found: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for path in files:
        try:
            found.append(dicom_patient(path))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        listing = "\n".join(f"  {line}" for line in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(
            f"--patient-from-dicom: {len(problems)} of {len(files)} image(s) name no "
            f"patient:\n{listing}{more}\nPass --groups CSV instead (or, to prepare "
            "folders, --patient-pattern REGEX). Nothing was written.")
    numbers: dict[str, str] = {}
    return ([numbers.setdefault(key, f"patient-{len(numbers) + 1:04d}") for key, _, _ in found],
            [view for _, view, _ in found], [side for _, _, side in found])
