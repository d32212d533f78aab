"""Lesion-patch pretraining, the first stage of the "patch classifier to whole-image
classifier" design (Shen et al., 2019): before it sees whole images, the network learns
what a benign or malignant lesion looks like from patches around the lesions that the
dataset marks (`annotations.csv`: file, x, y, radius in film pixels), against patches of
normal tissue. Presets whose head is global pooling accept any input size, so the patch
model's weights carry over to the whole-image model unchanged.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .imaging import ImageReadError, preprocess, read_image

logger = logging.getLogger(__name__)


def load_annotations(data_dir: Path) -> dict[Path, list[tuple[float, float, float]]]:
    """Lesion circles per file (resolved path), from `DATA_DIR/annotations.csv`."""
    table = Path(data_dir) / "annotations.csv"
    if not table.is_file():
        raise FileNotFoundError(
            f"{table}: not found; lesion-patch pretraining needs the lesion circles "
            "(file,x,y,radius), which `tumor-classifier prepare` writes."
        )
    circles: dict[Path, list[tuple[float, float, float]]] = {}
    with table.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            circles.setdefault((Path(data_dir) / row["file"]).resolve(), []).append(
                (float(row["x"]), float(row["y"]), float(row["radius"])))
    return circles


def _window(image: np.ndarray, row: int, column: int, size: int) -> np.ndarray:
    """A size x size window centred on (row, column), zero-padded at the borders."""
    half = size // 2
    padded = np.pad(image, ((half, half), (half, half), (0, 0)))
    return padded[row : row + size, column : column + size]


def sample_patches(
    files: Sequence[Path],
    labels: Sequence[int],
    class_names: Sequence[str],
    annotations: dict[Path, list[tuple[float, float, float]]],
    image_size: int,
    channels: int,
    patch_size: int,
    per_lesion: int = 8,
    per_normal_image: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Patches at the whole-image model's resolution: `per_lesion` jittered windows around
    each marked lesion (labelled with the film's class) and `per_normal_image` windows of
    breast tissue from each film of class NOR."""
    if "NOR" not in class_names:
        raise ValueError("lesion-patch pretraining needs a NOR class for background patches.")
    normal = list(class_names).index("NOR")
    rng = np.random.default_rng(seed)
    patches, targets = [], []
    for path, label in zip(files, labels, strict=True):
        circles = annotations.get(Path(path).resolve(), [])
        if label != normal and not circles:
            continue
        try:
            image = read_image(path)
        except ImageReadError as error:
            logger.warning("patches: %s", error)
            continue
        height, width = image.shape[:2]
        model_input = preprocess(image, image_size, channels)
        scale_y, scale_x = image_size / height, image_size / width
        if label == normal:
            tissue = np.argwhere(model_input[..., 0] > 0.15)  # breast, not background
            if len(tissue) == 0:
                continue
            for row, column in tissue[rng.integers(0, len(tissue), per_normal_image)]:
                patches.append(_window(model_input, int(row), int(column), patch_size))
                targets.append(normal)
            continue
        for x, y, radius in circles:
            for _ in range(per_lesion):
                jitter = rng.uniform(-0.5, 0.5, 2) * radius
                row = int(np.clip((y + jitter[0]) * scale_y, 0, image_size - 1))
                column = int(np.clip((x + jitter[1]) * scale_x, 0, image_size - 1))
                patches.append(_window(model_input, row, column, patch_size))
                targets.append(int(label))
    if not patches:
        raise ValueError("no lesion patches: no training film has a marked lesion.")
    return np.stack(patches).astype(np.float32), np.asarray(targets, np.int64)


def pretrain_on_patches(model_name: str, patches: np.ndarray, targets: np.ndarray,
                        num_classes: int, epochs: int, batch_size: int,
                        learning_rate: float) -> list[Any]:
    """Train the preset on patches (balanced class weights); returns its weights."""
    import keras

    from .models import build_model

    patch_model = build_model(model_name, patches.shape[1:], num_classes)
    patch_model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                        loss="categorical_crossentropy", metrics=["accuracy"])
    counts = np.bincount(targets, minlength=num_classes)
    weights = {index: len(targets) / (num_classes * count)
               for index, count in enumerate(counts) if count}
    logger.info("lesion-patch pretraining on %d patches (%s per class)", len(targets),
                counts.tolist())
    patch_model.fit(patches, np.eye(num_classes, dtype=np.float32)[targets],
                    batch_size=batch_size, epochs=epochs, shuffle=True,
                    class_weight=weights, verbose=2)
    return list(patch_model.get_weights())
