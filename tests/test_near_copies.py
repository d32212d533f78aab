from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.cache import cache_images
from tumor_classifier.near_copies import find_near_copies, join_near_copies, thumbnails


def test_thumbnails_see_through_brightness_and_contrast_and_ignore_constant_images() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 64, 64, 1), dtype=np.float32)
    batch = np.concatenate([image, 0.5 * image + 0.2, np.full_like(image, 0.3),
                            rng.random((1, 64, 64, 1), dtype=np.float32)])
    own = thumbnails(batch, [0, 1, 2, 3])
    assert own.shape == (4, 256)
    np.testing.assert_allclose(own[0], own[1], atol=1e-5)  # standardised: same picture
    np.testing.assert_allclose(own[0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose((own[0] ** 2).mean(), 1, atol=1e-4)
    assert not own[2].any()  # a constant image has no pattern to match
    assert find_near_copies(own[1:], own[:1]).tolist() == [0, -1, -1]
    assert find_near_copies(own[:0], own).tolist() == []


def test_near_copies_of_real_films_are_found_and_different_films_are_not(
        prepared_mias: Path, tmp_path: Path) -> None:
    from PIL import Image

    films = sorted(prepared_mias.glob("*/*/*.png"))
    originals = cache_images(prepared_mias, films, 128, 1, tmp_path / "cache", workers=2,
                             crop=True)
    own = thumbnails(originals, range(len(films)))
    # Every film against all the others: none is a near-copy of a different film, not
    # even of the same woman's other breast.
    for row in range(len(films)):
        others = np.delete(own, row, axis=0)
        assert find_near_copies(own[row : row + 1], others)[0] == -1, films[row]

    film = Image.open(films[7]).convert("L")
    copies = [tmp_path / "copy.jpg", tmp_path / "copy_512.png", tmp_path / "copy_16bit.png"]
    film.save(copies[0], quality=50)
    film.resize((512, 512), Image.Resampling.BILINEAR).save(copies[1])
    Image.fromarray(np.asarray(film).astype(np.uint16) * 257).save(copies[2])
    made = cache_images(tmp_path, copies, 128, 1, tmp_path / "cache", crop=True)
    found = find_near_copies(thumbnails(made, range(3)), own)
    assert found.tolist() == [7, 7, 7]


def test_patients_of_near_copies_are_joined_under_the_name_that_sorts_first(
        prepared_mias: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from PIL import Image

    films = sorted((prepared_mias / "train" / "NOR").glob("*.png"))[:3]
    source = tmp_path / "flat"
    source.mkdir()
    names = ["a.png", "b.png", "c.png", "a_copy.jpg", "a_512.png", "broken.png"]
    for film, name in zip(films, names, strict=False):
        shutil.copy2(film, source / name)
    original = Image.open(films[0]).convert("L")
    original.save(source / "a_copy.jpg", quality=60)
    original.resize((512, 512), Image.Resampling.BILINEAR).save(source / "a_512.png")
    (source / "broken.png").write_bytes(b"not an image")
    files = [source / name for name in names]
    # a's two copies are filed under two other patients, one of them sorting before a's
    patients = ["w3", "w1", "w2", "w9", "w0", "w4"]

    joined = join_near_copies(source, files, patients)

    assert joined == ["w0", "w1", "w2", "w0", "w0", "w4"]
    assert "2 pair(s) of near-copies with different patients" in caplog.text
    assert sorted(path.name for path in source.iterdir()) == sorted(names)  # untouched
