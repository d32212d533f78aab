"""Mixed-precision benchmark: training images/s of a preset with `--precision float32`
against `--precision mixed`, measured in the same run on the same data.

    python benchmarks/precision.py [--models seed mammo_net] [--size 256] [--images 256]
                                   [--epochs 5] [--repeats 3]

Uses the project's own `fit.precision_policy` policy switch (float16 compute on GPUs,
bfloat16 elsewhere) on random images in memory, so only the model's arithmetic is timed.
Steady-state epoch time is the median over epochs 2..E; each configuration is fitted
`--repeats` times, alternating, and the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from pipeline import EpochTimer  # noqa: E402

from tumor_classifier.fit import precision_policy  # noqa: E402
from tumor_classifier.models import build_model  # noqa: E402


def epoch_seconds(model_name: str, precision: str, images: np.ndarray, labels: np.ndarray,
                  epochs: int) -> tuple[float, str]:
    with precision_policy(precision) as policy:
        keras.utils.set_random_seed(0)
        model = build_model(model_name, images.shape[1:], 3)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        timer = EpochTimer()
        model.fit(images, labels, batch_size=32, epochs=epochs, callbacks=[timer], verbose=0)
    return statistics.median(timer.times[1:]), policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["seed", "mammo_net"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.random((args.images, args.size, args.size, 1), np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, args.images)]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Keras {keras.__version__} ({keras.backend.backend()}), {args.images} images "
          f"{args.size}x{args.size}, batch 32, median of {args.repeats} runs")
    print("| model | float32 images/s | mixed images/s (policy) | mixed / float32 |")
    print("|---|---|---|---|")
    for name in args.models:
        runs: dict[str, list[float]] = {"float32": [], "mixed": []}
        policy = ""
        for _ in range(args.repeats):
            for precision in runs:
                seconds, used = epoch_seconds(name, precision, images, labels, args.epochs)
                runs[precision].append(seconds)
                policy = used if precision == "mixed" else policy
        plain = args.images / statistics.median(runs["float32"])
        mixed = args.images / statistics.median(runs["mixed"])
        print(f"| {name} | {plain:.0f} | {mixed:.0f} ({policy}) | {mixed / plain:.2f}x |")


if __name__ == "__main__":
    main()
