"""Scan and validate a class-folder dataset, pair films with the other breast, and feed
the cached images to `fit` in batches (decoding happens once, in `cache`)."""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import CachedImages, WithOtherBreast
from .config import SPLIT_NAMES
from .imaging import IMAGE_EXTENSIONS, is_dicom

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


def _other_breast_column(table: Path) -> dict[Path, Path] | None:
    """A split.csv's file -> other_breast, both resolved; None without that column."""
    with table.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "other_breast" not in rows[0]:
        return None
    return {(table.parent / row["file"]).resolve(): (table.parent / row["other_breast"]).resolve()
            for row in rows if row["other_breast"]}


# A breast's side in a file name: LEFT or RIGHT, or a lone L or R, between separators, in
# any case (DDSM "A_0001_1.LEFT_CC", CBIS-DDSM "P_00001_LEFT_CC", "case12_R_MLO").
_SIDE = re.compile(r"(?<![A-Za-z0-9])(left|right|l|r)(?![A-Za-z0-9])", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l"}


def _other_side_name(name: str) -> str | None:
    """`name` with its one side word swapped (LEFT <-> RIGHT, L <-> R, case kept); None
    when it names no side, or more than one."""
    found = list(_SIDE.finditer(name))
    if len(found) != 1:
        return None
    word = found[0].group(1)
    other = _OTHER_SIDE[word.lower()]
    other = other.upper() if word.isupper() else other.capitalize() if word[0].isupper() \
        else other
    return name[:found[0].start()] + other + name[found[0].end():]


def other_breasts(files: Sequence[Path | str]) -> list[Path | None]:
    """Each file's other breast (the same woman's other film, same view), resolved.

    As the `other_breast` column of the nearest `split.csv` above the file that names it
    (`DATA/split.csv` for `DATA/test/CAN/film.png`, or for a film any depth below its class
    folder; `prepare mini-mias` writes the column); otherwise the one other file among
    `files` whose name is the file's own with its side swapped (`A_0001_1.LEFT_CC.png` and
    `A_0001_1.RIGHT_CC.png`, in any class folder; both names unique among `files`); None
    where neither gives one.
    """
    tables: dict[Path, dict[Path, Path] | None] = {}
    by_name: dict[str, list[Path]] = {}
    for file in files:
        by_name.setdefault(Path(file).name, []).append(Path(file).resolve())
    result: list[Path | None] = []
    for file in files:
        path = Path(file).absolute()
        other = None
        for folder in path.parents:  # each table is read once, and only if it exists
            table = folder / "split.csv"
            if table not in tables:
                tables[table] = _other_breast_column(table) if table.is_file() else None
            column = tables[table]
            if column and (other := column.get(path.resolve())):
                break
        if other is None and (name := _other_side_name(path.name)):
            # Both names must be unique among the files, so that pairs are mutual.
            candidates = by_name.get(name, [])
            unique = len(candidates) == 1 and len(by_name[path.name]) == 1
            other = candidates[0] if unique else None
        result.append(other)
    return result


def other_breast_rows(files: Sequence[Path], unreadable: Collection[int] = ()
                      ) -> tuple[np.ndarray, dict[int, str]]:
    """For every file, the index in `files` of its other breast (`other_breasts`).

    Returns the indices (a file's own index where there is no other breast) and, for the
    files without a readable other breast among `files`, one message each.

    Raises:
        ValueError: no file has its other breast named (no split.csv with that column).
    """
    partners = other_breasts(files)
    if files and not any(partners):
        raise ValueError(
            f"{Path(files[0]).parent.parent}: nothing names the other breast of these films: "
            "no split.csv with an other_breast column, and no file names that differ only "
            "in LEFT/RIGHT. Run `tumor-classifier prepare mini-mias` again (it writes the "
            "column), or add it (file,...,other_breast: the same woman's other film, same "
            "view, relative to split.csv).")
    position = {Path(path).resolve(): index for index, path in enumerate(files)}
    result = np.arange(len(files))
    problems: dict[int, str] = {}
    for index, (path, other) in enumerate(zip(files, partners, strict=True)):
        if other is None or other not in position:
            problems[index] = (
                f"{path}: no other breast beside it (split.csv's other_breast column names "
                "a film of the same split); a model trained with --other-breast compares "
                "both breasts of a woman. Add the film, or use a model trained without it.")
        elif position[other] in unreadable:
            problems[index] = f"{path}: its other breast {other.name} could not be read."
        else:
            result[index] = position[other]
    return result, problems


def pair_with_other_breasts(images: CachedImages, files: Sequence[Path]
                            ) -> tuple[WithOtherBreast, dict[int, str]]:
    """`images` (decoded from `files`, in order) paired with each file's other breast, and
    the message of every row that cannot be used: its own decoding failure, or a missing or
    unreadable other breast."""
    others, problems = other_breast_rows(files, images.failures.keys())
    failures = dict(images.failures)
    failures.update({row: message for row, message in problems.items() if row not in failures})
    return WithOtherBreast(images, others), failures


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
