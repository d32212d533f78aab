"""Grad-CAM (Selvaraju et al., 2017): where the model looked for a class.

The heat map is the ReLU of the target convolution's feature maps weighted by the spatially
averaged gradient of the class score. The target is the last layer with a 4-D output
(found automatically) or the layer named `gradcam_layer` in the run's config.json. Gradients
come from the active backend (TensorFlow, JAX or PyTorch).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data import list_images
from .patches import load_annotations
from .preprocessing import find_breast, to_grey


def find_target_layer(model: Any, name: str | None = None) -> Any:
    """The layer Grad-CAM explains: `name`, or the last layer with a 4-D output."""
    if name:
        try:
            return model.get_layer(name)
        except ValueError:
            names = [layer.name for layer in model.layers]
            raise ValueError(
                f"Grad-CAM layer {name!r} not in the model; layers are {', '.join(names)}."
            ) from None
    for layer in reversed(model.layers):
        # Pooling only subsamples the last convolution: explain the convolution itself,
        # at its higher resolution. A Dense layer on a 4-D map (mammo_mil's per-window
        # classifier) and Dropout are the head, not features.
        shape = layer._inbound_nodes[-1].output_tensors[0].shape
        kind = type(layer).__name__
        if "Pooling" not in kind and kind not in ("Dense", "Dropout") and len(shape) == 4:
            return layer
    raise ValueError("The model has no layer with a 4-D (image-like) output for Grad-CAM.")


def _split(model: Any, target: Any) -> tuple[Any, Any]:
    """The model cut in two at `target`: input -> features, and features -> class scores,
    sharing the model's layers and weights."""
    import keras

    if isinstance(model, keras.Sequential):
        # A Sequential model (as loaded from .keras) is a chain: re-chain its layers.
        layers = list(model.layers)
        position = layers.index(target)
        inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]))
        features = inputs
        for layer in layers[: position + 1]:
            features = layer(features)
        head = keras.Sequential([keras.Input(shape=tuple(features.shape[1:])),
                                 *layers[position + 1 :]])
        return keras.Model(inputs, features), head
    # A functional model: Keras builds both halves from its own graph, whatever the
    # topology after the target (residual joins, several poolings). The target's last call
    # is the one in this graph (a nested backbone's first node is its own inner graph).
    output = target._inbound_nodes[-1].output_tensors[0]
    return keras.Model(model.inputs[0], output), keras.Model(output, model.outputs[0])


def _gradient(head: Any, features: np.ndarray, class_index: int) -> np.ndarray:
    """d score[class_index] / d features, through the head model, on the active backend."""
    import keras

    def score(values: Any) -> Any:
        return head(values, training=False)[0, class_index]

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensor = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            value = score(tensor)
        return np.asarray(tape.gradient(value, tensor))
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(score)(features))
    if backend == "torch":
        import torch

        tensor = torch.tensor(features, requires_grad=True)
        score(tensor).backward()
        return tensor.grad.detach().cpu().numpy()
    raise ValueError(f"Grad-CAM does not support the {backend!r} backend.")


def grad_cam(model: Any, model_input: np.ndarray, class_index: int,
             layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heat map of one preprocessed image for one class.

    Args:
        model: a Keras model (any preset).
        model_input: (size, size, channels) float32, as `preprocessing.preprocess` makes it.
        class_index: the output to explain (usually the predicted class).
        layer_name: the layer to explain; default: the last one with a 4-D output.

    Returns:
        (size, size) float32 in [0, 1]; all zeros where no feature supports the class.
    """
    import keras

    target = find_target_layer(model, layer_name)
    feature_model, head = _split(model, target)
    features = np.asarray(
        keras.ops.convert_to_numpy(feature_model(model_input[np.newaxis], training=False)),
        np.float32,
    )
    gradients = _gradient(head, features, class_index)
    weights = gradients[0].mean(axis=(0, 1))
    cam = np.maximum(np.tensordot(features[0], weights, axes=([2], [0])), 0.0)
    height, width = model_input.shape[:2]
    cam = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR))
    peak = float(cam.max())
    return (cam / peak).astype(np.float32) if peak > 0 else np.zeros_like(cam, np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4,
            colormap: str = "jet") -> np.ndarray:
    """The grey image (2-D or RGB, [0, 1]) with the heat map blended on top, as uint8 RGB
    at the image's resolution."""
    import matplotlib

    grey = to_grey(image)
    height, width = grey.shape
    resized = np.asarray(Image.fromarray(heatmap.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR))
    colours: Callable[[np.ndarray], np.ndarray] = matplotlib.colormaps[colormap]
    heat = colours(np.clip(resized, 0, 1))[..., :3]
    base = np.repeat(np.clip(grey, 0, 1)[..., np.newaxis], 3, axis=2)
    # Blend only where the map is warm (above a fifth of its peak), more where hotter, so
    # the rest of the film stays as it was read.
    alpha = opacity * np.clip((resized - 0.2) / 0.8, 0, 1)[..., np.newaxis]
    return np.round((base * (1 - alpha) + heat * alpha) * 255).astype(np.uint8)


def peak_location(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, column) of the heat map's maximum."""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(column)


def lesion_hit_rate(classifier: Any, data_dir: Path, split: str = "test") -> dict[str, Any]:
    """How often the Grad-CAM peak falls inside a marked lesion circle.

    Uses `annotations.csv` written by `prepare mini-mias` (centre and radius in pixels of
    the original film). For each annotated film of `split`, the heat map of the predicted
    class is computed at the model's input size, its peak is mapped back to film
    coordinates, and a hit is a peak inside any of the film's circles. `chance` is the mean
    share of the film covered by its circles: the hit rate of a peak placed at random.
    """
    # load_annotations keys files by their resolved path; resolve the split's files too,
    # so that a dataset of links (cv's folds, `prepare folders`) finds its own films.
    in_split = {path.resolve() for path in list_images(Path(data_dir) / split)[0]}
    hits, chance = [], []
    for path, marks in sorted(load_annotations(data_dir).items()):
        if path not in in_split:
            continue
        image, model_input = classifier.read(path)
        probabilities = classifier.predict_batch(model_input[np.newaxis])[0]
        heatmap = classifier.grad_cam(model_input,
                                      classifier.class_names[int(np.argmax(probabilities))])
        row, column = peak_location(heatmap)
        height, width = image.shape[:2]
        # the box the model's preprocessing found (on the same grey plane)
        box = find_breast(to_grey(image)) if classifier.crop_breast else None
        if box is not None:  # the model saw the cropped, flipped, padded breast
            y, x = box.to_film(row + 0.5, column + 0.5, heatmap.shape[0])
        else:
            y = (row + 0.5) * height / heatmap.shape[0]
            x = (column + 0.5) * width / heatmap.shape[1]
        hits.append(any((x - cx) ** 2 + (y - cy) ** 2 <= r**2 for cx, cy, r in marks))
        rows, columns = np.mgrid[0:height:4, 0:width:4]
        inside = np.zeros(rows.shape, bool)
        for cx, cy, r in marks:
            inside |= (columns - cx) ** 2 + (rows - cy) ** 2 <= r**2
        chance.append(float(inside.mean()))
    return {"films": len(hits), "hit_rate": float(np.mean(hits)) if hits else None,
            "chance": float(np.mean(chance)) if chance else None}
