"""Shared fixtures: the real mini-MIAS data (read from ../shared), a prepared copy, one short
trained run, and writers for synthetic PNG and DICOM files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Decoded-image caches of the test run go to a fresh folder, never the user's ~/.cache.
os.environ["TUMOR_CLASSIFIER_CACHE"] = tempfile.mkdtemp(prefix="tumor-classifier-cache-")

ROOT = Path(__file__).resolve().parents[1]
MIAS_DIR = Path(os.environ.get("TUMOR_CLASSIFIER_MIAS", ROOT.parent / "shared/data/mini-mias"))


@pytest.fixture(scope="session")
def mias_dir() -> Path:
    if not (MIAS_DIR / "Info.txt").is_file():
        pytest.fail(
            f"mini-MIAS not found at {MIAS_DIR}; the tests read the real data from "
            "../shared/data/mini-mias (or set TUMOR_CLASSIFIER_MIAS)."
        )
    return MIAS_DIR


@pytest.fixture(scope="session")
def prepared_mias(mias_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mini-MIAS in class folders, split by woman (seed 0, default fractions)."""
    from tumor_classifier.datasets import prepare_mini_mias

    dest = tmp_path_factory.mktemp("mias") / "prepared"
    prepare_mini_mias(mias_dir, dest)
    return dest


@pytest.fixture(scope="session")
def trained_run(prepared_mias: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original recipe (seed preset, 128x128, whole film) trained for two epochs on
    the real prepared data."""
    from tumor_classifier.config import TrainConfig
    from tumor_classifier.train import train

    out = tmp_path_factory.mktemp("runs") / "seed"
    return train(TrainConfig(model="seed",
                             data_dir=str(prepared_mias), out=str(out), epochs=2, workers=2,
                             image_size=128, crop_breast=False, other_breast=False,
                             label_smoothing=0.0))


@pytest.fixture(scope="session")
def paired_run(prepared_mias: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `seed` model trained for one epoch at 64x64 with each film's other breast."""
    from tumor_classifier.config import TrainConfig
    from tumor_classifier.train import train

    out = tmp_path_factory.mktemp("runs") / "paired"
    return train(TrainConfig(model="seed",
                             data_dir=str(prepared_mias), out=str(out), epochs=1, workers=2,
                             image_size=64, other_breast=True))


@pytest.fixture
def films(prepared_mias: Path) -> list[Path]:
    """40 real normal films of the prepared test split."""
    return sorted((prepared_mias / "test" / "NOR").glob("*.png"))[:40]


@pytest.fixture
def small_dataset(prepared_mias: Path, tmp_path: Path) -> Path:
    """A writable copy of a few real films per class and split (for bad-input tests)."""
    dest = tmp_path / "small"
    for split in ("train", "validation"):
        for class_folder in sorted((prepared_mias / split).iterdir()):
            target = dest / split / class_folder.name
            target.mkdir(parents=True)
            for film in sorted(class_folder.iterdir())[:3]:
                shutil.copy2(film, target / film.name)
    return dest


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_dicom(path: Path, pixels: np.ndarray, **attributes: object) -> Path:
    """A minimal, valid single-frame grey DICOM (secondary capture), uncompressed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = "SECRET-PATIENT-42"
    dataset.PatientBirthDate = "19600101"
    dataset.Modality = "MG"
    dataset.ViewPosition = "MLO"
    dataset.ImageLaterality = "L"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = pixels.dtype.itemsize * 8
    dataset.BitsStored = pixels.dtype.itemsize * 8
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in attributes.items():
        setattr(dataset, key, value)
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def ramp(height: int = 64, width: int = 48, dtype: type = np.uint16, high: int = 65535):
    """A non-constant test image: a diagonal ramp from 0 to `high`."""
    rows, columns = np.mgrid[0:height, 0:width]
    values = (rows * width + columns) / (height * width - 1) * high
    return np.round(values).astype(dtype)
