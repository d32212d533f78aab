"""Where the limit is: a lesion-patch classifier tested on women it never saw.

    python benchmarks/lesion_patches.py CV_DIR [--model mammo_net] [--epochs 15] [--scores CSV]

CV_DIR is a finished `tumor-classifier cv` run on a dataset with `annotations.csv` (lesion
circles; `prepare mini-mias` writes them). For each fold, a patch classifier is trained on
64-pixel patches of the fold's training and validation films (lesion patches labelled with
their film's class, random breast-tissue patches of normal films; `patches.sample_patches`,
256-pixel breast crop as the default model sees it) and tested on the fold's test women:

- lesion vs normal tissue: AUC of 1 - P(NOR) over held-out lesion and normal-tissue patches;
- malignant vs benign: AUC of P(CAN) / (P(BEN) + P(CAN)) over held-out lesion patches, where
  the lesion is handed to the model, so only its appearance is judged;
- abnormal vs normal film: the classifier slid over each held-out film (windows centred every
  16 pixels on breast tissue), the film scored by the mean abnormality log-odds of its three
  most suspicious windows; no whole-film training;
- the same, less the score of the woman's other breast (where `split.csv` names it): a
  lesion is in one breast, dense tissue that looks like one is usually in both.

Prints one line per fold and the mean ± sd over folds; `--scores` writes every held-out
film's two scores (file, fold, label, film score, less the other breast's) to a CSV.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from tumor_classifier.datasets import write_csv
from tumor_classifier.models import abnormality_log_odds, build_model
from tumor_classifier.other_breast import other_breasts
from tumor_classifier.patches import (
    TISSUE_LEVEL,
    load_annotations,
    pretrain_on_patches,
    sample_patches,
)
from tumor_classifier.preprocessing import load_model_input

CLASSES = ("BEN", "CAN", "NOR")
SIZE, PATCH, STRIDE, TOP = 256, 64, 16, 3


def film_score(model, path: Path) -> float:
    """Mean abnormality log-odds of the film's TOP most suspicious windows."""
    image = load_model_input(path, SIZE, 1, crop=True)
    padded = np.pad(image, ((PATCH // 2, PATCH // 2), (PATCH // 2, PATCH // 2), (0, 0)))
    centres = [(row, column) for row in range(0, SIZE, STRIDE)
               for column in range(0, SIZE, STRIDE) if image[row, column, 0] > TISSUE_LEVEL]
    windows = np.stack([padded[row : row + PATCH, column : column + PATCH]
                        for row, column in centres])
    # Log-probabilities are logits up to a constant, which the log-odds cancel.
    log_probabilities = np.log(model.predict(windows, batch_size=256, verbose=0) + 1e-7)
    log_odds = keras.ops.convert_to_numpy(
        abnormality_log_odds(log_probabilities, CLASSES.index("NOR")))
    return float(np.sort(log_odds)[::-1][:TOP].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--model", default="mammo_net")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--scores", type=Path, help="CSV of every held-out film's scores")
    args = parser.parse_args()
    normal = CLASSES.index("NOR")
    results, score_rows = [], []
    for fold_dir in sorted(args.cv_dir.glob("fold*")):
        data = fold_dir / "data"
        with (data / "split.csv").open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        circles = load_annotations(data)
        parts = {}
        for name, splits in (("train", ("train", "validation")), ("test", ("test",))):
            chosen = [row for row in rows if row["split"] in splits]
            parts[name] = ([data / row["file"] for row in chosen],
                           [CLASSES.index(row["label"]) for row in chosen])
        x_train, y_train = sample_patches(*parts["train"], CLASSES, circles, SIZE, 1, PATCH,
                                          seed=0, crop=True)
        x_test, y_test = sample_patches(*parts["test"], CLASSES, circles, SIZE, 1, PATCH,
                                        seed=1, crop=True)
        keras.utils.set_random_seed(0)  # the same initialisation and order in every run
        weights = pretrain_on_patches(args.model, x_train, y_train, len(CLASSES), args.epochs,
                                      32, 1e-3, normal)
        model = build_model(args.model, (PATCH, PATCH, 1), len(CLASSES))
        model.set_weights(weights)
        p = model.predict(x_test, verbose=0)
        lesion = y_test != normal
        benign_or_malignant = p[lesion, 1] / (p[lesion, 0] + p[lesion, 1] + 1e-9)
        films, labels = parts["test"]
        scores = {path: film_score(model, path) for path in films}
        held_out = {path.resolve(): path for path in films}  # other_breasts resolves
        asymmetry = {path: scores[path] - scores[held_out[other]] for path, other
                     in zip(films, other_breasts(films), strict=True) if other in held_out}
        abnormal = {path: label != normal for path, label in zip(films, labels, strict=True)}
        result = (roc_auc_score(lesion, 1 - p[:, normal]),
                  roc_auc_score(y_test[lesion] == CLASSES.index("CAN"), benign_or_malignant),
                  roc_auc_score(list(abnormal.values()), list(scores.values())),
                  roc_auc_score([abnormal[path] for path in asymmetry],
                                list(asymmetry.values())) if asymmetry else float("nan"))
        score_rows += [[path.relative_to(data).as_posix(), fold_dir.name, CLASSES[label],
                        f"{scores[path]:.4f}",
                        f"{asymmetry[path]:.4f}" if path in asymmetry else ""]
                       for path, label in zip(films, labels, strict=True)]
        results.append(result)
        print(f"{fold_dir.name}: {len(y_train)} training patches {np.bincount(y_train).tolist()}"
              f", {len(y_test)} held-out; lesion vs normal tissue {result[0]:.3f}, malignant "
              f"vs benign lesion {result[1]:.3f}, abnormal vs normal film {result[2]:.3f}, "
              f"less its other breast {result[3]:.3f} ({len(asymmetry)} films)", flush=True)
    if args.scores:
        write_csv(args.scores, ["file", "fold", "label", "film_score", "less_other_breast"],
                  score_rows)
    mean, sd = np.mean(results, axis=0), np.std(results, axis=0, ddof=1)
    print(f"{args.model}, {args.epochs} patch epochs, {len(results)} folds of {args.cv_dir}: "
          + ", ".join(f"{name} {m:.3f} ± {s:.3f}" for name, m, s in zip(
              ("lesion vs normal tissue", "malignant vs benign lesion",
               "abnormal vs normal film", "less its other breast"), mean, sd, strict=True)))


if __name__ == "__main__":
    main()
