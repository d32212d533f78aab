"""Model presets: `build_model(name, input_shape, num_classes)`.

Only Keras layers and `keras.ops`, so every preset runs on the TensorFlow, JAX and PyTorch
backends. Inputs are float32 images in [0, 1] (see `imaging.preprocess`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers

# Keras' default 0.99 needs many hundreds of steps before the inference-time statistics
# settle; a small medical dataset gives tens of steps per epoch, and the validation loss
# that picks the checkpoint is computed with those statistics. 0.9 settles in ~50 steps.
BN_MOMENTUM = 0.9


def _seed(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The original student project's CNN, layer for layer (1,629,443 parameters at 128x128x1).

    Three conv/pool stages learn local texture at growing receptive fields; Flatten keeps
    where features are; Dropout(0.5) regularises the large dense layer; softmax gives class
    probabilities.
    """
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(16, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(128, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="seed",
    )


def _residual_block(x: keras.KerasTensor, filters: int, stride: int) -> keras.KerasTensor:
    shortcut = x
    y = layers.SeparableConv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    y = layers.Activation("relu")(y)
    y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM)(shortcut)
    return layers.Activation("relu")(layers.Add()([y, shortcut]))


def _resnet_small(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A small residual network of depthwise-separable convolutions for one-channel images.

    Augmentation (flips, small rotation and zoom, contrast) lives in the model and is active
    only during `fit`; global average pooling keeps it resolution-independent.
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.RandomFlip("horizontal_and_vertical")(inputs)
    x = layers.RandomRotation(0.05, fill_mode="constant")(x)
    x = layers.RandomZoom(0.1, fill_mode="constant")(x)
    x = layers.RandomContrast(0.2)(x)
    x = layers.Conv2D(32, 5, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    for filters in (32, 64, 128, 256):
        x = _residual_block(x, filters, stride=2)
        x = _residual_block(x, filters, stride=1)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="resnet_small")


def _mammo_net(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A residual depthwise-separable CNN for one-channel mammograms at 256-512 pixels.

    Meant for breast-cropped images in one orientation (`--crop-breast`), so augmentation
    flips only vertically (a horizontal flip would undo the orientation), with small
    rotations, zoom, translation and contrast changes, all active only in `fit`. A finding
    is small and local, so the head concatenates global max pooling (is there a suspicious
    spot anywhere?) with global average pooling (what is the tissue like overall?).
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.RandomFlip("vertical")(inputs)
    x = layers.RandomRotation(0.03, fill_mode="constant")(x)
    x = layers.RandomZoom(0.1, fill_mode="constant")(x)
    x = layers.RandomTranslation(0.05, 0.05, fill_mode="constant")(x)
    x = layers.RandomContrast(0.2)(x)
    x = layers.Conv2D(24, 5, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    for filters in (32, 64, 96, 128, 192):
        x = _residual_block(x, filters, stride=2)
        x = _residual_block(x, filters, stride=1)
    x = layers.Concatenate()([layers.GlobalMaxPooling2D()(x), layers.GlobalAveragePooling2D()(x)])
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="mammo_net")


def _efficientnet_b0(input_shape: tuple[int, int, int], num_classes: int,
                     weights: str | None = None) -> keras.Model:
    """EfficientNetB0 from `keras.applications`, ImageNet-pretrained when `weights` is
    "imagenet" (downloaded once by Keras) or a path to those weights (offline use).

    A one-channel mammogram is repeated to the three channels the backbone expects, and
    scaled from [0, 1] to the [0, 255] its built-in normalisation expects. Flip and
    contrast augmentation live in the model.
    """
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: file not found; pass the path of "
                                "EfficientNetB0 'notop' ImageNet weights (.h5).")
    inputs = keras.Input(shape=input_shape)
    x = layers.RandomFlip("vertical")(inputs)
    x = layers.RandomContrast(0.2)(x)
    if input_shape[-1] == 1:
        x = layers.Concatenate()([x, x, x])
    x = layers.Rescaling(255.0)(x)
    try:
        backbone = keras.applications.EfficientNetB0(
            include_top=False, weights=weights, input_shape=(*input_shape[:2], 3))
    except Exception as error:  # no network, a proxy, a corrupt download
        if weights != "imagenet":
            raise
        raise ValueError(
            "Could not download the ImageNet weights of EfficientNetB0 "
            f"({type(error).__name__}: {error}). On a machine with internet access, save "
            "them (keras.applications.EfficientNetB0(include_top=False).save_weights(...) "
            "or Keras' efficientnetb0_notop.h5) and pass --weights PATH, or pass "
            "--weights none to train from scratch."
        ) from None
    x = backbone(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="efficientnet_b0")


PRESETS: dict[str, Callable[..., keras.Model]] = {
    "seed": _seed,
    "resnet_small": _resnet_small,
    "mammo_net": _mammo_net,
    "efficientnet_b0": _efficientnet_b0,
}
# Presets that take pretrained weights (`--weights`).
PRETRAINED = {"efficientnet_b0"}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                weights: str | None = None) -> keras.Model:
    """Build a model preset.

    Args:
        name: one of `PRESETS`.
        input_shape: (height, width, channels).
        num_classes: number of output probabilities.
        weights: for pretrained presets: "imagenet", a weights file, or None (random).
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; choose one of {', '.join(PRESETS)}.")
    if name in PRETRAINED:
        return PRESETS[name](tuple(input_shape), num_classes, weights)
    if weights is not None:
        raise ValueError(f"--weights applies to {', '.join(sorted(PRETRAINED))}, not {name!r}.")
    return PRESETS[name](tuple(input_shape), num_classes)
