"""Builders that turn public distributions, or any class folders, into the split layout,
split by patient.

The layout every other command reads:

    DEST/{train,validation,test}/{BEN,CAN,NOR}/*.png
    DEST/split.csv          file,label,patient_id,split,other_breast
    DEST/annotations.csv    file,x,y,radius (lesion circles, image coordinates, origin top-left)
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .config import SPLITS
from .data import scan_pooled, split_folders
from .near_copies import join_near_copies
from .other_breast import dicom_patient, pair_sides, straddling_patients

logger = logging.getLogger(__name__)

# The worst finding decides a woman's stratum: any cancer, else any benign, else normal.
_SEVERITY_ORDER = {"CAN": 2, "BEN": 1, "NOR": 0}
_INFO_LINE = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)(?:\s+([BM]))?(?:\s+(.*))?$")
MIAS_IMAGE_SIZE = 1024


@dataclass
class MiasFilm:
    """One mini-MIAS film: its label and the lesion circles `Info.txt` gives for it."""

    reference: str
    tissue: str
    label: str
    # (x, y, radius) in Info.txt coordinates: origin bottom-left.
    circles: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def patient_id(self) -> str:
        # Films come in left/right pairs: mdb001 and mdb002 are one woman.
        number = int(self.reference[3:])
        return f"mias{(number + 1) // 2:03d}"


def parse_mias_info(text: str) -> dict[str, MiasFilm]:
    """Parse the mini-MIAS truth table.

    Labels: NORM -> NOR; any row with severity M -> CAN; otherwise BEN. A film may have
    several rows (several abnormalities).
    """
    films: dict[str, MiasFilm] = {}
    for line in text.splitlines():
        match = _INFO_LINE.match(line.strip())
        if not match:
            continue
        reference, tissue, kind, severity, rest = match.groups()
        if kind == "NORM":
            label = "NOR"
        elif severity == "M":
            label = "CAN"
        elif severity == "B":
            label = "BEN"
        else:
            raise ValueError(f"Info.txt: abnormal film {reference} has no severity: {line!r}")
        film = films.setdefault(reference, MiasFilm(reference, tissue, label))
        if _SEVERITY_ORDER[label] > _SEVERITY_ORDER[film.label]:
            film.label = label
        numbers = (rest or "").split()
        if len(numbers) == 3 and all(number.isdigit() for number in numbers):
            x, y, radius = (int(number) for number in numbers)
            film.circles.append((x, y, radius))
    if not films:
        raise ValueError("Info.txt: no film rows found (expected lines like 'mdb001 G CIRC B').")
    return films


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


def _open_source(source: Path) -> tuple[str, dict[str, bytes] | Path]:
    """Info.txt text and where the films come from: a folder, or the official archive."""
    if source.is_dir():
        info = source / "Info.txt"
        if not info.is_file():
            raise FileNotFoundError(
                f"{source}: no Info.txt; pass the mini-MIAS folder (Info.txt + mdbNNN.pgm) "
                "or the all-mias.tar.gz archive."
            )
        return info.read_text(encoding="latin-1"), source
    if source.is_file() and tarfile.is_tarfile(source):
        members: dict[str, bytes] = {}
        info_text = None
        with tarfile.open(source) as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                base = Path(member.name).name
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                if base.lower() == "info.txt":
                    info_text = handle.read().decode("latin-1")
                elif re.fullmatch(r"mdb\d{3}\.pgm", base):
                    members[base] = handle.read()
        if info_text is None:
            raise FileNotFoundError(f"{source}: the archive holds no Info.txt.")
        return info_text, members
    raise FileNotFoundError(
        f"{source}: not found or not a folder/tar archive; pass the mini-MIAS folder or "
        "all-mias.tar.gz."
    )


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file with its header row (UTF-8, as the csv module asks: newline="")."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def prepare_mini_mias(
    source: Path,
    dest: Path,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> dict[str, dict[str, int]]:
    """Build `DEST/{train,validation,test}/{BEN,CAN,NOR}/mdbNNN.png` from mini-MIAS.

    Splits by woman (both films of a woman go to the same split), stratified by her worst
    finding. The films are copied losslessly as PNG; the source is only read.

    Returns:
        Counts per split and class.
    """
    source, dest = Path(source), Path(dest)
    info_text, films_source = _open_source(source)
    films = parse_mias_info(info_text)
    present: dict[str, bytes | Path] = {}
    for reference in films:
        if isinstance(films_source, Path):
            path = films_source / f"{reference}.pgm"
            if path.is_file():
                present[reference] = path
        elif f"{reference}.pgm" in films_source:
            present[reference] = films_source[f"{reference}.pgm"]
    missing = sorted(set(films) - set(present))
    if missing:
        logger.warning(
            "%d film(s) listed in Info.txt are missing from %s and are left out: %s",
            len(missing), source, ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
        )
    if not present:
        raise FileNotFoundError(f"{source}: none of the films listed in Info.txt is present.")
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(
            f"{dest}: folder exists and is not empty; choose a new DEST or remove it yourself."
        )

    patient_labels: dict[str, str] = {}
    for reference in present:
        film = films[reference]
        current = patient_labels.get(film.patient_id, "NOR")
        if _SEVERITY_ORDER[film.label] >= _SEVERITY_ORDER[current]:
            patient_labels[film.patient_id] = film.label
    assignment = split_patients(patient_labels, fractions, seed)

    counts: dict[str, dict[str, int]] = {
        split: {"BEN": 0, "CAN": 0, "NOR": 0} for split in SPLITS
    }
    split_rows, annotation_rows = [], []
    for reference in sorted(present):
        film = films[reference]
        split = assignment[film.patient_id]
        relative = f"{split}/{film.label}/{reference}.png"
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        item = present[reference]
        data = item.read_bytes() if isinstance(item, Path) else item
        with Image.open(io.BytesIO(data)) as image:
            # Lossless, 8 or 16 bits as stored; level 3 writes 2.5x faster than the default
            # for 20% more bytes.
            image.save(target, format="PNG", compress_level=3)
            height = image.size[1]
        counts[split][film.label] += 1
        # mini-MIAS pairs a woman's films: mdb001 and mdb002, mdb003 and mdb004, ...
        number = int(reference[3:])
        other = f"mdb{number + 1 if number % 2 else number - 1:03d}"
        other_relative = (f"{split}/{films[other].label}/{other}.png" if other in present
                          else "")
        split_rows.append([relative, film.label, film.patient_id, split, other_relative])
        for x, y, radius in film.circles:
            # Info.txt's origin is bottom-left; images are stored top row first.
            annotation_rows.append([relative, x, height - 1 - y, radius])
    write_csv(dest / "split.csv", ["file", "label", "patient_id", "split", "other_breast"],
               split_rows)
    write_csv(dest / "annotations.csv", ["file", "x", "y", "radius"], annotation_rows)
    logger.info("Prepared %d films of %d women in %s", len(split_rows), len(assignment), dest)
    return counts


def link_file(source: Path, target: Path, copy: bool = False) -> None:
    """Make `target` a symbolic link to `source` (a copy with `copy`, or where the file
    system has no links); the source is only read. A target left by an interrupted run of
    ours is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if not copy:
        try:
            os.symlink(source.resolve(), target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


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


def _patients_from_names(pattern: str, names: list[str]) -> list[str]:
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


def prepare_folders(
    source: Path,
    dest: Path,
    groups: Path | None = None,
    patient_pattern: str | None = None,
    one_image_per_patient: bool = False,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    copy: bool = False,
    group_near_copies: bool = False,
    patient_from_dicom: bool = False,
) -> dict[str, dict[str, int]]:
    """Split a dataset of class folders (`SOURCE/{CLASS}/...`, any depth) by patient into
    `DEST/{train,validation,test}/{CLASS}/...` with `split.csv`.

    Each image's patient comes from exactly one of: `groups` (a CSV `file,patient_id`,
    file relative to SOURCE, with optional `laterality` and `view` columns),
    `patient_pattern` (a regular expression searched in the path below the class folder;
    its first group, or the whole match, is the patient, e.g. `P_\\d+` for CBIS-DDSM
    names), `patient_from_dicom` (the DICOM headers' PatientID, never written:
    `patients_from_dicom`), or `one_image_per_patient` (a stated assumption, for sets that
    publish none). With `group_near_copies`, patients with near-copies of one picture are
    joined first (`join_near_copies`). Patients are stratified by the set of classes of
    their images. Where the DICOM headers or the CSV give each film's side and view,
    `split.csv` names each film's other breast (`pair_sides`). The images are linked
    (copied with `copy`); the source is only read.

    Returns:
        Counts per split and class.
    """
    source, dest = Path(source), Path(dest)
    if sum(option is not None and option is not False for option in (
            groups, patient_pattern, one_image_per_patient, patient_from_dicom)) != 1:
        raise ValueError(
            f"{source}: say how to find each image's patient, with exactly one of --groups "
            "CSV (file,patient_id), --patient-pattern REGEX (found in the file name), "
            "--patient-from-dicom or --one-image-per-patient; a split by image would put one "
            "woman's images on both sides."
        )
    if dest.resolve().is_relative_to(source.resolve()):
        raise ValueError(f"{dest}: lies inside {source}; choose a DEST outside the dataset, "
                         "which is only read.")
    splits = split_folders(source)
    if splits:
        # Such as the original project's {train,validation}/{BEN,CAN,NOR}: a split whose
        # making is unknown (often by image) cannot be trusted to keep women apart.
        logger.warning(
            "%s: holds split folders (%s); their images are pooled and split again by "
            "patient, not as they were. Under DEST each file keeps its old split folder in "
            "its path (DEST/test/BEN/%s/...).", source,
            ", ".join(folder.name for folder in splits.values()), next(iter(splits.values())).name)
    folder = scan_pooled(source)
    files = list(folder.files)
    # Each file's path below its class folder: where a patient pattern is searched.
    below = [Path(*path.relative_to(source).parts[2 if splits else 1:]) for path in files]
    views: list[str] = [""] * len(files)  # each file's view and side, to pair the breasts
    sides: list[str] = [""] * len(files)
    if groups is not None:
        patients, views, sides = read_groups(Path(groups), source, files)
    elif patient_pattern is not None:
        patients = _patients_from_names(patient_pattern, [name.as_posix() for name in below])
    elif patient_from_dicom:
        patients, views, sides = patients_from_dicom(files)
    else:
        patients = [Path(*path.relative_to(source).parts).as_posix() for path in files]
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(
            f"{dest}: folder exists and is not empty; choose a new DEST or remove it yourself."
        )
    if group_near_copies:
        patients = join_near_copies(source, files, patients)
    classes_of: dict[str, set[str]] = defaultdict(set)
    for patient, label in zip(patients, folder.labels, strict=True):
        classes_of[patient].add(folder.class_names[label])
    assignment = split_patients(
        {patient: "+".join(sorted(names)) for patient, names in classes_of.items()},
        fractions, seed,
    )
    # Names such as DDSM's (A_0001_1.LEFT_CC, A_0001_1.RIGHT_MLO) say whose a film is; a
    # patient option that parts one woman's films is said aloud, not overruled. With
    # --patient-from-dicom the headers chose the patients already: not read a second time.
    straddling = [] if patient_from_dicom else straddling_patients(
        files, [assignment[patient] for patient in patients])[0]
    if straddling:
        logger.warning(
            "%s: %d women have images in more than one split, though their file names or "
            "DICOM headers say the images are one woman's (for example %s): %s gave them "
            "different patients. Give each woman one patient (a --patient-pattern matching "
            "what her names share, --patient-from-dicom or --groups) and prepare again.",
            source, len(straddling),
            " and ".join(f"{file.name} in {split}" for split, file in
                         list(straddling[0].items())[:2]),
            "--groups" if groups is not None else "--patient-pattern" if patient_pattern
            else "--one-image-per-patient")
    counts = {split: dict.fromkeys(folder.class_names, 0) for split in SPLITS}
    rows = []
    for path, label, patient, rest in zip(files, folder.labels, patients, below, strict=True):
        split, name = assignment[patient], folder.class_names[label]
        old_split = path.relative_to(source).parts[:1] if splits else ()
        relative = Path(split, name, *old_split, rest).as_posix()
        link_file(path, dest / relative, copy)
        counts[split][name] += 1
        rows.append([relative, name, patient, split])
    columns = ["file", "label", "patient_id", "split"]
    others = pair_sides(patients, views, sides)
    if any(other is not None for other in others):
        # The other breast (one patient: the same split), which the default model reads.
        columns.append("other_breast")
        for row, other in zip(rows, others, strict=True):
            row.append(rows[other][0] if other is not None else "")
    write_csv(dest / "split.csv", columns, rows)
    logger.info("Split %d images of %d patients into %s", len(rows), len(assignment), dest)
    return counts
