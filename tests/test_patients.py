from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_dicom
from tumor_classifier.patients import (
    patients_from_dicom,
    patients_from_names,
    read_groups,
    split_patients,
)


def test_split_patients_fractions_are_respected() -> None:
    labels = {f"p{index:03d}": "NOR" if index < 60 else "CAN" for index in range(100)}
    assignment = split_patients(labels, (0.5, 0.25, 0.25), seed=3)
    assert Counter(assignment.values()) == {"train": 50, "validation": 25, "test": 25}
    assert Counter(assignment[p] for p in labels if labels[p] == "CAN") == {
        "train": 20, "validation": 10, "test": 10}
    # the same seed gives the same split, another seed another one
    assert split_patients(labels, (0.5, 0.25, 0.25), seed=3) == assignment
    assert split_patients(labels, (0.5, 0.25, 0.25), seed=4) != assignment
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers"):
        split_patients(labels, (0.5, -0.1, 0.6), seed=0)


def test_patients_from_names_takes_the_first_group_or_the_match() -> None:
    names = ["A_0001_1.LEFT_CC.png", "A_0001_1.RIGHT_CC.png", "woman7/B_0002_1.LEFT_MLO.png"]
    assert patients_from_names(r"_(\d{4})_", names) == ["0001", "0001", "0002"]
    assert patients_from_names(r"^[^/]+/|^A_\d{4}", names) == ["A_0001", "A_0001", "woman7/"]
    with pytest.raises(ValueError, match=r"finds no patient in 1 of 3 .*B_0002_1.LEFT_MLO"):
        patients_from_names(r"^A_(\d{4})", [*names[:2], "B_0002_1.LEFT_MLO.png"])
    with pytest.raises(ValueError, match="not a regular expression"):
        patients_from_names(r"(unclosed", names)


def test_read_groups_reads_patients_views_and_sides(tmp_path: Path) -> None:
    files = [tmp_path / "BEN" / "a.png", tmp_path / "NOR" / "b.png"]
    table = tmp_path / "groups.csv"
    table.write_text("file,patient_id,view,laterality\nBEN/a.png,w1,CC,L\nNOR/b.png, w1 ,CC,R\n")
    assert read_groups(table, tmp_path, files) == (["w1", "w1"], ["CC", "CC"], ["L", "R"])
    # the optional columns may be absent; every image needs a patient
    table.write_text("file,patient_id\nBEN/a.png,w1\n")
    with pytest.raises(ValueError, match=r"no patient_id for 1 of 2 image\(s\), e\.g\. NOR"):
        read_groups(table, tmp_path, files)
    table.write_text("file,woman\nBEN/a.png,w1\n")
    with pytest.raises(ValueError, match="expected the columns file,patient_id"):
        read_groups(table, tmp_path, files)
    with pytest.raises(FileNotFoundError, match="--groups CSV not found"):
        read_groups(tmp_path / "missing.csv", tmp_path, files)


def test_patients_from_dicom_numbers_women_and_never_returns_their_ids(
        prepared_mias: Path, tmp_path: Path) -> None:
    film = sorted(prepared_mias.glob("*/*/mdb*.png"))[0]
    pixels = np.asarray(Image.open(film).convert("L"))
    files = [write_dicom(tmp_path / f"{number}.dcm", pixels, PatientID=patient,
                         ImageLaterality=side)
             for number, (patient, side) in enumerate([("SECRET-B", "L"), ("SECRET-A", "R"),
                                                       ("SECRET-B", "R")])]
    patients, views, sides = patients_from_dicom(files)
    assert patients == ["patient-0001", "patient-0002", "patient-0001"]
    assert views == ["MLO"] * 3 and sides == ["L", "R", "R"]
    assert "SECRET" not in repr((patients, views, sides))
    # a PNG and an anonymised DICOM: one line each, and the ID is never in the message
    anonymous = write_dicom(tmp_path / "anonymous.dcm", pixels, PatientID="")
    with pytest.raises(ValueError) as error:
        patients_from_dicom([*files, film, anonymous])
    message = str(error.value)
    assert "2 of 5 image(s) name no patient" in message
    assert f"{film}: not a DICOM file" in message and "anonymous.dcm: no PatientID" in message
    assert "SECRET" not in message
