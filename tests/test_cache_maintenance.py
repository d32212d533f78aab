from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tumor_classifier import cache, cache_maintenance
from tumor_classifier.cache import cache_images


def test_cache_command_lists_entries_and_removes_only_what_no_dataset_can_use(
    films: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tumor_classifier.cli import main

    cache_dir = tmp_path / "cache"
    roots = {name: tmp_path / name for name in ("kept", "gone", "old")}
    made = {}
    for index, (name, root) in enumerate(roots.items()):
        root.mkdir()
        for film in films[2 * index : 2 * index + 2]:
            (root / film.name).symlink_to(film)
        made[name] = cache_images(root, sorted(root.iterdir()), 32, 1, cache_dir, workers=1)
    old_index = made["old"].path.parent / "index.json"
    index = json.loads(old_index.read_text())
    index["settings"]["version"] = cache.PREPROCESSING_VERSION - 1
    old_index.write_text(json.dumps(index))
    shutil.rmtree(roots["gone"])  # a fold folder of links, deleted with its cv output
    # files the cache did not write are never removed, wherever they are
    (cache_dir / "notes.txt").write_text("mine")
    (made["gone"].path.parent / "keep.txt").write_text("mine")
    kept_folder = made["kept"].path.parent
    abandoned, fresh = kept_folder / "images-abandoned.f32", kept_folder / "images-new.f32"
    for path in (abandoned, fresh):
        path.write_bytes(bytes(32 * 32 * 4))
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(abandoned, (two_days_ago, two_days_ago))

    assert main(["cache", "--cache-dir", str(cache_dir)]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith(f"{cache_dir}: 3 entries, ")
    for name, state in (("kept", "current"), ("gone", "dataset folder gone"),
                        ("old", "older preprocessing")):
        line = next(line for line in listing.splitlines() if line.endswith(str(roots[name])))
        assert f"      2    32   1    no  {state}" in line, line
    assert "2 entries no dataset can use: `tumor-classifier cache --prune`" in listing

    assert main(["cache", "--cache-dir", str(cache_dir), "--prune"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 entries (")
    entries = cache_maintenance.cache_entries(cache_dir)
    assert [entry.root for entry in entries] == [str(roots["kept"])]
    assert not abandoned.exists() and fresh.exists()
    assert (cache_dir / "notes.txt").exists() and (made["gone"].path.parent / "keep.txt").exists()
    assert not (made["old"].path.parent).exists()
    assert all(film.is_file() for film in films[:6])  # the dataset is never touched
    again = cache_images(roots["kept"], sorted(roots["kept"].iterdir()), 32, 1, cache_dir,
                         workers=1)
    assert again.path == made["kept"].path  # the entry kept is still used, not rebuilt

    assert main(["cache", "--cache-dir", str(cache_dir), "--clear"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"removed 1 entry (0.0 MB) from {cache_dir}", f"{cache_dir}: 0 entries, 0.0 MB"]
    assert sorted(path.name for path in cache_dir.rglob("*")) == [
        made["gone"].path.parent.name, "keep.txt", "notes.txt"]


def test_a_file_removed_by_another_process_meanwhile_is_skipped(
    films: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process (a second cv, `cache --prune`) may remove a file between the listing
    # and its use: cv must not fail after a fold because of that.
    made = cache_images(tmp_path, films[:2], 32, 1, tmp_path / "cache", workers=1)
    size = made.path.stat().st_size + (made.path.parent / "index.json").stat().st_size
    listed = cache_maintenance._own_files
    monkeypatch.setattr(cache_maintenance, "_own_files",
                        lambda folder: [*listed(folder), folder / "images-gone.f32"])
    assert [entry.bytes for entry in cache_maintenance.cache_entries(tmp_path / "cache")] == [size]
    assert cache_maintenance.remove_entries_under(tmp_path, tmp_path / "cache") == size
    assert cache_maintenance.cache_entries(tmp_path / "cache") == []
