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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .config import SPLITS
from .data import scan_pooled, split_folders
from .near_copies import join_near_copies
from .other_breast import (
    pair_sides,
    pair_within_patients,
    straddling_patients,
    women_from_names,
)
from .patients import patients_from_dicom, patients_from_names, read_groups, split_patients

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

    Each image's patient comes from at most one of: `groups` (a CSV `file,patient_id`,
    file relative to SOURCE, with optional `laterality` and `view` columns),
    `patient_pattern` (a regular expression searched in the path below the class folder;
    its first group, or the whole match, is the patient, e.g. `P_\\d+` for CBIS-DDSM
    names), `patient_from_dicom` (the DICOM headers' PatientID, never written:
    `patients_from_dicom`), or `one_image_per_patient` (a stated assumption, for sets that
    publish none); with none, from the file names where every one says whose the film is
    (`other_breast.women_from_names`: DDSM's side and view words, mini-MIAS's numbered
    pairs). With `group_near_copies`, patients with near-copies of one picture are
    joined first (`join_near_copies`). Patients are stratified by the set of classes of
    their images. Where the DICOM headers or the CSV give each film's side and view, or
    the names pair the films (`other_breast.other_breasts`), `split.csv` names each film's
    other breast (`pair_sides`, `pair_within_patients`). The images are linked
    (copied with `copy`); the source is only read.

    Returns:
        Counts per split and class.
    """
    source, dest = Path(source), Path(dest)
    options = sum(option is not None and option is not False for option in (
        groups, patient_pattern, one_image_per_patient, patient_from_dicom))
    if options > 1:
        raise ValueError(
            f"{source}: say how to find each image's patient with one option only, of --groups, "
            "--patient-pattern, --patient-from-dicom and --one-image-per-patient.")
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
        patients = patients_from_names(patient_pattern, [name.as_posix() for name in below])
    elif patient_from_dicom:
        patients, views, sides = patients_from_dicom(files)
    elif one_image_per_patient:
        patients = [Path(*path.relative_to(source).parts).as_posix() for path in files]
    elif (women := women_from_names(files)) is not None:
        # No option needed where every name says whose the film is (DDSM's side and view
        # words, mini-MIAS's numbered pairs): the women are the patients.
        patients = women
        logger.info("%s: each image's patient from its file name (side and view words, or "
                    "mini-MIAS's numbered pairs): %d women.", source, len(set(women)))
    else:
        raise ValueError(
            f"{source}: say how to find each image's patient, with one of --groups CSV "
            "(file,patient_id), --patient-pattern REGEX (found in the file name), "
            "--patient-from-dicom or --one-image-per-patient (the file names do not say "
            "it: no side and view words, no mini-MIAS numbers); a split by image would put "
            "one woman's images on both sides."
        )
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
    # Sides and views from the CSV or the headers, then the films' names (`other_breasts`).
    others = pair_within_patients(files, patients, pair_sides(patients, views, sides))
    if any(other is not None for other in others):
        # The other breast (one patient: the same split), which the default model reads.
        columns.append("other_breast")
        for row, other in zip(rows, others, strict=True):
            row.append(rows[other][0] if other is not None else "")
    write_csv(dest / "split.csv", columns, rows)
    logger.info("Split %d images of %d patients into %s", len(rows), len(assignment), dest)
    return counts
