"""From a `read_image` result to the model's input: breast crop, grey plane, resize.

`preprocess` is the one place pixels become model input; train (through the cache),
evaluate, predict, the app and the service all call it (or `load_model_input`, which reads
the file first), so training and use can never disagree about pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .imaging import Source, read_image, stretch


def _otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins)."""
    histogram, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(histogram * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


@dataclass(frozen=True)
class CropBox:
    """Where `crop_breast` cut: rows top:bottom, columns left:right of the film, mirrored
    left-right when `flipped`, then padded to a `side` x `side` square (the crop's rows
    start at `offset`, its columns at 0)."""

    top: int
    bottom: int
    left: int
    right: int
    flipped: bool
    side: int
    offset: int

    def to_film(self, row: float, column: float, image_size: int) -> tuple[float, float]:
        """Film coordinates of a point (row, column) of the model input."""
        row, column = row * self.side / image_size, column * self.side / image_size
        row -= self.offset
        if self.flipped:
            column = (self.right - self.left) - 1 - column
        return self.top + row, self.left + column

    def from_film(self, row: float, column: float, image_size: int) -> tuple[float, float]:
        """Model-input coordinates of a film point (row, column); the inverse of `to_film`."""
        row, column = row - self.top, column - self.left
        if self.flipped:
            column = (self.right - self.left) - 1 - column
        row += self.offset
        return row * image_size / self.side, column * image_size / self.side


def find_breast(image: np.ndarray) -> CropBox | None:
    """The crop `crop_breast` makes, or None when the image is left whole.

    On a 256-pixel thumbnail, stretched to its own range and median-filtered (film grain
    and ultrasound speckle fall away), everything brighter than a quarter of the Otsu
    threshold is tissue; its largest connected region is the breast, and labels and film
    edges, smaller, fall away. Only a near-black background is cut: a threshold at Otsu
    itself (this function's first version) also cut dim tissue, the upper breast of some
    mini-MIAS films and the deep part of ultrasound-like frames, lesions included. An image
    whose breast fills 90% of it (already cropped, or not a mammogram) is left whole.
    """
    from scipy import ndimage

    height, width = image.shape
    scale = 256 / max(height, width)
    thumbnail = np.asarray(Image.fromarray(image.astype(np.float32)).resize(
        (max(1, round(width * scale)), max(1, round(height * scale))),
        Image.Resampling.BILINEAR))
    smooth = ndimage.median_filter(stretch(thumbnail), size=5)
    tissue = smooth > _otsu_threshold(smooth) / 4
    regions, count = ndimage.label(tissue)
    if count == 0:
        return None
    sizes = ndimage.sum(tissue, regions, index=range(1, count + 1))
    breast = regions == int(np.argmax(sizes)) + 1
    if breast.mean() > 0.9:
        return None  # no background around the breast: nothing to crop away
    rows, columns = np.flatnonzero(breast.any(axis=1)), np.flatnonzero(breast.any(axis=0))
    top, bottom = int(rows[0] / scale), min(int(np.ceil((rows[-1] + 1) / scale)), height)
    left, right = int(columns[0] / scale), min(int(np.ceil((columns[-1] + 1) / scale)), width)
    middle = breast.shape[1] // 2
    # Flip only when one side clearly holds more tissue (the chest wall); a symmetric
    # region keeps its orientation.
    flipped = float(breast[:, middle:].sum()) > 1.1 * float(breast[:, :middle].sum())
    side = max(bottom - top, right - left)
    return CropBox(top, bottom, left, right, flipped, side, (side - (bottom - top)) // 2)


def crop_breast(image: np.ndarray) -> np.ndarray:
    """The breast region, chest wall on the left, padded to a square (`find_breast`).

    Padding is zeros on the right and evenly above and below, so resizing keeps the aspect
    ratio. Images that `find_breast` leaves whole are returned as they are.
    """
    return crop_to(image, find_breast(image))


def crop_to(image: np.ndarray, box: CropBox | None) -> np.ndarray:
    """`crop_breast` with the box already found (None: the image as it is)."""
    if box is None:
        return image
    crop = image[box.top : box.bottom, box.left : box.right]
    if box.flipped:
        crop = crop[:, ::-1]
    square = np.zeros((box.side, box.side), np.float32)
    square[box.offset : box.offset + crop.shape[0], : crop.shape[1]] = crop
    return square


def to_grey(image: np.ndarray) -> np.ndarray:
    """A `read_image` result as one grey plane: ITU-R 601 luma of colour images (the same
    weights as Pillow's convert("L")), grey images as they are."""
    if image.ndim == 2:
        return image
    return (image[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)


def preprocess(image: np.ndarray, image_size: int, channels: int,
               crop: bool = False) -> np.ndarray:
    """Resize a `read_image` result to the model's input: (image_size, image_size, channels).

    By default the whole image is resized to a square (as Keras' `flow_from_directory`
    did); with `crop`, the breast region is cropped, flipped to one orientation and padded
    to a square first (`crop_breast`). Resizing uses Pillow's antialiased bilinear filter
    on float32 pixels, so no bit depth is lost.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    if image.ndim == 3 and (channels == 1 or crop):
        image = to_grey(image)
    if crop:
        image = crop_breast(image)
    # Each image stretched to its own range: a 12-bit mammogram stored in a 16-bit PNG
    # (0..4095 of 65535) gets the same input as a full-range one. After the crop, so that
    # a bright film label cut away does not set the scale.
    image = stretch(image)
    planes = [image] if image.ndim == 2 else [image[:, :, index] for index in range(3)]
    resized = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(plane, np.float32)).resize(
                (image_size, image_size), Image.Resampling.BILINEAR
            )
        )
        for plane in planes
    ]
    result = np.stack(resized, axis=-1)
    if result.shape[-1] != channels:
        result = np.repeat(result, channels, axis=-1)
    return np.clip(result, 0.0, 1.0).astype(np.float32)


def load_model_input(source: Source, image_size: int, channels: int,
                     name: str | None = None, crop: bool = False) -> np.ndarray:
    """`read_image` then `preprocess`: the exact model input for one file."""
    return preprocess(read_image(source, name), image_size, channels, crop)
