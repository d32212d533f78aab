"""Does the other breast help? One film alone against the film with its contralateral film.

    python benchmarks/other_breast.py DATA_DIR [--seeds 0,1,2,3,4] [--image-size 256]
                                               [--train-share 1.0] [--keep last]

DATA_DIR is a prepared dataset whose `split.csv` names two films per patient (`prepare
mini-mias` writes one: the left and right MLO films of each woman). Every film is read once
(`preprocessing.load_model_input`, breast crop, each breast flipped chest wall left, so the two
breasts of a woman lie the same way round). Two arms, trained and tested on the same folds:

- own film: the `seed` network on the film alone (one channel), as `train` does;
- with the other breast: the same network on two channels, the film and the woman's other
  film; the label is still the first film's. A radiologist compares the two breasts:
  asymmetry is a sign in itself, and a woman's normal breast shows her normal tissue.

5-fold cross-validation by woman (`StratifiedGroupKFold`, the fold seed is the run seed),
10 epochs, batch 32, Adam 1e-3, inverse-frequency class weights, the last epoch kept (no
validation split: both arms are treated alike; `--train-share 0.75` trains on three
quarters of each fold's training women, as many as `cv` trains on beside its validation
split). `--keep best` holds out a quarter of each fold's training women as a validation
split and keeps the epoch with the lowest validation loss, as `train` does. Prints, per
seed and arm, the mean over folds of macro one-vs-rest AUC, CAN-vs-rest AUC and
abnormal-vs-normal AUC, and at the end the mean ± sd over seeds of the paired differences.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from tumor_classifier.models import build_model
from tumor_classifier.preprocessing import load_model_input

CLASSES = ("BEN", "CAN", "NOR")
METRICS = ("macro AUC", "CAN vs rest AUC", "abnormal vs normal AUC")


def scores(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float, float]:
    return (roc_auc_score(labels, probabilities, multi_class="ovr"),
            roc_auc_score(labels == CLASSES.index("CAN"), probabilities[:, 1]),
            roc_auc_score(labels != CLASSES.index("NOR"), 1 - probabilities[:, 2]))


class KeepBest(keras.callbacks.Callback):
    """Restore, at the end of `fit`, the weights of the epoch with the lowest val_loss."""

    def on_train_begin(self, logs=None):
        self.best, self.weights = np.inf, None

    def on_epoch_end(self, epoch, logs=None):
        if logs["val_loss"] < self.best:
            self.best, self.weights = logs["val_loss"], self.model.get_weights()

    def on_train_end(self, logs=None):
        self.model.set_weights(self.weights)


def cross_validate(inputs: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                   seed: int, train_share: float = 1.0, keep: str = "last") -> np.ndarray:
    """Mean over the 5 folds of `scores` on the held-out women."""
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(inputs, labels,
                                                                           groups)
    results = []
    for fold, (train, test) in enumerate(folds):
        if train_share < 1:  # the same women in both arms: drawn from the seed and fold
            women = np.unique(groups[train])
            kept = np.random.default_rng([seed, fold]).permutation(women)[
                : round(train_share * len(women))]
            train = train[np.isin(groups[train], kept)]
        validation, callbacks = None, []
        if keep == "best":  # `cv`'s inner split: a quarter of the training women
            inner = StratifiedGroupKFold(4, shuffle=True, random_state=seed)
            part, held = next(inner.split(train, labels[train], groups[train]))
            validation = (inputs[train[held]], labels[train[held]])
            train, callbacks = train[part], [KeepBest()]
        keras.utils.set_random_seed(seed * 10 + fold)
        model = build_model("seed", inputs.shape[1:], len(CLASSES))
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        counts = np.bincount(labels[train], minlength=len(CLASSES))
        weights = {c: len(train) / (len(CLASSES) * counts[c]) for c in range(len(CLASSES))}
        model.fit(inputs[train], labels[train], epochs=10, batch_size=32,
                  class_weight=weights, validation_data=validation, callbacks=callbacks,
                  verbose=0)
        results.append(scores(labels[test], model.predict(inputs[test], verbose=0)))
    return np.mean(results, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--train-share", type=float, default=1.0)
    parser.add_argument("--keep", choices=["last", "best"], default="last")
    args = parser.parse_args()
    with (args.data_dir / "split.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_patient: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_patient.setdefault(row["patient_id"], []).append(index)
    rows = [row for row in rows if len(by_patient[row["patient_id"]]) == 2]
    print(f"{len(rows)} films of {len(rows) // 2} patients with two films", flush=True)
    position = {row["file"]: index for index, row in enumerate(rows)}
    other = np.array([position[next(r["file"] for r in rows if r["patient_id"] ==
                                    row["patient_id"] and r["file"] != row["file"])]
                      for row in rows])
    films = np.stack([load_model_input(args.data_dir / row["file"], args.image_size, 1,
                                       crop=True) for row in rows])
    labels = np.array([CLASSES.index(row["label"]) for row in rows])
    groups = np.array([row["patient_id"] for row in rows])
    arms = {"own film": films, "with the other breast": np.concatenate([films, films[other]],
                                                                        axis=-1)}
    results = {name: [] for name in arms}
    for seed in map(int, args.seeds.split(",")):
        for name, inputs in arms.items():
            results[name].append(cross_validate(inputs, labels, groups, seed,
                                                args.train_share, args.keep))
            print(f"seed {seed}, {name}: " + ", ".join(
                f"{metric} {value:.3f}" for metric, value in zip(
                    METRICS, results[name][-1], strict=True)), flush=True)
    for name in arms:
        values = np.array(results[name])
        print(f"{name}: " + ", ".join(f"{metric} {m:.3f} ± {s:.3f}" for metric, m, s in zip(
            METRICS, values.mean(0), values.std(0, ddof=1), strict=True)))
    difference = np.array(results["with the other breast"]) - np.array(results["own film"])
    print("paired difference: " + ", ".join(f"{metric} {m:+.3f} ± {s:.3f}" for metric, m, s in
                                            zip(METRICS, difference.mean(0),
                                                difference.std(0, ddof=1), strict=True)))


if __name__ == "__main__":
    main()
