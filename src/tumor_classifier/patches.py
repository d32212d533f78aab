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

from .cache import CachedImages
from .config import TrainConfig, class_index
from .imaging import ImageReadError, read_image
from .other_breast import WithOtherBreast
from .preprocessing import crop_to, find_breast, preprocess, to_grey

logger = logging.getLogger(__name__)

# Model-input level above which a pixel is breast tissue, not background (inputs are
# stretched to [0, 1]); the patch sampler and the lesion-patch benchmark share it.
TISSUE_LEVEL = 0.15


def load_annotations(data_dir: Path) -> dict[Path, list[tuple[float, float, float]]]:
    """Lesion circles per file (resolved path), from `DATA_DIR/annotations.csv`."""
    table = Path(data_dir) / "annotations.csv"
    if not table.is_file():
        raise FileNotFoundError(
            f"{table}: not found; lesion-patch pretraining and the lesion hit rate need "
            "the lesion circles (file,x,y,radius), which `tumor-classifier prepare` writes."
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
    crop: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Patches at the whole-image model's resolution: `per_lesion` jittered windows around
    each marked lesion (labelled with the film's class) and `per_normal_image` windows of
    breast tissue from each film of class NOR. With `crop`, the films are preprocessed as
    `crop_breast` does and the lesion circles are mapped into the crop."""
    normal = class_index(class_names, "NOR")
    if normal is None:
        raise ValueError("lesion-patch pretraining needs a NOR (normal) class for background "
                         "patches.")
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
        # The crop found once: it makes the model input and maps the circles into it.
        box = find_breast(to_grey(image)) if crop else None
        model_input = preprocess(crop_to(to_grey(image), box) if crop else image,
                                 image_size, channels)
        if label == normal:
            tissue = np.argwhere(model_input[..., 0] > TISSUE_LEVEL)
            if len(tissue) == 0:
                continue
            for row, column in tissue[rng.integers(0, len(tissue), per_normal_image)]:
                patches.append(_window(model_input, int(row), int(column), patch_size))
                targets.append(normal)
            continue
        for x, y, radius in circles:
            for _ in range(per_lesion):
                jitter = rng.uniform(-0.5, 0.5, 2) * radius
                film_y, film_x = y + jitter[0], x + jitter[1]
                row_f, column_f = (box.from_film(film_y, film_x, image_size) if box else
                                   (film_y * image_size / height, film_x * image_size / width))
                row = int(np.clip(row_f, 0, image_size - 1))
                column = int(np.clip(column_f, 0, image_size - 1))
                patches.append(_window(model_input, row, column, patch_size))
                targets.append(int(label))
    if not patches:
        raise ValueError("no lesion patches: no training film has a marked lesion.")
    return np.stack(patches).astype(np.float32), np.asarray(targets, np.int64)


def most_suspicious_windows(model: Any, images: np.ndarray, per_image: int) -> np.ndarray:
    """The `per_image` windows of each image that a mammo_mil model finds most abnormal
    (highest abnormality log-odds in its `window_logits` map), as patches."""
    import keras

    from .models import MIL_WINDOW, abnormality_log_odds

    logits_layer = model.get_layer("window_logits")
    window_map = keras.Model(model.inputs, logits_layer.output)
    normal = model.get_layer("most_suspicious_window").normal_index
    stride = MIL_WINDOW // 2  # mammo_mil's feature stride: windows overlap by half
    patches = []
    for start in range(0, len(images), 16):
        logits = np.asarray(window_map.predict_on_batch(images[start : start + 16]))
        score = keras.ops.convert_to_numpy(abnormality_log_odds(logits, normal))
        for image, image_score in zip(images[start : start + 16], score, strict=True):
            for index in np.argsort(image_score, axis=None)[::-1][:per_image]:
                row, column = np.unravel_index(index, image_score.shape)
                patches.append(image[stride * row : stride * row + MIL_WINDOW,
                                     stride * column : stride * column + MIL_WINDOW])
    return np.stack(patches)


def pretrain_on_patches(model_name: str, patches: np.ndarray, targets: np.ndarray,
                        num_classes: int, epochs: int, batch_size: int,
                        learning_rate: float, normal_index: int | None = None,
                        normal_images: np.ndarray | None = None,
                        hard_negatives: int = 4,
                        initial_weights: list[Any] | None = None) -> list[Any]:
    """Train the preset on patches (balanced class weights); returns its weights.

    `initial_weights` (the whole-image model's, of the same shapes) start the patch model,
    so a pretrained preset's ImageNet weights are what the patches fine-tune.

    With `normal_images` (whole model inputs of normal films; mammo_mil only), training
    runs in three rounds and after each of the first two the `hard_negatives` windows of
    every normal film that the model, slid over the film, finds most suspicious join the
    normal patches: random normal tissue is easy, and a film-level classifier that takes
    its most suspicious window must not fire on dense tissue, the pectoral muscle or the
    skin line (hard-negative mining, as in Shen et al., 2019).
    """
    import keras

    from .models import build_model

    patch_model = build_model(model_name, patches.shape[1:], num_classes,
                              normal_index=normal_index)
    if initial_weights is not None:
        patch_model.set_weights(initial_weights)
    patch_model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                        loss="categorical_crossentropy", metrics=["accuracy"])
    whole = None if normal_images is None else build_model(
        model_name, normal_images.shape[1:], num_classes, normal_index=normal_index)
    rounds = 1 if whole is None else 3
    for round_index in range(rounds):
        if round_index and whole is not None and normal_images is not None:  # mining rounds
            whole.set_weights(patch_model.get_weights())
            mined = most_suspicious_windows(whole, normal_images, hard_negatives)
            patches = np.concatenate([patches, mined])
            targets = np.concatenate([targets, np.full(len(mined), normal_index)])
        counts = np.bincount(targets, minlength=num_classes)
        weights = {index: len(targets) / (num_classes * count)
                   for index, count in enumerate(counts) if count}
        logger.info("lesion-patch pretraining on %d patches (%s per class)", len(targets),
                    counts.tolist())
        round_epochs = epochs // rounds + (1 if round_index < epochs % rounds else 0)
        patch_model.fit(patches, np.eye(num_classes, dtype=np.float32)[targets],
                        batch_size=batch_size, epochs=round_epochs, shuffle=True,
                        class_weight=weights, verbose=2)
    return list(patch_model.get_weights())


def pretrain_on_lesions(model: Any, config: TrainConfig, data_dir: Path,
                         files: list[Path], labels: np.ndarray,
                         class_names: tuple[str, ...],
                         x_train: CachedImages | WithOtherBreast,
                         train_rows: np.ndarray, learning_rate: float) -> bool:
    """Stage one of two: train on lesion patches, then start from those weights. Returns
    False (and says why) when the dataset marks no lesions, so there is nothing to do."""
    from .models import MIL_WINDOW, build_model

    if not (data_dir / "annotations.csv").is_file():
        # A class-folder dataset without lesion circles: the default still has to work.
        logger.warning("%s: no annotations.csv (file,x,y,radius of each lesion), so no "
                       "lesion-patch pretraining; training on whole images only.", data_dir)
        return False
    normal = class_index(class_names, "NOR")
    if normal is None:
        raise ValueError("lesion-patch pretraining needs a NOR (or normal) class folder: "
                         "normal tissue is what lesion patches are learned against.")
    # mammo_mil mines hard negatives from the whole normal films.
    normal_images = x_train[train_rows[labels == normal]] if config.model == "mammo_mil" else None
    # mammo_mil's window, so its patch classifier is the one it slides over the film.
    patch_size = min(MIL_WINDOW, config.input_size)
    patch_model = build_model(config.model, (patch_size, patch_size, config.channels),
                              len(class_names))
    if [tuple(w.shape) for w in patch_model.get_weights()] != [
            tuple(w.shape) for w in model.get_weights()]:
        raise ValueError(f"preset {config.model!r} has weights that depend on the input size "
                         "(a Flatten head); lesion-patch pretraining needs a global-pooling "
                         "preset such as mammo_mil or mammo_net.")
    patches, targets = sample_patches(
        files, labels.tolist(), class_names, load_annotations(data_dir), config.input_size,
        config.channels, patch_size, seed=config.seed, crop=config.crop_breast)
    weights = pretrain_on_patches(config.model, patches, targets, len(class_names),
                                  config.patch_pretrain_epochs, config.batch_size,
                                  learning_rate, normal, normal_images,
                                  initial_weights=model.get_weights())
    model.set_weights(weights)
    return True
