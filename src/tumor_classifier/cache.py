"""The decoded-image cache: each image is read and preprocessed once, reused across epochs
and runs, and rebuilt for exactly the files that changed.

One cache entry per (dataset folder, preprocessing): a raw float32 array file
(n, size, size, channels) plus `index.json` listing each file's path, size and modification
time (and, for unreadable files, the error). The array is written under a new name and the
index renamed into place last, so a half-written cache is never used. A new entry copies
the rows of any other entry with the same preprocessing that holds the same resolved file
(cross-validation's folds link to one dataset), and decodes only the rest. Batches are read with
`os.pread` rather than a memory map: the kernel's page cache makes repeated epochs fast while
the process's own memory stays bounded, whatever the dataset's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .imaging import ImageReadError
from .preprocessing import load_model_input

logger = logging.getLogger(__name__)

# Bump when read_image/preprocess change what they return: old caches are then ignored.
PREPROCESSING_VERSION = 3  # 3: each image stretched to its own range; dark-only crop


def default_cache_dir() -> Path:
    """`$TUMOR_CLASSIFIER_CACHE`, else `$XDG_CACHE_HOME/tumor-classifier`, else
    `~/.cache/tumor-classifier`: outside the dataset, which is never written to."""
    if os.environ.get("TUMOR_CLASSIFIER_CACHE"):
        return Path(os.environ["TUMOR_CLASSIFIER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tumor-classifier"


class CacheWriteError(OSError):
    """The cache folder is not writable or the disk is full."""


@dataclass
class CachedImages:
    """Decoded images on disk, read row by row. Indexing with integer arrays returns
    float32 (k, size, size, channels), like indexing the in-memory array would."""

    path: Path
    shape: tuple[int, int, int, int]
    failures: dict[int, str]

    def __post_init__(self) -> None:
        # Opened once and kept: a later rebuild that replaces (unlinks) this array does not
        # pull it from under a reader.
        self._file = os.open(self.path, os.O_RDONLY)

    def __del__(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            os.close(file)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:])) * 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        rows = np.arange(self.shape[0])[index]
        single = np.ndim(rows) == 0
        rows = np.atleast_1d(rows)
        out = np.empty((len(rows), *self.shape[1:]), np.float32)
        buffer = out.reshape(len(rows), -1).view(np.uint8)
        # Consecutive rows are read in one call: sorted batches read fast.
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            size = (stop - start) * self.row_bytes
            data = os.pread(self._file, size, int(rows[start]) * self.row_bytes)
            buffer[start:stop] = np.frombuffer(data, np.uint8).reshape(stop - start, -1)
            start = stop
        return out[0] if single else out

    def chunks(self, size: int = 256) -> Iterator[np.ndarray]:
        for start in range(0, len(self), size):
            yield self[start : start + size]


def _signature(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _decode(task: tuple[str, int, int, bool]) -> np.ndarray | str:
    path, image_size, channels, crop = task
    try:
        return load_model_input(path, image_size, channels, crop=crop)
    except ImageReadError as error:
        return str(error)


def read_index(index_path: Path) -> tuple[dict[str, Any], Path, list[dict[str, Any]]]:
    """A cache entry's settings, array file and entries (signature, error) as `index.json`
    lists them.

    Raises:
        ValueError, KeyError, TypeError, OSError: the index is unreadable or malformed.
    """
    index = json.loads(index_path.read_text(encoding="utf-8"))
    return dict(index["settings"]), index_path.parent / index["array"], list(index["entries"])


def _entries_elsewhere(cache_dir: Path, folder: Path, settings: dict[str, Any]
                       ) -> dict[tuple[Any, ...], tuple[Path, int, str | None]]:
    """signature -> (array file, row, None) for the readable images of every other cache
    folder under `cache_dir` whose preprocessing (all settings but the dataset folder) is
    `settings`'."""
    found: dict[tuple[Any, ...], tuple[Path, int, str | None]] = {}
    for index_path in sorted(cache_dir.glob("*/index.json")):
        if index_path.parent == folder:
            continue
        try:
            theirs, array, entries = read_index(index_path)
        except (ValueError, KeyError, TypeError, OSError):
            continue  # another process's half-written or foreign file: decode instead
        if {**theirs, "root": None} != {**settings, "root": None}:
            continue
        for row, entry in enumerate(entries):
            if not entry.get("error"):  # an error names the file as that dataset did
                found.setdefault(tuple(entry["signature"]), (array, row, None))
    return found


@contextlib.contextmanager
def _script_hidden() -> Iterator[None]:
    """While decoding processes start, the calling script is hidden from multiprocessing.

    A "spawn" process first runs the main module again, and a script without an
    `if __name__ == "__main__":` guard (`train(config)` at its top level, as in a Keras
    example) would start training again in every decoding process, and fail. The processes
    need nothing from the script (`_decode` lives here), so they are started without it.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {name: main.__dict__[name] for name in ("__file__", "__spec__")
                             if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _write_rows(file: int, row_bytes: int, row: int, images: np.ndarray) -> None:
    data = np.ascontiguousarray(images, np.float32).tobytes()
    written = os.pwrite(file, data, row * row_bytes)
    if written != len(data):
        raise OSError(28, "short write (disk full?)")


def cache_images(
    root: Path,
    files: Sequence[Path],
    image_size: int,
    channels: int,
    cache_dir: Path | None = None,
    workers: int = 0,
    description: str = "decoding",
    crop: bool = False,
) -> CachedImages:
    """Decode `files` (all under `root`) into the cache, reusing every unchanged entry.

    Raises:
        CacheWriteError: the cache folder cannot be written (read-only, disk full); the
            message names it and says what to do.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    settings = {"root": str(Path(root).resolve()), "image_size": image_size,
                "channels": channels, "crop": crop, "version": PREPROCESSING_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_dir / key
    shape = (len(files), image_size, image_size, channels)
    row_bytes = image_size * image_size * channels * 4
    signatures = [_signature(Path(path).resolve()) for path in files]

    # signature -> (array file, row, error) of every entry this folder's cache holds
    old_rows: dict[tuple[Any, ...], tuple[Path, int, str | None]] = {}
    old_array: Path | None = None
    index_path = folder / "index.json"
    if index_path.is_file():
        try:
            theirs, array, entries = read_index(index_path)
            if theirs == settings and array.is_file():
                old_array = array
                for row, entry in enumerate(entries):
                    old_rows[tuple(entry["signature"])] = (old_array, row, entry.get("error"))
        except (ValueError, KeyError, TypeError, OSError):
            logger.warning("%s: cache index unreadable; rebuilding this cache", index_path)

    reuse = [old_rows.get(tuple(signature)) for signature in signatures]
    if old_array is not None and len(old_rows) == len(files) and all(
        found is not None and found[1] == row for row, found in enumerate(reuse)
    ):
        return CachedImages(old_array, shape, {
            row: found[2] for row, found in enumerate(reuse) if found is not None and found[2]
        })
    if any(found is None for found in reuse):
        # Signatures name the resolved file, so another folder's cache with the same
        # preprocessing holds the same decoded images: cross-validation's folds (links to
        # one dataset) and a dataset linked or split again decode each image once.
        others = _entries_elsewhere(cache_dir, folder, settings)
        reuse = [found or others.get(tuple(signature))
                 for found, signature in zip(reuse, signatures, strict=True)]
    if old_rows:
        logger.info("cache %s: %d of %d images changed or new", folder,
                    sum(found is None for found in reuse), len(files))

    array_name = f"images-{uuid.uuid4().hex[:12]}.f32"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        file = os.open(folder / array_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as error:
        raise CacheWriteError(
            error.errno, f"{cache_dir}: cannot write the image cache ({error.strerror}); pass "
            "--cache-dir with a writable folder"
        ) from error
    failures: dict[int, str] = {}
    try:
        by_array: dict[Path, list[tuple[int, int, str | None]]] = {}
        for row, found in enumerate(reuse):
            if found is not None:
                by_array.setdefault(found[0], []).append((row, found[1], found[2]))
        for array, rows in by_array.items():
            try:
                source = os.open(array, os.O_RDONLY)
            except OSError:  # superseded by another process since its index was read
                for row, _, _ in rows:
                    reuse[row] = None
                continue
            try:
                for row, source_row, message in rows:
                    data = os.pread(source, row_bytes, source_row * row_bytes)
                    if len(data) < row_bytes:  # a truncated array: decode the image instead
                        reuse[row] = None
                        continue
                    os.pwrite(file, data, row * row_bytes)
                    if message:
                        failures[row] = message
            finally:
                os.close(source)
        os.ftruncate(file, len(files) * row_bytes)
        todo = [row for row, found in enumerate(reuse) if found is None]
        tasks = [(str(files[row]), image_size, channels, crop) for row in todo]
        workers = workers or os.cpu_count() or 1
        progress = tqdm(total=len(tasks), desc=description, unit="image",
                        disable=len(tasks) < 50)
        pool = None
        if workers > 1 and len(tasks) >= 32:
            # "spawn" keeps worker processes free of the parent's TensorFlow threads.
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            with _script_hidden():  # the processes start as the tasks are submitted
                results: Iterator[np.ndarray | str] = pool.map(
                    _decode, tasks, chunksize=max(1, min(64, len(tasks) // (workers * 8)))
                )
        else:
            results = map(_decode, tasks)
        try:
            for row, result in zip(todo, results, strict=True):
                if isinstance(result, str):
                    failures[row] = result
                else:
                    _write_rows(file, row_bytes, row, result[np.newaxis])
                progress.update()
        finally:
            progress.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        os.fsync(file)
    except OSError as error:
        os.close(file)
        (folder / array_name).unlink(missing_ok=True)
        needed = len(files) * row_bytes / 1e6
        raise CacheWriteError(
            error.errno, f"{folder}: cannot write the image cache ({error.strerror}); it needs "
            f"{needed:.0f} MB: free disk space or pass --cache-dir with a folder that has room"
        ) from error
    os.close(file)

    entries = [{"signature": signature, "error": failures.get(row)}
               for row, signature in enumerate(signatures)]
    temporary = folder / f"index.json.{uuid.uuid4().hex[:8]}.tmp"
    temporary.write_text(json.dumps({"settings": settings, "array": array_name,
                                     "shape": list(shape), "entries": entries}),
                         encoding="utf-8")
    temporary.replace(index_path)  # the new cache exists only from here on
    if old_array is not None and old_array.name != array_name:
        try:
            old_array.unlink()  # open readers keep their file handle (POSIX)
        except OSError:
            logger.debug("could not remove superseded cache array %s", old_array)
    return CachedImages(folder / array_name, shape, failures)
