"""seed_asymmetry: the probe's regressions become exact Keras layers, the assembled model
is the mean of its two parts, and it trains, predicts and explains on real films."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.asymmetry import (
    BACKBONE,
    FEATURES,
    _Features,
    assemble,
    fit_probe,
    probe_sizes,
    reuse_features,
)
from tumor_classifier.models import build_model
from tumor_classifier.other_breast import WithOtherBreast


def test_probe_sizes_are_quarters_of_the_input_side() -> None:
    assert probe_sizes(512) == (128, 256, 384, 512)
    assert probe_sizes(128) == (32, 64, 96, 128)


def test_the_assembled_model_averages_the_seed_branch_and_the_regressions() -> None:
    # The probe's scikit-learn regressions, standardisation folded into Dense weights, must
    # give in Keras what they give in scikit-learn, on each film less its other breast.
    from sklearn.linear_model import LogisticRegression

    side, rng = 128, np.random.default_rng(0)
    films = rng.random((24, side, side, 1), np.float32)
    films[:8, 40:80, 40:80] += 0.5  # a bright spot in one breast: a class to find
    others = np.array([*range(12, 24), *range(12)])  # film i's other breast is row others[i]
    labels = np.array([0] * 8 + [1] * 4 + [2] * 12)
    train, validation = np.arange(0, 24, 2), np.arange(1, 24, 2)
    pairs = WithOtherBreast(films, others)
    weights = {0: 1.0, 1: 2.0, 2: 0.5}
    features, heads, record = fit_probe(side, "imagenet", pairs, train, labels[train], pairs,
                                        validation, labels[validation], 3, weights)
    assert record["sizes"] == [32, 64, 96, 128]
    assert record["backbone"] == f"efficientnet_{BACKBONE}"
    # The probe reads the last block of the backbone, with its ImageNet weights.
    from tumor_classifier.efficientnet_lite import (
        VARIANTS,
        imagenet_weights_path,
        read_torch_state_dict,
    )

    last = sum(stage[-1] for stage in VARIANTS[BACKBONE]) - 1
    state = read_torch_state_dict(imagenet_weights_path(BACKBONE))
    np.testing.assert_array_equal(
        np.asarray(features.backbone.get_layer(f"block{last}_project").kernel),
        state[f"_blocks.{last}._project_conv.weight"].transpose(2, 3, 1, 0))
    assert features.backbone.output.shape[-1] == FEATURES
    seed_branch = build_model("seed_asymmetry", (side, side, 2), 3)
    model = assemble(seed_branch, features, heads)

    expected = []
    for size in probe_sizes(side):
        computed = features.compute(films, np.arange(24), size)
        difference = computed - computed[others]
        mean, scale = difference[train].mean(axis=0), difference[train].std(axis=0)
        scale[scale == 0] = 1.0
        regression = LogisticRegression(C=record["C"][str(size)], class_weight=weights,
                                        max_iter=2000)
        regression.fit((difference[train] - mean) / scale, labels[train])
        expected.append(regression.predict_proba((difference - mean) / scale))
    inputs = pairs[np.arange(24)]
    branch = np.asarray(seed_branch.predict_on_batch(inputs))
    np.testing.assert_allclose(model.predict_on_batch(inputs),
                               (branch + np.mean(expected, axis=0)) / 2, atol=2e-4)


def test_reused_features_are_those_of_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # cv's folds share films: inside reuse_features() a film is computed once per size,
    # known by its pixels (not its row), and gives exactly what computing it again gives.
    rng = np.random.default_rng(1)
    films = rng.random((6, 64, 64, 1), np.float32)
    features = _Features(64, "imagenet")
    fresh = features.compute(films, np.arange(6), 32)
    computed: list[int] = []
    original = _Features._compute

    def counting(self: _Features, images: np.ndarray, rows: np.ndarray, size: int
                 ) -> np.ndarray:
        computed.append(len(rows))
        return original(self, images, rows, size)

    monkeypatch.setattr(_Features, "_compute", counting)
    with reuse_features():
        first = features.compute(films, np.array([0, 1, 2]), 32)
        shuffled = films[[5, 4, 3, 2, 1, 0]]  # the same films at other rows ("another fold")
        second = features.compute(shuffled, np.arange(6), 32)
        features.compute(films, np.array([0]), 64)  # another size: computed anew
    assert computed == [3, 3, 1]
    np.testing.assert_allclose(first, fresh[:3], atol=1e-5)
    np.testing.assert_allclose(second, fresh[[5, 4, 3, 2, 1, 0]], atol=1e-5)
    features.compute(films, np.array([0]), 32)  # outside the block: nothing kept
    assert computed == [3, 3, 1, 1]


@pytest.mark.slow
def test_seed_asymmetry_trains_predicts_and_explains_real_films(
        prepared_mias: Path, tmp_path: Path) -> None:
    from tumor_classifier.config import TrainConfig
    from tumor_classifier.evaluate import evaluate
    from tumor_classifier.export import export, load_onnx_classifier
    from tumor_classifier.imaging import read_image
    from tumor_classifier.predict import Classifier
    from tumor_classifier.train import train

    run = train(TrainConfig(model="seed_asymmetry", data_dir=str(prepared_mias),
                            out=str(tmp_path / "run"), image_size=128, epochs=1, workers=2))
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["other_breast"] is True
    assert config["training"]["learning_rate"] == 1e-3  # the seed branch: from scratch
    assert config["probe"]["sizes"] == [32, 64, 96, 128]
    assert config["probe"]["backbone"] == f"efficientnet_{BACKBONE}"
    assert set(config["probe"]["C"]) == {"32", "64", "96", "128"}

    classifier = Classifier.load(run)
    film, other = prepared_mias / "test/BEN/mdb019.png", prepared_mias / "test/NOR/mdb020.png"
    (prediction,) = classifier.predict([film], other_breasts=[other])
    assert prediction.error is None
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    heatmap = classifier.grad_cam(classifier.preprocess(read_image(film), read_image(other)),
                                  prediction.prediction)
    assert heatmap.shape == (128, 128) and 0.0 <= heatmap.min() <= heatmap.max() <= 1.0
    metrics = evaluate(run, prepared_mias / "test", tmp_path / "report")
    assert 0.0 <= metrics["macro_auc_ovr"] <= 1.0
    # ONNX: the custom layers, the shared frozen backbone and the box filters convert.
    onnx = load_onnx_classifier(export(run, tmp_path / "model.onnx", "onnx"))
    (exported,) = onnx.predict([film], other_breasts=[other])
    for name, value in prediction.probabilities.items():
        assert exported.probabilities[name] == pytest.approx(value, abs=1e-4)


def test_seed_asymmetry_refuses_films_without_their_other_breast(small_dataset: Path,
                                                                 tmp_path: Path) -> None:
    from tumor_classifier.config import TrainConfig
    from tumor_classifier.train import train

    with pytest.raises(ValueError, match="seed_asymmetry compares each film with the same "
                                         "woman's other breast"):
        train(TrainConfig(model="seed_asymmetry", data_dir=str(small_dataset),
                          out=str(tmp_path / "run"), image_size=128, epochs=1))
    with pytest.raises(ValueError, match="takes grey films: use --channels 1"):
        train(TrainConfig(model="seed_asymmetry", data_dir=str(small_dataset),
                          out=str(tmp_path / "run"), channels=3))
    with pytest.raises(ValueError, match="needs ImageNet weights"):
        train(TrainConfig(model="seed_asymmetry", data_dir=str(small_dataset),
                          out=str(tmp_path / "run"), weights="none"))
