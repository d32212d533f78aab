"""Synthetic full-field-sized 16-bit mammograms for benchmarks (no real data needed).

A breast-shaped half-ellipse of 12-bit "tissue" with smooth texture and noise on a dark
background, 4,500 x 3,000 pixels by default, written as 16-bit PNG or RLE-compressed DICOM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_mammogram(height: int = 4500, width: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = ((rows - height / 2) / (height * 0.45)) ** 2 + (columns / (width * 0.8)) ** 2 < 1
    coarse = rng.random((height // 150 + 2, width // 150 + 2)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    tissue = 1200 + 1800 * texture + rng.normal(0, 60, (height, width)).astype(np.float32)
    pixels = np.where(inside, tissue, 80 + rng.normal(0, 10, (height, width)))
    return np.clip(pixels, 0, 4095).astype(np.uint16)


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


def write_rle_dicom(path: Path, pixels: np.ndarray) -> Path:
    """An MG-like DICOM, 12 bits stored in 16, RLE Lossless (pydicom's encoder)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalMammographyXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        RLELossless,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MG"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.tobytes()
    dataset.compress(RLELossless)
    dataset.save_as(path, enforce_file_format=True)
    return path
