from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ramp, write_png
from tumor_classifier.data import (
    Batches,
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
