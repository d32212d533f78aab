from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier import cache
from tumor_classifier.cache import CacheWriteError, cache_images
from tumor_classifier.preprocessing import load_model_input


def _counting_decoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    decoded: list[str] = []
    original = cache._decode

    def counting(task: tuple[str, int, int]) -> np.ndarray | str:
        decoded.append(Path(task[0]).name)
        return original(task)

    monkeypatch.setattr(cache, "_decode", counting)
    return decoded


def test_cache_equals_direct_decoding_and_reports_failures(films: list[Path],
                                                           tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    files = [*films[:20], bad, *films[20:]]
    images = cache_images(tmp_path, files, 64, 1, tmp_path / "cache", workers=2)
    assert images.shape == (len(files), 64, 64, 1)
    assert list(images.failures) == [20] and "bad.png: not a readable image" in images.failures[20]
    for row in (0, 19, 21, len(files) - 1):
        np.testing.assert_array_equal(images[row], load_model_input(files[row], 64, 1))
    np.testing.assert_array_equal(images[[0, 1, 5]][2], images[5])
    assert images[20].max() == 0
    assert bad.read_text() == "not a png"  # never deleted or changed


def test_cache_is_reused_and_rebuilt_for_exactly_the_changed_files(
    films: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = tmp_path / "data"
    dataset.mkdir()
    copies = []
    for film in films[:6]:
        copies.append(dataset / film.name)
        copies[-1].write_bytes(film.read_bytes())
    decoded = _counting_decoder(monkeypatch)
    first = cache_images(dataset, copies, 32, 1, tmp_path / "cache", workers=1)
    assert len(decoded) == 6
    again = cache_images(dataset, copies, 32, 1, tmp_path / "cache", workers=1)
    assert len(decoded) == 6 and again.path == first.path  # nothing decoded twice
    # change one file (new content, new mtime) and add one: only those two are decoded
    copies[2].write_bytes(films[10].read_bytes())
    os.utime(copies[2], ns=(1, 1))
    extra = dataset / films[11].name
    extra.write_bytes(films[11].read_bytes())
    decoded.clear()
    updated = cache_images(dataset, [*copies, extra], 32, 1, tmp_path / "cache", workers=1)
    assert sorted(decoded) == sorted([copies[2].name, extra.name])
    np.testing.assert_array_equal(updated[2], load_model_input(films[10], 32, 1))
    np.testing.assert_array_equal(updated[0], first[0])
    assert not first.path.exists()  # the superseded array is removed
    # other preprocessing parameters get their own cache entry
    decoded.clear()
    cache_images(dataset, copies, 48, 1, tmp_path / "cache", workers=1)
    assert len(decoded) == 6


def test_another_folder_of_links_to_the_same_files_decodes_nothing_again(
    films: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As cross-validation's folds do: each fold's folder links to the one dataset.
    first, second = tmp_path / "fold1", tmp_path / "fold2"
    for folder in (first, second):
        folder.mkdir()
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    for film in [*films[:4], bad]:
        (first / film.name).symlink_to(film)
    for film in [*films[2:6], bad]:
        (second / film.name).symlink_to(film)
    decoded = _counting_decoder(monkeypatch)
    one = cache_images(first, sorted(first.iterdir()), 32, 1, tmp_path / "cache", workers=1)
    assert len(decoded) == 5
    decoded.clear()
    files = sorted(second.iterdir())
    two = cache_images(second, files, 32, 1, tmp_path / "cache", workers=1)
    # only the two films fold 1 did not have, and the unreadable file, whose message names
    # the file under this folder
    assert sorted(decoded) == sorted([films[4].name, films[5].name, "bad.png"])
    assert two.path.parent != one.path.parent
    bad_row = [file.name for file in files].index("bad.png")
    assert list(two.failures) == [bad_row] and str(second) in two.failures[bad_row]
    for row, file in enumerate(files):
        if row != bad_row:
            np.testing.assert_array_equal(two[row], load_model_input(file, 32, 1))
    decoded.clear()
    cache_images(second, files, 48, 1, tmp_path / "cache", workers=1)
    assert len(decoded) == 5  # other preprocessing: nothing to reuse
    # a cut-short array (a disk error): its missing rows are decoded, never read as zeros
    third = tmp_path / "fold3"
    third.mkdir()
    for film in films[:2]:
        (third / film.name).symlink_to(film)
    os.truncate(one.path, 2 * 32 * 32 * 4)  # fold 1's rows: bad.png, films[0] (cut here)
    decoded.clear()
    three = cache_images(third, sorted(third.iterdir()), 32, 1, tmp_path / "cache", workers=1)
    assert decoded == [films[1].name]
    for row in (0, 1):
        np.testing.assert_array_equal(three[row], load_model_input(films[row], 32, 1))


def test_unwritable_cache_folder_is_a_clear_error(films: list[Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CacheWriteError, match=r"a_file/cache: cannot write the image cache"):
        cache_images(tmp_path, films[:2], 32, 1, blocker / "cache", workers=1)


def test_full_disk_leaves_the_previous_cache_intact(films: list[Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    first = cache_images(tmp_path, films[:3], 32, 1, tmp_path / "cache", workers=1)
    index = json.loads((first.path.parent / "index.json").read_text())

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache.os, "pwrite", full)
    with pytest.raises(CacheWriteError, match=r"No space left on device.*free disk space"):
        cache_images(tmp_path, films[:4], 32, 1, tmp_path / "cache", workers=1)
    monkeypatch.undo()
    assert json.loads((first.path.parent / "index.json").read_text()) == index
    assert sorted(p.name for p in first.path.parent.iterdir()) == sorted(
        ["index.json", first.path.name])
    again = cache_images(tmp_path, films[:3], 32, 1, tmp_path / "cache", workers=1)
    assert again.path == first.path


def test_a_script_without_a_main_guard_decodes_in_processes_and_runs_once(
    prepared_mias: Path, tmp_path: Path
) -> None:
    # Decoding processes are started with "spawn", which runs the main module again: a
    # script calling train() at its top level, without `if __name__ == "__main__":`, as
    # Keras examples are written, must neither run twice nor fail.
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from tumor_classifier.cache import cache_images\n"
        "with open(sys.argv[1], 'a') as runs:\n"
        "    runs.write('run\\n')\n"
        "files = [Path(line) for line in sys.argv[4:]]\n"
        "images = cache_images(Path(sys.argv[3]), files, 32, 1, Path(sys.argv[2]), workers=2)\n"
        "print(len(images), len(images.failures))\n")
    runs = tmp_path / "runs.txt"
    films = sorted(prepared_mias.glob("test/*/*.png"))[:40]  # 32 or more: in processes
    done = subprocess.run([sys.executable, str(script), str(runs), str(tmp_path / "cache"),
                           str(prepared_mias), *map(str, films)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["40", "0"]
    assert runs.read_text() == "run\n"
