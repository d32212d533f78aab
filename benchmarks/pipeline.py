"""Input-pipeline benchmark: epoch time and images/s of three ways to feed the same model.

    python benchmarks/pipeline.py [--data data/mini-mias] [--epochs 5] [--fullfield 24]

(a) the original style, decoding every image every epoch:
    `keras.utils.image_dataset_from_directory` for PNG, and the project's reader in a plain
    Python generator for 16-bit PNG/DICOM (which Keras' loader cannot read at full depth);
(b) this project's pipeline: the decoded-image cache (first epoch includes building it) and
    the prefetching batch feed, as `train` uses them;
(c) the limit: the same model fitted on in-memory arrays.

Steady-state figures are medians over epochs 2..E; ratios are measured in the same run.
Also reports single-image `predict` latency after start-up.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from synthetic import synthetic_mammogram, write_png16, write_rle_dicom  # noqa: E402

from tumor_classifier.cache import cache_images  # noqa: E402
from tumor_classifier.data import Batches, as_dataset, scan_folder  # noqa: E402
from tumor_classifier.models import build_model  # noqa: E402
from tumor_classifier.preprocessing import load_model_input  # noqa: E402

BATCH = 32


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):  # type: ignore[no-untyped-def]
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
        self.times.append(time.perf_counter() - self.started)


def _model(size: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model("seed", (size, size, 1), 3)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _fit(data: object, epochs: int, size: int, steps: int | None = None,
         labels: np.ndarray | None = None, **options: object) -> list[float]:
    timer = EpochTimer()
    options.setdefault("shuffle", False)  # generators and datasets shuffle themselves
    _model(size).fit(data, labels, epochs=epochs, steps_per_epoch=steps, callbacks=[timer],
                     verbose=0, **options)
    return timer.times


def original_keras(folder: Path, size: int, epochs: int) -> list[float]:
    dataset = keras.utils.image_dataset_from_directory(
        folder, labels="inferred", label_mode="categorical", color_mode="grayscale",
        image_size=(size, size), batch_size=BATCH, shuffle=True, seed=0, verbose=False)
    dataset = dataset.map(lambda x, y: (x / 255.0, y))
    return _fit(dataset, epochs, size)


def original_generator(folder: Path, size: int, epochs: int) -> list[float]:
    scan = scan_folder(folder)
    labels = np.eye(3, dtype=np.float32)[list(scan.labels)]

    def generate():  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        while True:
            order = rng.permutation(len(scan.files))
            for start in range(0, len(order), BATCH):
                chosen = order[start : start + BATCH]
                yield (np.stack([load_model_input(scan.files[i], size, 1) for i in chosen]),
                       labels[chosen])

    return _fit(generate(), epochs, size, steps=math.ceil(len(scan.files) / BATCH))


def project(folder: Path, size: int, epochs: int, cache_dir: Path) -> list[float]:
    started = time.perf_counter()
    scan = scan_folder(folder)
    images = cache_images(folder, scan.files, size, 1, cache_dir, description="cache")
    build = time.perf_counter() - started
    rows = np.arange(len(scan.files))
    feed = as_dataset(Batches(images, rows, np.asarray(scan.labels), 3, BATCH, None, 0))
    times = _fit(feed, epochs, size)
    times[0] += build
    return times


def in_memory(folder: Path, size: int, epochs: int) -> list[float]:
    scan = scan_folder(folder)
    x = np.stack([load_model_input(path, size, 1) for path in scan.files])
    y = np.eye(3, dtype=np.float32)[list(scan.labels)]
    return _fit(x, epochs, size, labels=y, batch_size=BATCH, shuffle=True)


def report(name: str, count: int, results: dict[str, list[float]]) -> None:
    steady = {key: statistics.median(times[1:]) for key, times in results.items()}
    print(f"\n### {name} ({count} images per epoch)\n")
    print("| pipeline | first epoch (s) | steady epoch (s) | steady images/s |")
    print("|---|---|---|---|")
    for key, times in results.items():
        print(f"| {key} | {times[0]:.2f} | {steady[key]:.3f} | {count / steady[key]:.0f} |")
    ours = steady["(b) project: cache + prefetch"]
    for key in results:
        if key.startswith("(a)"):
            print(f"\nratio {key.split(':')[0]} / (b): {steady[key] / ours:.1f}x")
    print(f"ratio (b) / (c): {ours / steady['(c) in-memory arrays']:.2f}x")


def latency(data: Path, workdir: Path) -> None:
    from tumor_classifier.config import TrainConfig
    from tumor_classifier.predict import Classifier
    from tumor_classifier.train import train

    run = train(TrainConfig(model="seed", data_dir=str(data), out=str(workdir / "run"), epochs=1,
                            image_size=128, crop_breast=False,
                            cache_dir=str(workdir / "cache")))
    classifier = Classifier.load(run)
    film = next((data / "test" / "CAN").glob("*.png"))
    one = classifier.preprocess(__import__("tumor_classifier").read_image(film))[np.newaxis]
    for _ in range(3):
        classifier.predict([film])
        classifier.model.predict(one, verbose=0)
    timings: dict[str, list[float]] = {"predict (read + preprocess + forward)": [],
                                       "forward pass only (fast path)": [],
                                       "keras model.predict, one image": []}
    for _ in range(30):
        started = time.perf_counter()
        classifier.predict([film])
        timings["predict (read + preprocess + forward)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        classifier.predict_batch(one)
        timings["forward pass only (fast path)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        classifier.model.predict(one, verbose=0)
        timings["keras model.predict, one image"].append(time.perf_counter() - started)
    print("\n### Single-image latency, seed preset, a 1024x1024 mini-MIAS film (30 runs)\n")
    print("| path | median (ms) |")
    print("|---|---|")
    for key, values in timings.items():
        print(f"| {key} | {1000 * statistics.median(values):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/mini-mias"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--fullfield", type=int, default=24,
                        help="synthetic full-field images (half PNG, half RLE DICOM)")
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Keras {keras.__version__} "
          f"({keras.backend.backend()}), {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        if not (args.data / "train").is_dir():
            from tumor_classifier.datasets import prepare_mini_mias

            args.data = workdir / "mini-mias"
            prepare_mini_mias(Path(__file__).parents[2] / "shared/data/mini-mias", args.data)
        # Latency first: tf.data threads left by the epoch benchmarks below would share
        # the CPU with it.
        latency(args.data, workdir)
        train_dir = args.data / "train"
        count = len(scan_folder(train_dir).files)
        report("mini-MIAS train split, 128x128, seed preset", count, {
            "(a) original: image_dataset_from_directory": original_keras(
                train_dir, 128, args.epochs),
            "(b) project: cache + prefetch": project(
                train_dir, 128, args.epochs, workdir / "cache"),
            "(c) in-memory arrays": in_memory(train_dir, 128, args.epochs),
        })

        full = workdir / "fullfield"
        png_only = workdir / "fullfield_png"
        for index in range(args.fullfield):
            label = ("BEN", "CAN", "NOR")[index % 3]
            pixels = synthetic_mammogram(seed=index) * 16  # 12 bits scaled to use all 16
            for folder in (full, png_only):
                (folder / label).mkdir(parents=True, exist_ok=True)
            if index % 2:
                write_rle_dicom(full / label / f"film{index:03d}.dcm", pixels // 16)
                write_png16(png_only / label / f"film{index:03d}.png", pixels)
            else:
                write_png16(full / label / f"film{index:03d}.png", pixels)
                os.link(full / label / f"film{index:03d}.png",
                        png_only / label / f"film{index:03d}.png")
        epochs = max(3, args.epochs - 2)
        report("synthetic full-field 4500x3000 16-bit mammograms, 256x256, seed preset "
               "(PNG + RLE DICOM)", args.fullfield, {
            "(a) original: image_dataset_from_directory (PNG, 8-bit)": original_keras(
                png_only, 256, epochs),
            "(a) original: reader in a plain generator (PNG + DICOM)": original_generator(
                full, 256, epochs),
            "(b) project: cache + prefetch": project(full, 256, epochs, workdir / "cache"),
            "(c) in-memory arrays": in_memory(full, 256, epochs),
        })


if __name__ == "__main__":
    main()
