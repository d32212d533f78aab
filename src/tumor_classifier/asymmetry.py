"""The `seed_asymmetry` preset: the `seed` network beside a linear probe on frozen ImageNet
features of the difference between a woman's two breasts, their probabilities averaged.

Why (README, "Frozen ImageNet features, and the difference between the breasts"): on
mini-MIAS the frozen features of `efficientnet_lite0` rank one film at chance, but their
signed difference from the other breast's carries some of the finding; a logistic
regression on that difference at four sizes, averaged with the `seed` network, raised every
AUC at all ten CV seeds measured. What it adds as built is measured in the README.

`train` builds it in two phases. The seed branch (`models._seed_asymmetry`: `seed` on the
pair, pooled to a quarter of the input side) trains as `seed` does. Then `fit_probe` passes
every training and validation film once through the frozen backbone at each of four sizes
(a quarter, half, three quarters and all of the input side; the mean of the film and its
top-bottom flip, pooled), and fits one class-weighted logistic regression per size on the
training films' differences from their other breasts, with C chosen by log-loss on the
validation films (which stay held out for the calibration after it). `assemble` joins
both into one Keras model: predict, evaluate, the app and the exports take it as they take
any other. Fitting the regressions with scikit-learn rather than Keras' optimisers is a
choice: the problem is convex and small (320 numbers, hundreds of films), lbfgs solves
it exactly in a second, and its weights become a Keras `Dense` layer with the
standardisation folded in. A Keras `Dense` trained by Adam on the same features came within
0.02 of its probabilities in 9 folds of 10, but 0.1 off in one (README).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers

from .efficientnet_lite import (
    VARIANTS,
    efficientnet_lite,
    imagenet_weights_path,
    load_imagenet_weights,
)
from .models import ASYMMETRY_SEED_SCALE, Channels, FlipTopBottom

logger = logging.getLogger(__name__)

# C of the logistic regressions tried (inverse L2 strength on standardised features):
# the benchmark's grid (benchmarks/frozen_features.py).
STRENGTHS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
# The film's features are computed this many at a time.
BATCH = 16
# The frozen backbone (`efficientnet_lite.VARIANTS`). Lite1's last block was tried in its
# place: by the benchmark the ensemble's macro AUC rose (+0.011 and +0.017 at seeds 0-4 and
# 5-9), but as built only at 3 of 5 seeds (+0.007) and CAN vs rest fell (-0.009), its
# feature pass 1.3-1.4 times as slow; only abnormal vs normal rose at every seed (+0.032).
# Not adopted (README, "A larger frozen backbone"); nor Lite0's and Lite1's probes
# averaged: as built macro +0.006, CAN -0.003, abnormal +0.020, at twice the cv time
# (README, "Two frozen backbones averaged").
BACKBONE = "lite0"
# Numbers in one film's features: the channels of the backbone's last block (320).
FEATURES = VARIANTS[BACKBONE][-1][3]
# Inside `reuse_features()`: (weights, pixels' digest, size) -> the film's features.
_reused: dict[tuple[str, bytes, int], np.ndarray] | None = None


@contextlib.contextmanager
def reuse_features() -> Iterator[None]:
    """Within this block each film's probe features are computed once per size and reused.

    `cv` trains one `seed_asymmetry` per fold, and each film is in four folds' training or
    validation films: without this its features were computed four times. Films are known
    by a digest of their decoded pixels, so a reused feature is that of the same input,
    whatever the fold calls the file. The block holds 5 KB a film and size (about 20 MB for
    1,000 films) and lets it go at its end; `train` alone computes each film once anyway.
    """
    global _reused
    outer, _reused = _reused, {}
    try:
        yield
    finally:
        _reused = outer


def probe_sizes(side: int) -> tuple[int, ...]:
    """The sides the probe sees the pair at: 1/4, 1/2, 3/4 and all of the input side (128,
    256, 384 and 512 for the default 512: the four sizes measured, averaged, none chosen)."""
    return tuple(side * k // ASYMMETRY_SEED_SCALE for k in range(1, ASYMMETRY_SEED_SCALE + 1))


class _Features:
    """The frozen feature extractor's layers, shared by every size and both breasts: a
    grey (side, side, 1) tensor -> (FEATURES,) features at one size."""

    def __init__(self, side: int, weights: str) -> None:
        self.side, self.weights = side, weights
        network = efficientnet_lite((None, None, 3), BACKBONE)
        load_imagenet_weights(network, imagenet_weights_path(BACKBONE)
                              if weights == "imagenet" else weights, BACKBONE)
        # The last block's 320 channels, before the 1x1 expansion to 1,280 (`head_conv`):
        # averaged with the seed network, a probe on their difference scored a higher
        # macro AUC than one on the 1,280 head features' at each of ten CV seeds (+0.014
        # and +0.013 at seeds 0-4 and 5-9), and higher CAN and abnormal AUCs on average.
        # As built the two are within the noise (+0.012 at seeds 0-4, +0.001 at 5-9); this
        # one is the smaller and faster (README, "Which features of the backbone").
        self.backbone = keras.Model(network.input, network.get_layer("head_conv").input,
                                    name="imagenet_backbone")
        self.backbone.trainable = False
        self.to_rgb = layers.Concatenate(name="grey_to_rgb")
        self.flip = FlipTopBottom(name="flip_top_bottom")
        self.pool = layers.GlobalAveragePooling2D(name="imagenet_pool")
        self.mean = layers.Average(name="mean_with_flip")
        self.resize: dict[int, layers.Layer] = {}
        self.models: dict[int, keras.Model] = {}  # for `compute`: one per size, traced once
        for size in probe_sizes(side):
            if size == side:
                continue
            # Box filters where the factor is whole (exact, and plain in ONNX); bilinear
            # for 3/4, a mild enough reduction not to alias.
            self.resize[size] = (
                layers.AveragePooling2D(side // size, name=f"to_{size}") if side % size == 0
                else layers.Resizing(size, size, interpolation="bilinear", name=f"to_{size}"))

    def __call__(self, grey: keras.KerasTensor, size: int) -> keras.KerasTensor:
        x = self.resize[size](grey) if size in self.resize else grey
        x = self.to_rgb([x, x, x])
        return self.mean([self.pool(self.backbone(x)), self.pool(self.backbone(self.flip(x)))])

    def compute(self, images: Any, rows: np.ndarray, size: int) -> np.ndarray:
        """(len(rows), FEATURES) features of `images[rows]` (grey, side x side) at `size`;
        inside `reuse_features()`, only those of films not seen before are computed."""
        if _reused is None:
            return self._compute(images, rows, size)
        keys = [(self.weights, hashlib.blake2b(np.asarray(images[row], np.float32).tobytes(),
                                               digest_size=16).digest(), size) for row in rows]
        new = [index for index, key in enumerate(keys) if key not in _reused]
        for index, features in zip(new, self._compute(images, rows[new], size), strict=True):
            _reused[keys[index]] = features
        return np.stack([_reused[key] for key in keys]) if keys else np.zeros((0, FEATURES))

    def _compute(self, images: Any, rows: np.ndarray, size: int) -> np.ndarray:
        if size not in self.models:
            inputs = keras.Input(shape=(self.side, self.side, 1))
            self.models[size] = keras.Model(inputs, self(inputs, size))
        model = self.models[size]
        return np.concatenate([
            np.asarray(model.predict_on_batch(
                np.ascontiguousarray(images[rows[start : start + BATCH]], np.float32)))
            for start in range(0, len(rows), BATCH)]) if len(rows) else np.zeros((0, FEATURES))


def _differences(features: _Features, pairs: Any, rows: np.ndarray, size: int) -> np.ndarray:
    """Each row's features less its other breast's (`pairs`: `WithOtherBreast`), every
    film of the split computed once."""
    films = np.union1d(rows, pairs.others[rows])
    computed = features.compute(pairs.images, films, size)
    position = {film: index for index, film in enumerate(films)}
    return np.stack([computed[position[row]] - computed[position[pairs.others[row]]]
                     for row in rows])


def fit_probe(side: int, weights: str, x_train: Any, train_rows: np.ndarray,
              y_train: np.ndarray, x_val: Any, val_rows: np.ndarray, y_val: np.ndarray,
              num_classes: int, class_weight: dict[int, float] | None
              ) -> tuple[_Features, dict[int, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """The probe of `seed_asymmetry`, fitted: its feature layers, each size's `Dense`
    weights (kernel, bias: the standardisation folded in) and a record for config.json.

    `x_train` and `x_val` are `WithOtherBreast` pairs at `side`; the regression of each size
    is fitted on the training rows, its C the one with the lowest validation log-loss.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    features = _Features(side, weights)
    heads: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    record: dict[str, Any] = {"backbone": f"efficientnet_{BACKBONE}",
                              "sizes": list(probe_sizes(side)), "C": {},
                              "validation_log_loss": {}}
    for size in probe_sizes(side):
        train = _differences(features, x_train, train_rows, size)
        validation = _differences(features, x_val, val_rows, size)
        mean, scale = train.mean(axis=0), train.std(axis=0)
        scale[scale == 0] = 1.0  # a feature constant over the training films: left as is

        def fitted(strength: float, train: np.ndarray = train, mean: np.ndarray = mean,
                   scale: np.ndarray = scale) -> Any:
            return LogisticRegression(C=strength, class_weight=class_weight,
                                      max_iter=2000).fit((train - mean) / scale, y_train)

        losses = {strength: log_loss(y_val, fitted(strength).predict_proba(
            (validation - mean) / scale), labels=range(num_classes)) for strength in STRENGTHS}
        best = min(losses, key=losses.__getitem__)
        regression = fitted(best)
        if len(regression.classes_) != num_classes:
            raise ValueError(f"seed_asymmetry: the training films hold only "
                             f"{len(regression.classes_)} of the {num_classes} classes.")
        kernel = (regression.coef_ / scale).T
        bias = regression.intercept_ - regression.coef_ @ (mean / scale)
        heads[size] = (kernel.astype(np.float32), bias.astype(np.float32))
        record["C"][str(size)] = best
        record["validation_log_loss"][str(size)] = round(float(losses[best]), 4)
        logger.info("asymmetry probe at %d px: C %g, validation log-loss %.4f", size, best,
                    losses[best])
    return features, heads, record


def assemble(seed_branch: keras.Model, features: _Features,
             heads: dict[int, tuple[np.ndarray, np.ndarray]]) -> keras.Model:
    """One model: the mean of the seed branch's probabilities and the probe's (itself the
    mean over its sizes of a softmax on the film's features less the other breast's)."""
    inputs = keras.Input(shape=seed_branch.input_shape[1:])
    film = Channels(0, 1, name="film")(inputs)
    other = Channels(1, 2, name="other_breast")(inputs)
    outputs, dense = [], []
    for size, (kernel, bias) in heads.items():
        difference = layers.Subtract(name=f"difference_{size}")(
            [features(film, size), features(other, size)])
        head = layers.Dense(kernel.shape[1], activation="softmax", name=f"probe_{size}")
        outputs.append(head(difference))
        dense.append((head, kernel, bias))
    probe = layers.Average(name="probe")(outputs)
    model = keras.Model(inputs, layers.Average(name="ensemble")([seed_branch(inputs), probe]),
                        name="seed_asymmetry")
    for head, kernel, bias in dense:
        head.set_weights([kernel, bias])
    return model


def unpaired_message(films: Sequence[str]) -> str:
    """Why `seed_asymmetry` cannot train on films whose other breast is not named."""
    return (f"--model seed_asymmetry compares each film with the same woman's other breast, "
            f"but {len(films)} training or validation film(s) have none named (for example "
            f"{films[0]}); name it in split.csv's other_breast column (`prepare` writes it) "
            "or in LEFT/RIGHT file names (or mini-MIAS's mdb001 and mdb002), or choose "
            "another --model.")
