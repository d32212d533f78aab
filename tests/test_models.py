from __future__ import annotations

import numpy as np
import pytest

from tumor_classifier.models import PRESETS, build_model


def test_seed_preset_is_the_original_architecture() -> None:
    model = build_model("seed", (128, 128, 1), 3)
    assert model.count_params() == 1_629_443
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D",
                     "MaxPooling2D", "Flatten", "Dropout", "Dense", "Dense"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_outputs_probabilities(name: str) -> None:
    model = build_model(name, (64, 64, 1), 3)
    output = np.asarray(model(np.random.default_rng(0).random((2, 64, 64, 1), np.float32)))
    assert output.shape == (2, 3)
    np.testing.assert_allclose(output.sum(axis=1), 1.0, atol=1e-5)


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="Unknown model preset 'vgg'; choose one of seed"):
        build_model("vgg", (64, 64, 1), 3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_takes_a_training_step(name: str) -> None:
    import keras

    model = build_model(name, (64, 64, 1), 3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.random((4, 64, 64, 1), np.float32)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    before = [np.array(weight) for weight in model.trainable_weights]
    loss = float(model.train_on_batch(images, labels))
    assert np.isfinite(loss)
    assert any(not np.allclose(old, np.array(new))
               for old, new in zip(before, model.trainable_weights, strict=True))


def test_pretrained_weights_from_a_file_and_a_clear_error_offline(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    source = build_model("efficientnet_b0", (64, 64, 1), 3)
    backbone = source.get_layer("efficientnetb0")
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    backbone.save_weights(path)
    loaded = build_model("efficientnet_b0", (64, 64, 1), 3, weights=str(path))
    for old, new in zip(backbone.weights, loaded.get_layer("efficientnetb0").weights,
                        strict=True):
        np.testing.assert_array_equal(np.array(old), np.array(new))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.efficientnet.file_utils.get_file", offline)
    with pytest.raises(ValueError, match=r"Could not download the ImageNet weights .* "
                       r"pass --weights PATH"):
        build_model("efficientnet_b0", (64, 64, 1), 3, weights="imagenet")
    with pytest.raises(FileNotFoundError, match=r"--weights missing.h5: file not found"):
        build_model("efficientnet_b0", (64, 64, 1), 3, weights="missing.h5")
    with pytest.raises(ValueError, match=r"--weights applies to efficientnet_b0, not 'seed'"):
        build_model("seed", (64, 64, 1), 3, weights=str(path))
