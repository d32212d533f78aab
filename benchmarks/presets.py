"""How fast each preset trains and predicts on this machine, at the input `train` gives it
by default, so that a user can tell how long the default command will take on their data.

    python benchmarks/presets.py [--models seed efficientnet_lite0 ...] [--images 128]
                                 [--epochs 4] [--repeats 3] [--image-size N]

Random images in memory, batch 32, float32, Adam and cross-entropy as `train` compiles
them: only the model's arithmetic is timed (the decoded-image cache feeds `fit` at the
in-memory rate: README, "Speed and memory"). Training images/s is from the median epoch
time over epochs 2..E, prediction images/s from the median of 10 batches of 32
(`predict_on_batch`, as `Classifier.predict` runs); each is the median of `--repeats`
fresh models. `seed` is measured twice: with the other breast as a second channel (what
`--model auto` trains where every film's other breast is named) and on one film (the
original recipe). `efficientnet_lite0` loads its ImageNet weights (installed with the
package) with BatchNorm frozen, as `--model auto` fine-tunes it elsewhere;
`efficientnet_b0` is built with random weights (Keras cannot download ImageNet weights
here), which costs the same arithmetic. `seed_asymmetry` trains in two phases: its row's
training rate is its seed branch's, its prediction rate the assembled model's (batches of
8, as `Classifier.predict_batch` takes its 512x512x2 inputs; 3 batches), and its minutes per
1,000 images add one pass of the frozen probe over each film (`asymmetry._Features`, all
four sizes, the rate printed below the table). `--image-size N` measures every row at N pixels
instead of its preset's default (for example `--models efficientnet_lite0 --image-size 128`,
the fast option the README measures in "Which input size for efficientnet_lite0").
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from pipeline import EpochTimer  # noqa: E402

from tumor_classifier.config import default_image_size  # noqa: E402
from tumor_classifier.models import PRESETS, PRETRAINED, build_model  # noqa: E402
from tumor_classifier.options import default_rate_and_epochs  # noqa: E402

# (preset, channels, what it is)
DEFAULT_ROWS = [
    ("seed_asymmetry", 2, "`--model auto` where the other breast is named: `seed` on the "
     "film and the other film, with the frozen ImageNet probe on their difference"),
    ("seed", 2, "the same network alone (the default until 2026-12-07)"),
    ("efficientnet_lite0", 1, "`--model auto` otherwise: ImageNet weights, BatchNorm frozen"),
    ("seed", 1, "the original recipe: one film"),
    ("seed_augmented", 2, "with the other breast"),
    ("resnet_small", 2, "with the other breast"),
    ("mammo_net", 2, "with the other breast"),
    ("mammo_mil", 2, "with the other breast, no patch stage"),
    ("efficientnet_b0", 1, "random weights (same cost as ImageNet's)"),
]


def measure(name: str, channels: int, size: int, images: int,
            epochs: int) -> tuple[float, float, int]:
    """(training images/s, prediction images/s, parameters) of one fresh model."""
    rng = np.random.default_rng(0)
    x = rng.random((images, size, size, channels), np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, images)]
    keras.utils.set_random_seed(0)
    weights = "imagenet" if name == "efficientnet_lite0" else None
    model = build_model(name, (size, size, channels), 3, weights=weights)
    model.compile(optimizer=keras.optimizers.Adam(default_rate_and_epochs(weights is not None)[0]),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(x, y, batch_size=32, epochs=epochs, callbacks=[timer], verbose=0)
    batch, batches = x[:32], 10
    if name == "seed_asymmetry":
        model, batch, batches = _assembled(model, x, size), x[:8], 3
    model.predict_on_batch(batch)  # build the inference function
    seconds = []
    for _ in range(batches):
        started = time.perf_counter()
        model.predict_on_batch(batch)
        seconds.append(time.perf_counter() - started)
    return (images / statistics.median(timer.times[1:]), len(batch) / statistics.median(seconds),
            model.count_params())


PROBE_RATES: list[float] = []  # seed_asymmetry: films/s of one pass of the frozen probe


def _assembled(seed_branch: keras.Model, x: np.ndarray, size: int) -> keras.Model:
    """seed_asymmetry as `train` assembles it (zero heads: the same arithmetic), after
    timing the probe's one pass over every film at all four sizes."""
    from tumor_classifier.asymmetry import FEATURES, _Features, assemble, probe_sizes

    features = _Features(size, "imagenet")
    rows = np.arange(len(x))
    started = time.perf_counter()
    for probe_size in probe_sizes(size):
        features.compute(x[..., :1], rows, probe_size)
    PROBE_RATES.append(len(x) / (time.perf_counter() - started))
    heads = {probe_size: (np.zeros((FEATURES, 3), np.float32), np.zeros(3, np.float32))
             for probe_size in probe_sizes(size)}
    return assemble(seed_branch, features, heads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(PRESETS),
                        help="presets to measure (default: every row of the table)")
    parser.add_argument("--images", type=int, default=128, help="images per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int,
                        help="input side for every row (default: each preset's own)")
    args = parser.parse_args()
    rows = [row for row in DEFAULT_ROWS if not args.models or row[0] in args.models]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Keras {keras.__version__} ({keras.backend.backend()}), {args.images} random "
          f"images per epoch, batch 32, float32, median of {args.repeats} models")
    print("| preset | input | parameters | train images/s | predict images/s | default "
          "epochs | training minutes per 1,000 images |")
    print("|---|---|---|---|---|---|---|")
    for name, channels, what in rows:
        size = args.image_size or default_image_size(name)
        runs = [measure(name, channels, size, args.images, args.epochs)
                for _ in range(args.repeats)]
        train_rate = statistics.median(run[0] for run in runs)
        predict_rate = statistics.median(run[1] for run in runs)
        # `train`'s default: efficientnet_b0 too is fine-tuned from ImageNet by default
        epochs = default_rate_and_epochs(name in PRETRAINED)[1]
        minutes = 1000 * epochs / train_rate / 60
        if name == "seed_asymmetry":
            minutes += 1000 / statistics.median(PROBE_RATES) / 60
        print(f"| `{name}`: {what} | {size}×{size}×{channels} | {runs[0][2]:,} | "
              f"{train_rate:.0f} | {predict_rate:.0f} | {epochs} | {minutes:.1f} |",
              flush=True)
    if PROBE_RATES:
        print(f"seed_asymmetry's probe: {statistics.median(PROBE_RATES):.1f} films/s (one "
              "pass, all four sizes, median of the models)")


if __name__ == "__main__":
    main()
