from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ramp, write_png
from tumor_classifier.cache import WithOtherBreast
from tumor_classifier.data import (
    Batches,
    other_breast_rows,
    other_breasts,
    scan_folder,
    scan_pooled,
    split_folders,
)


def _dataset(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        for index in range(count):
            write_png(root / name / f"img{index}.png", ramp(dtype=np.uint8, high=255))
    return root


def test_scan_orders_classes_and_files(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d", {"NOR": 2, "BEN": 1, "CAN": 3})
    (root / ".ipynb_checkpoints").mkdir()
    (root / "BEN" / ".DS_Store").write_text("x")
    (root / "BEN" / "notes.txt").write_text("x")
    folder = scan_folder(root)
    assert folder.class_names == ("BEN", "CAN", "NOR")
    assert folder.counts() == {"BEN": 1, "CAN": 3, "NOR": 2}
    assert list(folder.labels) == [0, 1, 1, 1, 2, 2]


def test_split_folders_are_found_under_any_usual_name_and_pooled(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _dataset(root / "Training", {"BEN": 1, "NOR": 2})
    _dataset(root / "val", {"BEN": 1, "CAN": 1, "NOR": 1})
    (root / ".cache").mkdir()
    assert split_folders(root) == {"train": root / "Training", "validation": root / "val"}
    assert split_folders(root / "Training") == {} and split_folders(tmp_path / "none") == {}
    # Training/ and val/ are splits, not two classes
    with pytest.raises(ValueError, match=r"d: holds split folders \(Training, val\), not class"):
        scan_folder(root)
    pooled = scan_pooled(root)
    assert pooled.class_names == ("BEN", "CAN", "NOR")  # CAN only in val/
    assert pooled.counts() == {"BEN": 2, "CAN": 1, "NOR": 3}
    assert [path.relative_to(root).parts[:2] for path in pooled.files] == [
        ("Training", "BEN"), ("Training", "NOR"), ("Training", "NOR"),
        ("val", "BEN"), ("val", "CAN"), ("val", "NOR")]
    assert [pooled.class_names[label] for label in pooled.labels] == [
        path.relative_to(root).parts[1] for path in pooled.files]
    # a folder of class folders is scanned as it is
    assert scan_pooled(root / "Training") == scan_folder(root / "Training")


def test_scan_errors_name_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing: dataset folder not found"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png", ramp(dtype=np.uint8, high=255))
    with pytest.raises(ValueError, match=r"flat: no class folders; expected one subfolder"):
        scan_folder(tmp_path / "flat")
    splits = _dataset(tmp_path / "splits" / "train", {"BEN": 1, "NOR": 1}).parent
    with pytest.raises(ValueError, match=r"splits: holds split folders \(train\), not class"):
        scan_folder(splits)
    root = _dataset(tmp_path / "d", {"BEN": 1, "CAN": 1, "NOR": 1})
    (root / "CAN" / "img0.png").unlink()
    with pytest.raises(ValueError, match=r"CAN: class folder holds no images"):
        scan_folder(root)
    root = _dataset(tmp_path / "e", {"BEN": 1, "CAN": 1, "NOR": 1, "OTHER": 1})
    with pytest.raises(ValueError, match=r"unexpected folder\(s\) OTHER; the model's classes"):
        scan_folder(root, ("BEN", "CAN", "NOR"))


def test_segmentation_masks_beside_the_images_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Breast-ultrasound sets ship each image's mask beside it; a normal case's mask is
    # empty (constant), which would otherwise stop training as an unreadable image.
    root = _dataset(tmp_path / "d", {"BEN": 1, "NOR": 1})
    write_png(root / "BEN" / "benign (1)_mask.png", ramp(dtype=np.uint8, high=255))
    write_png(root / "BEN" / "benign (1)_mask_1.png", ramp(dtype=np.uint8, high=255))
    write_png(root / "NOR" / "normal (1)_MASK.png", np.zeros((32, 32), np.uint8))
    write_png(root / "NOR" / "unmasked.png", ramp(dtype=np.uint8, high=255))  # an image
    with caplog.at_level("WARNING"):
        folder = scan_folder(root)
    assert sorted(path.name for path in folder.files) == ["img0.png", "img0.png", "unmasked.png"]
    assert [record.message for record in caplog.records if "mask" in record.message] == [
        f"{root}: ignored 3 segmentation mask(s) (names ending in _mask), e.g. "
        f"{root / 'BEN' / 'benign (1)_mask.png'}; masks are not images to classify"
    ]


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


def test_balanced_sampling_draws_every_class_equally_often() -> None:
    labels = np.array([0] * 10 + [1] * 4 + [2] * 86)
    images = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    batches = Batches(images, np.arange(100), labels, 3, batch_size=25, seed=0, balanced=True)
    drawn = []
    for epoch in range(40):
        batches.set_epoch(epoch)
        for index in range(len(batches)):
            drawn.extend(int(value) for value in batches[index][0].ravel())
    shares = np.bincount(labels[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(shares, 1 / 3, atol=0.03)  # against 0.10 / 0.04 / 0.86
    assert len(drawn) == 40 * 100  # a pass is still len(rows) images
    # the default shuffle shows every image exactly once per pass
    plain = Batches(images, np.arange(100), labels, 3, batch_size=25, seed=0)
    once = sorted(int(v) for i in range(len(plain)) for v in plain[i][0].ravel())
    assert once == list(range(100))
