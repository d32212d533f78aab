from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ramp, write_png
from tumor_classifier.imaging import read_image
from tumor_classifier.preprocessing import crop_breast, find_breast, load_model_input, preprocess


def test_preprocess_shapes_and_range() -> None:
    image = ramp(dtype=np.uint16).astype(np.float32) / 65535
    out = preprocess(image, 128, 1)
    assert out.shape == (128, 128, 1) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert preprocess(image, 64, 3).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        preprocess(image, 64, 2)


def test_crop_breast_on_real_films_is_orientation_invariant(mias_dir: Path) -> None:
    for name in ("mdb028.pgm", "mdb001.pgm"):  # a right and a left breast
        film = read_image(mias_dir / name)
        crop = crop_breast(film)
        box = find_breast(film)
        assert box is not None and box.right - box.left < 0.8 * film.shape[1]
        assert crop.shape == (box.side, box.side)
        assert not crop[:, box.right - box.left :].any()  # padded on the right
        # chest wall (more tissue) on the left half
        assert crop[:, : crop.shape[1] // 2].sum() > crop[:, crop.shape[1] // 2 :].sum()
        # the mirrored film gives the same crop
        np.testing.assert_array_equal(crop_breast(film[:, ::-1].copy()), crop)
    model_input = preprocess(read_image(mias_dir / "mdb028.pgm"), 256, 1, crop=True)
    assert model_input.shape == (256, 256, 1)


def test_crop_box_maps_model_coordinates_back_to_the_film(mias_dir: Path) -> None:
    for name in ("mdb028.pgm", "mdb001.pgm"):
        film = read_image(mias_dir / name)
        box = find_breast(film)
        assert box is not None
        model_input = preprocess(film, 256, 1, crop=True)[..., 0]
        # the brightest model pixel maps back onto (nearly) the same value in the film
        row, column = np.unravel_index(int(np.argmax(model_input)), model_input.shape)
        y, x = box.to_film(row + 0.5, column + 0.5, 256)
        window = film[max(0, int(y) - 4) : int(y) + 5, max(0, int(x) - 4) : int(x) + 5]
        crop = crop_breast(film)  # the model input is the crop stretched to its own range
        value = (window.max() - crop.min()) / (crop.max() - crop.min())
        assert abs(float(value) - float(model_input.max())) < 0.05
        # from_film is its inverse
        np.testing.assert_allclose(box.from_film(y, x, 256), (row + 0.5, column + 0.5),
                                   atol=1e-6)


def test_images_without_background_are_not_cropped() -> None:
    texture = np.random.default_rng(0).random((128, 96)).astype(np.float32) * 0.2 + 0.5
    assert find_breast(texture) is None
    np.testing.assert_array_equal(crop_breast(texture), texture)


def test_crop_keeps_every_marked_lesion_of_the_real_films(mias_dir: Path) -> None:
    # The first crop (Otsu threshold itself) cut the dim upper breast of some films and
    # one marked lesion with it (mdb212); the crop must keep every lesion centre.
    from tumor_classifier.datasets import MIAS_IMAGE_SIZE, parse_mias_info
    films = parse_mias_info((mias_dir / "Info.txt").read_text())
    checked = 0
    for reference, film in sorted(films.items()):
        if not film.circles:
            continue
        box = find_breast(read_image(mias_dir / f"{reference}.pgm"))
        assert box is not None
        for x, y_up, _ in film.circles:
            y = MIAS_IMAGE_SIZE - y_up  # Info.txt's origin is bottom-left
            assert box.top <= y < box.bottom and box.left <= x < box.right, reference
            checked += 1
    assert checked > 60


def _ultrasound_like(seed: int = 0) -> np.ndarray:
    """A B-mode-like frame: speckle over tissue that darkens with depth, a bright
    superficial layer, a dark (hypoechoic) mass at mid-depth and its acoustic shadow,
    inside a black frame with burned-in text, as ultrasound exports often are."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:400, 0:480]
    echo = ndimage.gaussian_filter(0.45 + 0.1 * rng.standard_normal((400, 480)), 6)
    echo[:32] += 0.35
    echo *= np.clip(1.2 - rows / 400, 0.2, 1.0)
    mass = ((rows - 180) / 50) ** 2 + ((columns - 240) / 70) ** 2 < 1
    echo[mass] *= 0.15
    echo[200:, 200:280] *= 0.5
    frame = np.zeros((500, 640), np.float32)
    frame[50:450, 80:560] = np.clip(echo * rng.rayleigh(1.0, echo.shape) / 1.5, 0, 1)
    frame[10:30, 20:200] = 1.0  # burned-in text
    return frame


def test_crop_of_an_ultrasound_like_frame_keeps_the_deep_tissue_and_the_mass() -> None:
    for seed in range(3):
        box = find_breast(_ultrasound_like(seed))
        # The black frame and the text are cut away; the tissue, dark mass and deep
        # speckle included, is kept (the first crop kept only the bright top 35%).
        assert box is not None
        assert 40 <= box.top <= 60 and box.bottom >= 420, box
        assert 70 <= box.left <= 90 and 550 <= box.right <= 570, box


def test_12_bit_data_in_a_16_bit_png_gives_the_same_model_input(tmp_path: Path,
                                                                 mias_dir: Path) -> None:
    # A real film stored as a 12-bit mammogram usually is (0..4095 in a 16-bit PNG) and
    # at the full 16-bit range.
    film = read_image(mias_dir / "mdb028.pgm").astype(np.float64)
    full = write_png(tmp_path / "full.png", np.round(film * 65535).astype(np.uint16))
    twelve = write_png(tmp_path / "twelve.png", np.round(film * 4095).astype(np.uint16))
    assert read_image(twelve).max() < 0.07  # read at its true bit depth...
    for crop in (False, True):  # ...and stretched to its own range before the model
        np.testing.assert_allclose(load_model_input(twelve, 32, 1, crop=crop),
                                   load_model_input(full, 32, 1, crop=crop), atol=1e-3)
