from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.cache import cache_images
from tumor_classifier.data import read_split_table
from tumor_classifier.datasets import write_csv
from tumor_classifier.other_breast import (
    WithOtherBreast,
    other_breast_rows,
    other_breasts,
    pair_with_other_breasts,
    pair_within_patients,
    straddling_patients,
    woman_of,
    women_from_names,
)


def test_other_breast_rows_pair_films_and_name_every_problem(tmp_path: Path) -> None:
    (tmp_path / "split.csv").write_text(
        "file,label,patient_id,split,other_breast\n"
        "train/NOR/a_1.png,NOR,a,train,train/BEN/a_2.png\n"
        "train/BEN/a_2.png,BEN,a,train,train/NOR/a_1.png\n"
        "train/NOR/b_1.png,NOR,b,train,train/NOR/b_2.png\n"
        "train/NOR/b_2.png,NOR,b,train,train/NOR/b_1.png\n"
        "train/CAN/c_1.png,CAN,c,train,\n"
        "train/NOR/scans/2019/d_1.png,NOR,d,train,train/NOR/scans/2019/d_2.png\n")
    split = tmp_path / "train"
    files = [split / "BEN/a_2.png", split / "CAN/c_1.png", split / "NOR/a_1.png",
             split / "NOR/b_1.png", split / "NOR/b_2.png"]
    others, problems = other_breast_rows(files, unreadable=[4])
    assert others[0] == 2 and others[2] == 0
    assert set(problems) == {1, 3}  # c has no other film; b's other film did not decode
    assert problems[1].startswith(f"{files[1]}: no other breast beside it")
    assert problems[3] == f"{files[3]}: its other breast b_2.png could not be read."
    assert others[1] == 1 and others[3] == 3  # left pointing at themselves
    assert other_breasts([split / "NOR/a_1.png", tmp_path / "elsewhere.png"]) == [
        (split / "BEN/a_2.png").resolve(), None]
    # films any depth below their class folder find the dataset's split.csv too
    assert other_breasts([split / "NOR/scans/2019/d_1.png"]) == [
        (split / "NOR/scans/2019/d_2.png").resolve()]
    (tmp_path / "split.csv").write_text("file,label,patient_id,split\ntrain/NOR/a_1.png,"
                                        "NOR,a,train\n")
    assert other_breasts(files) == [None] * 5
    with pytest.raises(ValueError, match=r"train: nothing names the other breast of these "
                                         r"films: no split.csv"):
        other_breast_rows(files)


def test_without_split_csv_files_that_differ_only_in_side_are_each_others_other_breast(
    tmp_path: Path
) -> None:
    names = ["CAN/A_0001_1.LEFT_CC.png", "NOR/A_0001_1.RIGHT_CC.png",  # DDSM
             "BEN/P_00002_Left_MLO.png", "BEN/P_00002_Right_MLO.png",  # case kept
             "NOR/case3_r_cc.png", "NOR/case3_l_cc.png",  # a lone letter
             "NOR/A_0004_1.LEFT_CC.png",  # its other film is not among the files
             "NOR/left_right.png", "NOR/right_right.png",  # two side words: no side known
             "NOR/slr.png", "NOR/Lateral_x.png",  # side letters inside words are no side
             "BEN/twice_LEFT.png", "CAN/twice_RIGHT.png", "NOR/twice_RIGHT.png"]  # ambiguous
    files = [tmp_path / "train" / name for name in names]
    partners = other_breasts(files)
    assert partners[:6] == [files[1].resolve(), files[0].resolve(), files[3].resolve(),
                            files[2].resolve(), files[5].resolve(), files[4].resolve()]
    assert partners[6:] == [None] * 8
    others, problems = other_breast_rows(files[:7])
    assert list(others) == [1, 0, 3, 2, 5, 4, 6] and list(problems) == [6]


def test_woman_of_drops_side_and_view_from_the_name() -> None:
    # DDSM: one woman's four films share a name once side and view are dropped
    assert {woman_of(name) for name in ("A_0001_1.LEFT_CC.png", "A_0001_1.RIGHT_MLO.png",
                                        "a_0001_1.left_mlo.dcm", "A_0001_1.RIGHT_CC.png")} \
        == {"a_0001_1._"}
    assert woman_of("P_00002_LEFT_CC.png") == woman_of("P_00002_RIGHT_MLO.png") == "p_00002__"
    assert woman_of("case3_r_cc.png") == woman_of("case3_l_mlo.png") == "case3__"
    assert woman_of("A_0001_1.LEFT_CC.png") != woman_of("A_0002_1.LEFT_CC.png")
    # mini-MIAS numbers one woman's two films in a row: mdb001 and mdb002, mdb003 and mdb004
    assert woman_of("mdb001.png") == woman_of("MDB002.pgm") == "mias001"
    assert woman_of("mdb003.png") == woman_of("mdb004.png") != woman_of("mdb002.png")
    assert woman_of("mdb000.png") is None and woman_of("mdb0011.png") is None
    assert woman_of("x_mdb001.png") is None  # only the whole name is mini-MIAS's
    # no side or view word: nothing tells whose the image is
    assert woman_of("benign (12).png") is None
    assert woman_of("Lateral_class.png") is None  # side and view letters inside words
    assert woman_of("LEFT_CC.png") is None  # no identifier left (a folder per patient)


def test_mini_mias_films_in_plain_class_folders_are_paired_by_their_numbers(
        tmp_path: Path) -> None:
    # Held-out mini-MIAS films as class folders, no split.csv: mdb001 with mdb002 in
    # another class folder; mdb005 without mdb006; mdb007 twice (two folders) pairs with
    # nothing, nor does its partner mdb008.
    names = ["BEN/mdb001.png", "NOR/mdb002.png", "CAN/mdb003.png", "CAN/mdb004.png",
             "NOR/mdb005.png", "NOR/mdb007.png", "BEN/mdb007.png", "NOR/mdb008.png"]
    files = [tmp_path / name for name in names]
    resolved = [file.resolve() for file in files]
    assert other_breasts(files) == [resolved[1], resolved[0], resolved[3], resolved[2],
                                    None, None, None, None]
    assert women_from_names(files[:5]) == ["mias001"] * 2 + ["mias002"] * 2 + ["mias003"]
    assert women_from_names(files) is None  # mdb007.png twice: names do not tell files apart
    assert women_from_names([tmp_path / "NOR/mdb001.png", tmp_path / "NOR/x.png"]) is None
    # paired only within one patient, and never against a pair the sides gave
    patients = ["a", "b", "c", "c", "d"]
    assert pair_within_patients(files[:5], patients, [None] * 5) == [None, None, 3, 2, None]
    assert pair_within_patients(files[:4], ["a"] * 4, [None, None, 3, 2]) == [1, 0, 3, 2]


def test_straddling_patients_by_patient_or_by_name() -> None:
    files = [Path(name) for name in ("t/A_0001_1.LEFT_CC.png", "v/A_0001_1.RIGHT_CC.png",
                                     "t/A_0002_1.LEFT_CC.png", "t/A_0002_1.RIGHT_CC.png",
                                     "v/x1.png", "t/x2.png")]
    splits = ["train", "validation", "train", "train", "validation", "train"]
    assert straddling_patients(files, splits) == (
        [{"train": files[0], "validation": files[1]}], 2)
    patients = ["a", "b", "c", "c", "d", "d"]
    assert straddling_patients(files, splits, patients) == (
        [{"validation": files[4], "train": files[5]}], 4)
    # a folder per patient: names repeat and tell no one
    files = [Path("t/P1/img1_LEFT_CC.png"), Path("v/P2/img1_RIGHT_CC.png"),
             Path("v/P3/img1_RIGHT_CC.png")]
    assert straddling_patients(files, ["train", "validation", "validation"]) == ([], 0)


def test_dicom_films_are_paired_by_their_headers(prepared_mias: Path, tmp_path: Path) -> None:
    from PIL import Image

    from conftest import write_dicom

    # Four real films as DICOMs with opaque names and no split.csv: patient, view and side
    # are only in the headers.
    films = sorted(prepared_mias.glob("*/*/mdb*.png"), key=lambda path: path.name)[:4]
    files = []
    for number, film in enumerate(films):
        pixels = np.asarray(Image.open(film).convert("L"))
        files.append(write_dicom(tmp_path / "scans" / f"{number}.dcm", pixels,
                                 PatientID=f"W{number // 2}", ViewPosition="MLO",
                                 ImageLaterality="LR"[number % 2]))
    assert other_breasts(files) == [files[1].resolve(), files[0].resolve(),
                                    files[3].resolve(), files[2].resolve()]
    # a second left film of one woman's view, and an anonymised film, pair with nothing
    pixels = np.asarray(Image.open(films[0]).convert("L"))
    files.append(write_dicom(tmp_path / "scans" / "4.dcm", pixels, PatientID="W0",
                             ViewPosition="MLO", ImageLaterality="L"))
    files.append(write_dicom(tmp_path / "scans" / "5.dcm", pixels, PatientID=""))
    assert other_breasts(files) == [None, None, files[3].resolve(), files[2].resolve(),
                                    None, None]
    # the headers also tell whose the films are where they lie in two splits
    straddling, known = straddling_patients(files[:4], ["train", "test", "train", "train"])
    assert straddling == [{"train": files[0], "test": files[1]}] and known == 2


def test_with_other_breast_puts_the_other_film_behind_the_channels() -> None:
    images = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 1)
    paired = WithOtherBreast(images, np.array([1, 0, 2]))
    assert len(paired) == 3
    batch = paired[np.array([0, 2])]
    assert batch.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(batch[0, ..., 0], images[0, ..., 0])
    np.testing.assert_array_equal(batch[0, ..., 1], images[1, ..., 0])
    np.testing.assert_array_equal(batch[1, ..., 1], images[2, ..., 0])
    np.testing.assert_array_equal(paired[1:2][0, ..., 1], images[0, ..., 0])


def test_real_films_are_paired_with_their_other_breast_and_every_unusable_row_is_named(
    prepared_mias: Path, tmp_path: Path
) -> None:
    # Two women's real films (both breasts each), a third woman's film whose other breast
    # is not among the files, and an unreadable file whose other breast is a real film.
    found = read_split_table(prepared_mias)
    assert found is not None
    by_woman: dict[str, list[dict[str, str]]] = {}
    for row in found[1]:
        if row["split"] == "train":
            by_woman.setdefault(row["patient_id"], []).append(row)
    women = [films for films in by_woman.values() if len(films) == 2][:3]
    chosen = [*women[0], *women[1], women[2][0]]
    data = tmp_path / "data"
    for row in chosen:
        (data / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(prepared_mias / row["file"], data / row["file"])
    broken = {"file": "train/NOR/broken.png", "label": "NOR", "patient_id": "nobody",
              "split": "train", "other_breast": chosen[0]["file"]}
    (data / broken["file"]).write_bytes(b"not an image")
    header = list(broken)
    write_csv(data / "split.csv", header, [[row[key] for key in header]
                                           for row in [*chosen, broken]])
    files = [data / row["file"] for row in [*chosen, broken]]

    images = cache_images(data / "train", files, 32, 1, cache_dir=tmp_path / "cache")
    paired, failures = pair_with_other_breasts(images, files)

    # rows 0-3 are two whole women; row 4's other breast (the third woman's other film)
    # is missing; row 5 did not decode.
    assert sorted(failures) == [4, 5]
    assert failures[4].startswith(f"{files[4]}: no other breast beside it")
    assert failures[5] == images.failures[5]
    position = {row["file"]: index for index, row in enumerate(chosen)}
    for index, row in enumerate(chosen[:4]):
        other = position[row["other_breast"]]
        batch = paired[np.array([index])]
        assert batch.shape == (1, 32, 32, 2)
        np.testing.assert_array_equal(batch[0, ..., 0], images[np.array([index])][0, ..., 0])
        np.testing.assert_array_equal(batch[0, ..., 1], images[np.array([other])][0, ..., 0])
        assert other != index
