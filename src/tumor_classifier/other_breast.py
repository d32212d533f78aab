"""The same woman's other breast: find it for each film (split.csv's `other_breast`
column, a file name with LEFT and RIGHT swapped, or DICOM headers) and give a model both
films as one input; and whose a film is, from its name or header, to check splits. A
radiologist reads the two breasts side by side; the default `--model auto` does too
wherever every film's other breast is named."""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import CachedImages
from .imaging import is_dicom


class WithOtherBreast:
    """`images[i]` with `images[others[i]]` as further channels: (k, size, size, 2 x c).

    Indexable like the cached images it wraps, so training batches, validation and
    `Classifier.predict_batch` read pairs without a second cache or copy.
    """

    def __init__(self, images: Any, others: np.ndarray) -> None:
        self.images, self.others = images, others

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Any) -> np.ndarray:
        rows = np.arange(len(self.images))[index]
        return np.concatenate([self.images[rows], self.images[self.others[rows]]], axis=-1)



def _other_breast_column(table: Path) -> dict[Path, Path] | None:
    """A split.csv's file -> other_breast, both resolved; None without that column."""
    with table.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "other_breast" not in rows[0]:
        return None
    return {(table.parent / row["file"]).resolve(): (table.parent / row["other_breast"]).resolve()
            for row in rows if row["other_breast"]}


# A breast's side in a file name: LEFT or RIGHT, or a lone L or R, between separators, in
# any case (DDSM "A_0001_1.LEFT_CC", CBIS-DDSM "P_00001_LEFT_CC", "case12_R_MLO").
_SIDE = re.compile(r"(?<![A-Za-z0-9])(left|right|l|r)(?![A-Za-z0-9])", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l"}


def _other_side_name(name: str) -> str | None:
    """`name` with its one side word swapped (LEFT <-> RIGHT, L <-> R, case kept); None
    when it names no side, or more than one."""
    found = list(_SIDE.finditer(name))
    if len(found) != 1:
        return None
    word = found[0].group(1)
    other = _OTHER_SIDE[word.lower()]
    other = other.upper() if word.isupper() else other.capitalize() if word[0].isupper() \
        else other
    return name[:found[0].start()] + other + name[found[0].end():]


# A mammographic view in a file name (DDSM "A_0001_1.LEFT_CC", CBIS-DDSM "P_00001_LEFT_MLO").
_VIEW = re.compile(r"(?<![A-Za-z0-9])(cc|mlo|ml|lm|lmo|xccl|xccm)(?![A-Za-z0-9])",
                   re.IGNORECASE)


def without_side_and_view(text: str) -> str | None:
    """`text` without its side (LEFT/RIGHT, L/R) and view (CC, MLO, ...) words, in lower
    case; None when it has no such word, or nothing with a digit is left."""
    key = _VIEW.sub("", _SIDE.sub("", text))
    return key.lower() if key != text and any(c.isdigit() for c in key) else None


# mini-MIAS (and the MIAS database it comes from) numbers one woman's two films
# consecutively, mdb001 and mdb002, mdb003 and mdb004, ..., and class folders made from it
# keep those names: held-out mini-MIAS films in plain class folders are paired, and their
# women known, by name alone (an evaluation set without split.csv otherwise stopped a model
# that reads the other breast).
_MIAS_NAME = re.compile(r"mdb(\d{3})", re.IGNORECASE)


def _mias_number(stem: str) -> int | None:
    """N of a mini-MIAS film's name `mdbNNN` (the whole stem, any case); None otherwise."""
    match = _MIAS_NAME.fullmatch(stem)
    if match is None or int(match.group(1)) == 0:
        return None
    return int(match.group(1))


def _mias_other_name(name: str) -> str | None:
    """The name of the other film of a mini-MIAS woman (`mdb001.png` -> `mdb002.png`)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    number = _mias_number(stem)
    if number is None:
        return None
    return f"{stem[:3]}{number + 1 if number % 2 else number - 1:03d}{suffix}"


def woman_of(name: str) -> str | None:
    """What the names of one woman's films share: the file name without its extension,
    side and view words (`without_side_and_view`); so DDSM's `A_0001_1.LEFT_CC.png` and
    `A_0001_1.RIGHT_MLO.png` give the same; and for mini-MIAS names, the woman's number
    (`mdb001.png` and `mdb002.png` give `mias001`, her patient_id from `prepare
    mini-mias`). None when the name has no side or
    view word, or nothing with a digit is left (`LEFT_CC.png` in a folder per patient):
    then the name tells nothing about whose the film is."""
    number = _mias_number(Path(name).stem)
    if number is not None:
        return f"mias{(number + 1) // 2:03d}"
    return without_side_and_view(Path(name).stem)


def women_from_names(files: Sequence[Path | str]) -> list[str] | None:
    """Each file's woman as its name tells (`woman_of`), where every name tells one and no
    two names repeat (a folder per patient repeats them); None otherwise."""
    names = [Path(file).name for file in files]
    women = [woman_of(name) for name in names]
    if not names or len(set(names)) < len(names) or not all(women):
        return None
    return [str(woman) for woman in women]


def straddling_patients(files: Sequence[Path | str], splits: Sequence[str],
                        patients: Sequence[str] | None = None
                        ) -> tuple[list[dict[str, Path]], int]:
    """The patients whose files lie in more than one split (`splits[i]` is the split of
    `files[i]`), each as split -> her first file there, and how many patients are known.

    `patients[i]` is the patient of `files[i]`; None: as the file names tell (`woman_of`;
    nobody when two files share a name, since names then do not even tell images apart),
    and for DICOM files whose names do not, their headers (`dicom_patient`).
    """
    names = [Path(file).name for file in files]
    if patients is None:
        unique = len(set(names)) == len(names)
        keys = [woman_of(name) if unique else None for name in names]
        for index, file in enumerate(files):
            if keys[index] is None and is_dicom(Path(file)):
                try:
                    keys[index] = "dicom " + dicom_patient(Path(file))[0]
                except ValueError:
                    pass  # no patient in its header: no one's, as a PNG's
    else:
        keys = list(patients)
    found: dict[str, dict[str, Path]] = {}
    for key, split, file in zip(keys, splits, files, strict=True):
        if key is not None:
            found.setdefault(key, {}).setdefault(split, Path(file))
    return [by_split for by_split in found.values() if len(by_split) > 1], len(found)


def dicom_patient(path: Path) -> tuple[str, str, str]:
    """A DICOM file's patient as a one-way key, its view (ViewPosition) and its side
    (ImageLaterality, or Laterality), from the header alone.

    The key is the SHA-256 of IssuerOfPatientID and PatientID, side and view words dropped
    from the ID first (`without_side_and_view`: CBIS-DDSM writes them into it,
    `Mass-Training_P_00001_LEFT_CC`). The identifiers are read only to be compared: hashed
    at once, never returned, logged or written (pydicom's warnings, which may quote them,
    are silenced, and its error text is not shown).

    Raises:
        ValueError: not a DICOM file, an unparsable header, or no PatientID; the message
            names the file.
    """
    import pydicom

    if not is_dicom(path):
        raise ValueError(f"{path}: not a DICOM file, so its header names no patient.")
    tags = ["PatientID", "IssuerOfPatientID", "ViewPosition", "ImageLaterality", "Laterality"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                     specific_tags=tags)
        text = {tag: str(header.get(tag, "") or "").strip() for tag in tags}
    except Exception as error:  # pydicom raises many types
        raise ValueError(f"{path}: cannot parse its DICOM header ({type(error).__name__}).") \
            from None
    if not text["PatientID"]:
        raise ValueError(f"{path}: no PatientID in its DICOM header (anonymised).")
    patient = without_side_and_view(text["PatientID"]) or text["PatientID"]
    key = hashlib.sha256(f"{text['IssuerOfPatientID']}\0{patient}".encode()).hexdigest()
    return key, text["ViewPosition"], text["ImageLaterality"] or text["Laterality"]


def pair_sides(patients: Sequence[str], views: Sequence[str], sides: Sequence[str]
               ) -> list[int | None]:
    """Each file's other breast (an index, or None): the one file of the same patient and
    view with the other side (L or R, LEFT or RIGHT, any case), where each side has exactly
    one (a second exam of one breast leaves both unpaired)."""
    films: dict[tuple[str, str], dict[str, list[int]]] = {}
    for index, (patient, view, side) in enumerate(zip(patients, views, sides, strict=True)):
        side = side.upper()[:1]
        if side in ("L", "R") and view:
            films.setdefault((patient, view.upper()), {}).setdefault(side, []).append(index)
    others: list[int | None] = [None] * len(patients)
    for by_side in films.values():
        if len(by_side.get("L", [])) == 1 and len(by_side.get("R", [])) == 1:
            left, right = by_side["L"][0], by_side["R"][0]
            others[left], others[right] = right, left
    return others


def other_breasts(files: Sequence[Path | str]) -> list[Path | None]:
    """Each file's other breast (the same woman's other film, same view), resolved.

    As the `other_breast` column of the nearest `split.csv` above the file that names it
    (`DATA/split.csv` for `DATA/test/CAN/film.png`, or for a film any depth below its class
    folder; `prepare mini-mias` writes the column); otherwise the one other file among
    `files` whose name is the file's own with its side swapped (`A_0001_1.LEFT_CC.png` and
    `A_0001_1.RIGHT_CC.png`, in any class folder; both names unique among `files`), or for
    mini-MIAS names the woman's other number (`mdb001.png` and `mdb002.png`);
    otherwise, for DICOM files, the one other DICOM file among those still unpaired of the
    same patient and view with the other side, by their headers (`dicom_patient`,
    `pair_sides`); None where none gives one.
    """
    tables: dict[Path, dict[Path, Path] | None] = {}
    by_name: dict[str, list[Path]] = {}
    for file in files:
        by_name.setdefault(Path(file).name, []).append(Path(file).resolve())
    result: list[Path | None] = []
    for file in files:
        path = Path(file).absolute()
        other = None
        for folder in path.parents:  # each table is read once, and only if it exists
            table = folder / "split.csv"
            if table not in tables:
                tables[table] = _other_breast_column(table) if table.is_file() else None
            column = tables[table]
            if column and (other := column.get(path.resolve())):
                break
        if other is None and (name := _other_side_name(path.name)
                              or _mias_other_name(path.name)):
            # Both names must be unique among the files, so that pairs are mutual.
            candidates = by_name.get(name, [])
            unique = len(candidates) == 1 and len(by_name[path.name]) == 1
            other = candidates[0] if unique else None
        result.append(other)
    # DICOM headers name patient, view and side where file names do not (CMMD, VinDr).
    unpaired: list[int] = []
    headers: list[tuple[str, str, str]] = []
    for index, file in enumerate(files):
        if result[index] is None and is_dicom(Path(file)):
            try:
                headers.append(dicom_patient(Path(file)))
                unpaired.append(index)
            except ValueError:
                pass  # no patient in it: left unpaired, as a PNG is
    if unpaired:
        keys, views, sides = (list(column) for column in zip(*headers, strict=True))
        for index, partner in zip(unpaired, pair_sides(keys, views, sides), strict=True):
            if partner is not None:
                result[index] = Path(files[unpaired[partner]]).resolve()
    return result


def pair_within_patients(files: Sequence[Path | str], patients: Sequence[str],
                         others: Sequence[int | None]) -> list[int | None]:
    """`others` (indices into `files`, as `pair_sides` gives them) with the films it left
    unpaired paired as `other_breasts` finds them (names, DICOM headers), where both films
    are of one patient: a split by patient then keeps each pair in one split. Only the
    unpaired films are looked at (headers already read are not read again)."""
    unpaired = [index for index, other in enumerate(others) if other is None]
    position = {Path(files[index]).resolve(): index for index in unpaired}
    result = list(others)
    for index, other in zip(unpaired, other_breasts([files[i] for i in unpaired]),
                            strict=True):
        partner = position.get(other) if other is not None else None
        if partner is not None and partner != index and patients[partner] == patients[index]:
            result[index] = partner
    return result


def other_breast_rows(files: Sequence[Path], unreadable: Collection[int] = ()
                      ) -> tuple[np.ndarray, dict[int, str]]:
    """For every file, the index in `files` of its other breast (`other_breasts`).

    Returns the indices (a file's own index where there is no other breast) and, for the
    files without a readable other breast among `files`, one message each.

    Raises:
        ValueError: no file has its other breast named (no split.csv with that column).
    """
    partners = other_breasts(files)
    if files and not any(partners):
        raise ValueError(
            f"{Path(files[0]).parent.parent}: nothing names the other breast of these films: "
            "no split.csv with an other_breast column, no file names that differ only "
            "in LEFT/RIGHT, no mini-MIAS pairs (mdb001 and mdb002), no DICOM headers with "
            "patient, view and side. Run "
            "`tumor-classifier prepare mini-mias` again (it writes the "
            "column), or add it (file,...,other_breast: the same woman's other film, same "
            "view, relative to split.csv).")
    position = {Path(path).resolve(): index for index, path in enumerate(files)}
    result = np.arange(len(files))
    problems: dict[int, str] = {}
    for index, (path, other) in enumerate(zip(files, partners, strict=True)):
        if other is None or other not in position:
            problems[index] = (
                f"{path}: no other breast beside it (named by split.csv's other_breast "
                "column, by a name with the other side or by DICOM headers, among the films "
                "of the same split); a model trained with --other-breast compares both "
                "breasts of a woman. Add the film, or use a model trained without it.")
        elif position[other] in unreadable:
            problems[index] = f"{path}: its other breast {other.name} could not be read."
        else:
            result[index] = position[other]
    return result, problems


def pair_with_other_breasts(images: CachedImages, files: Sequence[Path]
                            ) -> tuple[WithOtherBreast, dict[int, str]]:
    """`images` (decoded from `files`, in order) paired with each file's other breast, and
    the message of every row that cannot be used: its own decoding failure, or a missing or
    unreadable other breast."""
    others, problems = other_breast_rows(files, images.failures.keys())
    failures = dict(images.failures)
    failures.update({row: message for row, message in problems.items() if row not in failures})
    return WithOtherBreast(images, others), failures
