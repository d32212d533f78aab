from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from tumor_classifier.cli import main
from tumor_classifier.explain import (
    find_target_layer,
    grad_cam,
    lesion_hit_rate,
    overlay,
    peak_location,
)
from tumor_classifier.imaging import read_image
from tumor_classifier.models import PRESETS, build_model
from tumor_classifier.predict import Classifier


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_grad_cam_works_for_every_preset_built_or_loaded(name: str, tmp_path: Path) -> None:
    side = 128 if name == "seed_asymmetry" else 64  # its seed branch sees a quarter
    model = build_model(name, (side, side, 1), 3)
    image = np.random.default_rng(0).random((side, side, 1), np.float32)
    heatmap = grad_cam(model, image, class_index=1)
    assert heatmap.shape == (side, side) and heatmap.dtype == np.float32
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
    assert "pooling" not in find_target_layer(model).name
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(grad_cam(loaded, image, class_index=1), heatmap, atol=1e-6)


def test_named_layer_and_overlay() -> None:
    model = build_model("seed", (64, 64, 1), 3)
    with pytest.raises(ValueError, match=r"Grad-CAM layer 'nope' not in the model; layers"):
        grad_cam(model, np.zeros((64, 64, 1), np.float32), 0, layer_name="nope")
    image = np.linspace(0, 1, 200 * 100, dtype=np.float32).reshape(200, 100)
    heat = np.zeros((64, 64), np.float32)
    heat[10, 50] = 1.0
    blended = overlay(image, heat, opacity=0.5)
    assert blended.shape == (200, 100, 3) and blended.dtype == np.uint8
    # where the map is cold, the film is unchanged
    np.testing.assert_array_equal(blended[190, 5], np.round(image[190, 5] * 255))
    assert peak_location(heat) == (10, 50)


@pytest.mark.slow
def test_model_randomisation_changes_the_heat_map(trained_run: Path,
                                                  prepared_mias: Path) -> None:
    """Adebayo et al. (2018): a saliency map that survives re-initialising the weights
    explains the input, not the model."""
    classifier = Classifier.load(trained_run)
    keras.utils.set_random_seed(1234)
    randomised = build_model("seed", (128, 128, 1), 3)
    correlations = []
    for film in sorted((prepared_mias / "test").rglob("*.png"))[:8]:
        model_input = classifier.preprocess(read_image(film))
        predicted = int(np.argmax(classifier.predict_batch(model_input[np.newaxis])))
        trained_map = grad_cam(classifier.model, model_input, predicted)
        random_map = grad_cam(randomised, model_input, predicted)
        correlation = spearmanr(trained_map.ravel(), random_map.ravel()).statistic
        correlations.append(0.0 if np.isnan(correlation) else correlation)
    assert abs(float(np.mean(correlations))) < 0.5


@pytest.mark.slow
def test_lesion_hit_rate_on_real_annotations(trained_run: Path, prepared_mias: Path,
                                            tmp_path: Path) -> None:
    classifier = Classifier.load(trained_run)
    result = lesion_hit_rate(classifier, prepared_mias, "test")
    assert result["films"] > 5
    assert 0.0 <= result["hit_rate"] <= 1.0 and 0.0 < result["chance"] < 0.2
    # a dataset of links to the same films (as cv's folds are) finds the same lesions
    linked = tmp_path / "linked"
    for film in (prepared_mias / "test").rglob("*.png"):
        target = linked / film.relative_to(prepared_mias)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(film)
    (linked / "annotations.csv").write_text(
        (prepared_mias / "annotations.csv").read_text(encoding="utf-8"), encoding="utf-8")
    assert lesion_hit_rate(classifier, linked, "test") == result


@pytest.mark.slow
def test_predict_heatmap_option(trained_run: Path, prepared_mias: Path,
                                tmp_path: Path) -> None:
    film = next((prepared_mias / "test" / "CAN").glob("*.png"))
    out = tmp_path / "heat map.png"
    assert main(["predict", str(trained_run), str(film), "--heatmap", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (1024, 1024) and image.mode == "RGB"
    assert main(["predict", str(trained_run), str(film), str(film), "--heatmap",
                 str(out)]) == 2
