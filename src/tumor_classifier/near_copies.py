"""Near-copies: the same picture in two splits (a file copied, re-encoded or resized, or one
patient's image under two names), which flatters every number measured on the second.

Two images count as copies when their 16x16 thumbnails, each standardised, correlate
within NEAR_COPY_DISTANCE of 1. `train` flags validation images that copy training images
and saves the thumbnails with the model (`thumbnails.npz`), so `evaluate`, `predict`, the
app and the service name an input the model was fitted on; `prepare` can put copies filed
under two patients on one side of the split (`--group-near-copies`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import cache_images

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 16
# Measured on the 240 prepared mini-MIAS films at 64, 128 and 256 pixels
# (benchmarks/near_copies.py, 2026-11-27): copies saved as JPEG (quality 50 to 95), 16-bit
# or RGB PNG, or resized to 512 or 256 pixels are at most 0.0013 from their original; the
# two closest different films are 0.0069 apart (a woman's left and right breast, or two
# women's normal films), 3.5 times the threshold (0.014 without the crop).
NEAR_COPY_DISTANCE = 0.002


def thumbnails(images: Any, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """The first channel of `images[rows]` (its own film, where the other breast follows) as
    16x16 block means, each standardised to mean 0 and standard deviation 1: float32
    (len(rows), 256), what `find_near_copies` compares. A constant image gives zeros."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), THUMBNAIL_SIZE * THUMBNAIL_SIZE), np.float32)
    for start in range(0, len(rows), 256):
        batch = images[rows[start : start + 256]][..., 0]
        edges = np.linspace(0, batch.shape[1], THUMBNAIL_SIZE + 1).astype(np.int64)
        sums = np.add.reduceat(np.add.reduceat(batch, edges[:-1], axis=1), edges[:-1], axis=2)
        flat = (sums / np.outer(np.diff(edges), np.diff(edges))).reshape(len(batch), -1)
        flat -= flat.mean(axis=1, keepdims=True)
        spread = np.sqrt((flat**2).mean(axis=1, keepdims=True))
        out[start : start + len(batch)] = np.divide(flat, spread, out=np.zeros_like(flat),
                                                    where=spread > 1e-6)
    return out


def _correlations(query: np.ndarray, reference: np.ndarray
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """(first query row, correlations of up to 1,024 query thumbnails with every reference
    thumbnail): chunked, so the matrix's memory stays bounded."""
    query, reference = np.asarray(query, np.float32), np.asarray(reference, np.float32)
    for start in range(0, len(query), 1024):
        yield start, query[start : start + 1024] @ reference.T / query.shape[1]


def find_near_copies(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each `query` thumbnail, the row of its closest `reference` thumbnail where that is
    a near-copy (1 - correlation <= NEAR_COPY_DISTANCE), else -1."""
    found = np.full(len(query), -1, np.int64)
    if len(reference) == 0:
        return found
    for start, correlation in _correlations(query, reference):
        closest = correlation.argmax(axis=1)
        near = 1 - correlation[np.arange(len(closest)), closest] <= NEAR_COPY_DISTANCE
        found[start : start + len(closest)] = np.where(near, closest, -1)
    return found


def near_copy_pairs(own: np.ndarray) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of rows of `own` (thumbnails) that are near-copies."""
    pairs: list[tuple[int, int]] = []
    for start, correlation in _correlations(own, own):
        rows, columns = np.nonzero(1 - correlation <= NEAR_COPY_DISTANCE)
        pairs += [(start + int(row), int(column))
                  for row, column in zip(rows, columns, strict=True) if start + row < column]
    return pairs


def near_copy_sources(
    own: np.ndarray, references: dict[str, tuple[np.ndarray, Sequence[Path | str]]]
) -> list[tuple[str, str] | None]:
    """For each of the `own` thumbnails (`thumbnails`), the (split, file) of a near-copy
    among `references` (split -> (thumbnails, files)), earlier splits first; None where
    there is none."""
    sources: list[tuple[str, str] | None] = [None] * len(own)
    for split, (reference, files) in references.items():
        for row, found in enumerate(find_near_copies(own, reference)):
            if found >= 0 and sources[row] is None:
                sources[row] = (split, str(files[found]))
    return sources


def save_thumbnails(run_dir: Path, splits: dict[str, tuple[np.ndarray, Sequence[Path]]]
                    ) -> None:
    """`RUN_DIR/thumbnails.npz`: the 16x16 standardised thumbnails (float16, not images
    anyone could read a finding from) and file names of the images the model was fitted
    on, so that `evaluate` can flag near-copies of them."""
    arrays: dict[str, np.ndarray] = {}
    for split, (own, files) in splits.items():
        arrays[split] = own.astype(np.float16)
        arrays[f"{split}_files"] = np.array([str(file) for file in files], dtype=str)
    # type: ignore: numpy's stubs read any keyword as its allow_pickle flag.
    np.savez_compressed(run_dir / "thumbnails.npz", **arrays)  # type: ignore[arg-type]


def read_thumbnails(run_dir: Path
                    ) -> dict[str, tuple[np.ndarray, Sequence[Path | str]]] | None:
    """What `save_thumbnails` wrote (split -> (thumbnails, files)), or None for an older run."""
    path = Path(run_dir) / "thumbnails.npz"
    if not path.is_file():
        return None
    with np.load(path) as saved:
        return {name: (saved[name].astype(np.float32), saved[f"{name}_files"].tolist())
                for name in saved.files if not name.endswith("_files")}


def join_near_copies(source: Path, files: Sequence[Path], patients: Sequence[str],
                     workers: int = 0) -> list[str]:
    """`patients` with the patients of near-copies (`find_near_copies`: the same
    picture re-saved, re-encoded or resized) joined under the name that sorts first, so no
    split or fold holds one picture on both sides. Images are decoded once at 64 pixels
    with the breast crop (the measured threshold holds there too); unreadable ones are left
    to `train` to report."""
    images = cache_images(source, files, 64, 1, None, workers, "looking for near-copies",
                          crop=True)
    readable = [row for row in range(len(files)) if row not in images.failures]
    parent = {patient: patient for patient in patients}

    def root(patient: str) -> str:
        while parent[patient] != patient:
            patient = parent[patient]
        return patient

    joined = []
    for first, second in near_copy_pairs(thumbnails(images, readable)):
        a, b = root(patients[readable[first]]), root(patients[readable[second]])
        if a != b:
            parent[max(a, b)] = min(a, b)
            joined.append((files[readable[first]], files[readable[second]]))
    if joined:
        logger.warning(
            "%s: %d pair(s) of near-copies with different patients, e.g. %s and %s: their "
            "patients are split as one (split.csv gives them the name that sorts first)",
            source, len(joined), *joined[0])
    else:
        logger.info("%s: no near-copies across patients", source)
    return [root(patient) for patient in patients]
