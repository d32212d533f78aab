"""Scan and validate a class-folder dataset and feed the cached images to `fit` in
batches (decoding happens once, in `cache`; the other breast is paired in `other_breast`)."""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import CachedImages
from .config import SPLIT_NAMES
from .imaging import IMAGE_EXTENSIONS, is_dicom
from .other_breast import WithOtherBreast

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFolder:
    """The images of a class-folder dataset, in a fixed order (class, then path)."""

    root: Path
    class_names: tuple[str, ...]
    files: tuple[Path, ...]
    labels: tuple[int, ...]

    def counts(self) -> dict[str, int]:
        """Number of images per class, in class order."""
        return {
            name: sum(1 for label in self.labels if label == index)
            for index, name in enumerate(self.class_names)
        }


def _visible(name: str) -> bool:
    # Hidden files and folders (.DS_Store, .ipynb_checkpoints, __MACOSX) are never data.
    return not name.startswith((".", "__"))


# Segmentation masks stored beside their images, as breast-ultrasound sets ship them
# ("benign (1)_mask.png", "benign (1)_mask_1.png"): masks are not images to classify, and
# the empty masks of normal cases would stop training as constant images.
_MASK_NAME = re.compile(r"[_ -]mask(?:[_ -]?\d+)?$", re.IGNORECASE)


def _is_mask(path: Path) -> bool:
    return bool(_MASK_NAME.search(path.stem))


def _is_image_file(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    # DICOM files often have no extension at all; recognise them by their preamble.
    return path.suffix == "" and is_dicom(path)


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under `folder` (recursively, sorted) and the other files that were skipped
    (not images, or segmentation masks named like `*_mask.png`)."""
    images: list[Path] = []
    skipped: list[Path] = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if not path.is_file() or not all(_visible(part) for part in parts):
            continue
        (images if _is_image_file(path) and not _is_mask(path) else skipped).append(path)
    return images, skipped


def split_folders(root: Path | str) -> dict[str, Path]:
    """`root`'s split folders ("train", "validation", "test": each under any of its
    `SPLIT_NAMES`, in any case); empty when it has none."""
    root = Path(root)
    if not root.is_dir():
        return {}
    folders = {path.name.lower(): path for path in sorted(root.iterdir())
               if path.is_dir() and _visible(path.name)}
    found = {split: next((folders[name] for name in names if name in folders), None)
             for split, names in SPLIT_NAMES.items()}
    return {split: folder for split, folder in found.items() if folder is not None}


def scan_pooled(root: Path | str) -> ImageFolder:
    """Every image of `root`: its class folders (`scan_folder`), or, for a dataset that is
    already split (`root/{train,validation,test}/{CLASS}/...`), those of all its splits
    pooled: the classes of all splits together, each file under its own split folder
    (`root/validation/BEN/...`).

    Raises:
        FileNotFoundError, ValueError: as `scan_folder`, for `root` or one of its splits.
    """
    root = Path(root)
    splits = split_folders(root)
    if not splits:
        return scan_folder(root)
    names = sorted({path.name for folder in splits.values() for path in folder.iterdir()
                    if path.is_dir() and _visible(path.name)})
    files: list[Path] = []
    labels: list[int] = []
    for folder in splits.values():
        part = scan_folder(folder, names)
        files += part.files
        labels += part.labels
    return ImageFolder(root, tuple(names), tuple(files), tuple(labels))


def scan_folder(root: Path | str, class_names: Sequence[str] | None = None) -> ImageFolder:
    """Find the images of a `root/{CLASS}/...` dataset and check its structure.

    Args:
        root: a folder with one subfolder per class.
        class_names: the classes a model knows (evaluate, predict): a subfolder with another
            name is an error, a missing one a warning. None (train): the class names are the
            subfolders' names, sorted.

    Raises:
        FileNotFoundError: `root` does not exist or is not a folder.
        ValueError: no class folders, an unexpected folder, or a class without images.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: dataset folder not found; check the path.")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: is a file, expected a folder with class subfolders.")
    folders = sorted(path.name for path in root.iterdir() if path.is_dir() and _visible(path.name))
    if not folders:
        raise ValueError(
            f"{root}: no class folders; expected one subfolder per class "
            "(for example BEN/, CAN/, NOR/) holding the images."
        )
    split_names = {name for names in SPLIT_NAMES.values() for name in names}
    if ({folder.lower() for folder in folders} & split_names
            and (class_names is None or not set(folders) & set(class_names))):
        raise ValueError(
            f"{root}: holds split folders ({', '.join(folders)}), not class folders; pass one "
            f"split, for example {root / folders[0]}."
        )
    if class_names is None:
        names = tuple(folders)
        if len(names) < 2:
            raise ValueError(
                f"{root}: only one class folder ({names[0]}); a classifier needs at least two."
            )
    else:
        names = tuple(class_names)
        unexpected = [folder for folder in folders if folder not in names]
        if unexpected:
            raise ValueError(
                f"{root}: unexpected folder(s) {', '.join(unexpected)}; the model's classes are "
                f"{', '.join(names)}. Move the folder out or rename it to one of them."
            )
        absent = [name for name in names if name not in folders]
        if absent:
            logger.warning("%s: no folder for class(es) %s", root, ", ".join(absent))

    files: list[Path] = []
    labels: list[int] = []
    skipped_all: list[Path] = []
    for index, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        images, skipped = list_images(folder)
        skipped_all += skipped
        if not images:
            raise ValueError(
                f"{folder}: class folder holds no images (expected "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} or DICOM files); add images or remove "
                "the folder."
            )
        files += images
        labels += [index] * len(images)
    masks = [path for path in skipped_all if _is_mask(path)]
    others = [path for path in skipped_all if not _is_mask(path)]
    if masks:
        logger.warning(
            "%s: ignored %d segmentation mask(s) (names ending in _mask), e.g. %s; masks are "
            "not images to classify", root, len(masks), masks[0],
        )
    if others:
        logger.warning(
            "%s: ignored %d file(s) that are not images, e.g. %s",
            root, len(others), others[0],
        )
    return ImageFolder(root, names, tuple(files), tuple(labels))


def read_split_table(data_dir: Path) -> tuple[Path, list[dict[str, str]]] | None:
    """The `split.csv` next to or above `data_dir` (as `prepare` writes it, for the whole
    dataset or for one split folder): its folder, which the `file` column is relative to,
    and its rows. None when there is none."""
    for folder in (data_dir, data_dir.parent):
        table = folder / "split.csv"
        if table.is_file():
            with table.open(encoding="utf-8") as handle:
                return folder, list(csv.DictReader(handle))
    return None


class Batches:
    """(images, one-hot labels[, class weights]) batches of `images[rows]`, indexable.

    A `keras.utils.PyDataset` (built by `as_dataset`): Keras prefetches it in threads on
    every backend, each epoch is exactly `len()` batches, and peeking at a batch (as Keras
    does to learn the shapes) consumes nothing. With `seed`, every pass over the data is a
    new permutation; `steps` longer or shorter than a pass continue across passes, like
    `flow_from_directory`. With `seed=None` the order is fixed (validation: one exact pass
    per epoch). Class weights travel as per-sample weights, which is what Keras does with
    `class_weight`, the same on every backend and on several devices.
    """

    def __init__(self, images: np.ndarray | CachedImages | WithOtherBreast, rows: np.ndarray,
                 labels: np.ndarray, num_classes: int, batch_size: int,
                 weights: dict[int, float] | None = None, seed: int | None = 0,
                 steps: int | None = None, balanced: bool = False) -> None:
        self.images, self.rows, self.batch_size, self.seed = images, rows, batch_size, seed
        # Balanced sampling: each pass draws len(rows) images with replacement, every class
        # equally likely (an alternative to class weights).
        self.draw = None
        if balanced:
            counts = np.bincount(labels, minlength=num_classes)
            self.draw = 1.0 / counts[labels]
            self.draw /= self.draw.sum()
        self.one_hot = np.eye(num_classes, dtype=np.float32)[labels]
        self.sample_weights = None if weights is None else np.array(
            [weights[int(label)] for label in labels], np.float32)
        self.per_pass = math.ceil(len(rows) / batch_size)
        self.steps = steps or self.per_pass
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def _order(self, pass_index: int) -> np.ndarray:
        if self.seed is None:
            return np.arange(len(self.rows))
        rng = np.random.default_rng([self.seed, pass_index])
        if self.draw is not None:
            return rng.choice(len(self.rows), len(self.rows), p=self.draw)
        return rng.permutation(len(self.rows))

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        pass_index, position = divmod(self.epoch * self.steps + index, self.per_pass)
        order = self._order(pass_index if self.seed is not None else 0)
        chosen = np.sort(order[position * self.batch_size : (position + 1) * self.batch_size])
        batch = (self.images[self.rows[chosen]], self.one_hot[chosen])
        if self.sample_weights is not None:
            return (*batch, self.sample_weights[chosen])
        return batch

    def set_epoch(self, epoch: int) -> None:
        """Which pass the next epoch reads; set by Keras at the start of every epoch (a
        counter driven by the feed would advance whenever Keras or tf.distribute opened an
        extra iterator, and one device and several would then shuffle differently)."""
        if self.seed is not None:
            self.epoch = epoch


def as_dataset(batches: Batches, workers: int = 2) -> Any:
    """What `fit` gets. On TensorFlow: a `tf.data` pipeline over `batches` with a declared
    signature, prefetching 4 batches (measured faster here than a PyDataset, and under a
    tf.distribute strategy Keras' own adapters feed the batches out of order). On other
    backends: a `keras.utils.PyDataset` read ahead by `workers` threads. Either way each
    epoch is exactly `len(batches)` batches."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        first = batches[0]

        def one_epoch() -> Iterator[tuple[np.ndarray, ...]]:
            for index in range(len(batches)):
                yield batches[index]

        signature = tuple(tf.TensorSpec((None, *part.shape[1:]), tf.float32) for part in first)
        dataset = tf.data.Dataset.from_generator(one_epoch, output_signature=signature)
        # A declared length: Keras then runs exactly len(batches) steps per epoch, also
        # under a tf.distribute strategy.
        return dataset.apply(tf.data.experimental.assert_cardinality(len(batches))).prefetch(4)

    class Dataset(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8)

        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
            return batches[index]

    return Dataset()
