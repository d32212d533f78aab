"""See and clean the decoded-image cache (`tumor-classifier cache`): list its entries,
remove those no dataset can use any more, or all of them. Datasets are never touched."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .cache import PREPROCESSING_VERSION, default_cache_dir, read_index

logger = logging.getLogger(__name__)

# What `tumor-classifier cache` lists and removes. Only files this module writes are ever
# deleted (an entry's index.json, images-*.f32 arrays and index temporaries), so a cache
# folder pointed at the wrong place loses nothing else.
_OWN_FILES = ("index.json", "images-*.f32", "index.json.*.tmp")
# A file that no index names may be an array another process is writing right now.
_ABANDONED_AFTER_S = 24 * 3600


@dataclass
class CacheEntry:
    """One cache folder: the dataset folder and preprocessing it was made for, its images
    and disk use, and whether it can still be used."""

    folder: Path
    root: str | None
    image_size: int | None
    channels: int | None
    crop: bool | None
    images: int
    bytes: int
    state: str  # "current", "dataset folder gone", "older preprocessing", "no index"
    array: Path | None = None  # the array file its index names

    @property
    def stale(self) -> bool:
        """Nothing can use it: `prune_cache` removes it."""
        return self.state in ("dataset folder gone", "older preprocessing")


def _own_files(folder: Path) -> list[Path]:
    return sorted({path for pattern in _OWN_FILES for path in folder.glob(pattern)
                   if path.is_file() and not path.is_symlink()})


def _stat(path: Path) -> os.stat_result | None:
    """None for a file another process removed since it was listed."""
    try:
        return path.stat()
    except OSError:
        return None


def cache_entries(cache_dir: Path | None = None) -> list[CacheEntry]:
    """Every entry under `cache_dir` (default `default_cache_dir()`), largest first."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    entries = []
    for folder in sorted(path for path in cache_dir.glob("*") if path.is_dir()):
        files = _own_files(folder)
        if not files:
            continue
        size = sum(found.st_size for found in map(_stat, files) if found)
        try:
            settings, array, rows = read_index(folder / "index.json")
            root = str(settings["root"])
        except (ValueError, KeyError, TypeError, OSError):
            entries.append(CacheEntry(folder, None, None, None, None, 0, size, "no index"))
            continue
        state = ("older preprocessing" if settings.get("version") != PREPROCESSING_VERSION
                 else "dataset folder gone" if not Path(root).is_dir() else "current")
        entries.append(CacheEntry(
            folder, root, settings.get("image_size"), settings.get("channels"),
            settings.get("crop"), len(rows), size, state, array))
    return sorted(entries, key=lambda entry: -entry.bytes)


def _delete(folder: Path, paths: Sequence[Path]) -> int:
    """Remove `paths` (the cache's own files) and `folder` if that leaves it empty; the
    bytes freed."""
    freed = 0
    for path in paths:
        found = _stat(path)
        try:
            path.unlink()
            freed += found.st_size if found else 0
        except FileNotFoundError:
            pass  # another process was first
        except OSError as error:
            logger.warning("%s: not removed (%s)", path, error.strerror)
    with contextlib.suppress(OSError):  # not empty: something else lives there
        folder.rmdir()
    return freed


def prune_cache(cache_dir: Path | None = None, everything: bool = False) -> tuple[int, int]:
    """Remove stale entries (their dataset folder is gone, or they hold an older
    preprocessing), or with `everything` all entries; and files that no index names (an
    array or index temporary of a stopped process, an unreadable index) once a day old.

    Returns: (entries removed, bytes freed).
    """
    now = time.time()
    removed = freed = 0
    for entry in cache_entries(cache_dir):
        files = _own_files(entry.folder)
        if everything or entry.stale:
            doomed = files
        else:
            named = {"index.json", entry.array.name} if entry.array else set()
            doomed = [path for path, found in zip(files, map(_stat, files), strict=True)
                      if path.name not in named and found
                      and now - found.st_mtime > _ABANDONED_AFTER_S]
        freed += _delete(entry.folder, doomed)
        removed += len(doomed) == len(files)
    return removed, freed


def remove_entries_under(folder: Path, cache_dir: Path | None = None) -> int:
    """Remove the entries made for dataset folders inside `folder`; the bytes freed.

    `cv` drops a finished fold's entries once the next fold has copied its rows (every
    fold's train, validation and test hold every image), so the cache keeps about one copy
    of the dataset instead of one per fold.
    """
    inside = Path(folder).resolve()
    freed = 0
    for entry in cache_entries(cache_dir):
        if entry.root is not None and Path(entry.root).is_relative_to(inside):
            freed += _delete(entry.folder, _own_files(entry.folder))
    return freed


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def format_entries(entries: Sequence[CacheEntry], cache_dir: Path,
                   removed: tuple[int, int] | None = None, hint_prune: bool = True) -> str:
    """`cache_entries`' listing as text: what `prune_cache` `removed` (entries, bytes) if
    given, a total, a line per entry (largest first) and, with `hint_prune`, how many no
    dataset can use."""
    lines = []
    if removed is not None:
        lines.append(f"removed {_count(removed[0], 'entry', 'entries')} "
                     f"({removed[1] / 1e6:.1f} MB) from {cache_dir}")
    total = sum(entry.bytes for entry in entries)
    lines.append(f"{cache_dir}: {_count(len(entries), 'entry', 'entries')}, "
                 f"{total / 1e6:.1f} MB")
    if entries:
        lines.append(f"{'MB':>9} {'images':>7} {'size':>5} {'ch':>3} {'crop':>5}  "
                     f"{'state':<20} dataset folder")
    for entry in entries:
        crop = "-" if entry.crop is None else "yes" if entry.crop else "no"
        lines.append(f"{entry.bytes / 1e6:9.1f} {entry.images:7d} {entry.image_size or '-':>5} "
                     f"{entry.channels or '-':>3} {crop:>5}  {entry.state:<20} "
                     f"{entry.root or entry.folder}")
    stale = sum(entry.stale for entry in entries)
    if stale and hint_prune:
        lines.append(f"{_count(stale, 'entry', 'entries')} no dataset can use: "
                     "`tumor-classifier cache --prune` removes them")
    return "\n".join(lines)
