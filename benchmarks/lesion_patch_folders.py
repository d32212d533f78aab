"""A region-of-interest data set made from mini-MIAS, to test defaults on data of another kind.

    python benchmarks/lesion_patch_folders.py PREPARED_MIAS DEST [--seed 0]
    tumor-classifier prepare folders DEST DEST-split --patient-pattern '^mias\\d+'
    tumor-classifier cv DEST-split --folds 5 --seed 0 --out cv-patches [--image-size 256]

Many public breast-imaging sets ship regions of interest in class folders, not whole films.
This script writes one such set from a `prepare mini-mias` folder (only read): one square
patch per lesion circle of `annotations.csv`, 2.5 radii wide (128 to 512 film pixels),
labelled with its film's class (BEN or CAN), and one patch per normal film (NOR), centred on
a random point of its tissue, with a side drawn from the lesion patches' sides so that size
does not give the class away. Files are `DEST/CLASS/<patient>_<film>[_<n>].png`, so `prepare
folders --patient-pattern` splits them by woman. The README's "Which input size" table was
measured this way (seeds 0 to 4).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def _square(film: np.ndarray, x: int, y: int, side: int) -> np.ndarray:
    """The `side`-pixel square centred on (x, y), moved inside the film where it overhangs."""
    height, width = film.shape
    half = side // 2
    x, y = int(np.clip(x, half, width - half)), int(np.clip(y, half, height - half))
    return film[y - half : y + half, x - half : x + half]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="a folder written by prepare mini-mias")
    parser.add_argument("dest", type=Path, help="a new folder for DEST/{BEN,CAN,NOR}/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dest.exists():
        raise SystemExit(f"{args.dest}: exists; choose a new folder.")
    with (args.prepared / "split.csv").open(encoding="utf-8") as handle:
        films = {row["file"]: row for row in csv.DictReader(handle)}
    with (args.prepared / "annotations.csv").open(encoding="utf-8") as handle:
        circles = list(csv.DictReader(handle))
    rng = np.random.default_rng(args.seed)

    def save(patch: np.ndarray, row: dict[str, str], suffix: str = "") -> None:
        name = f"{row['patient_id']}_{Path(row['file']).stem}{suffix}.png"
        out = args.dest / row["label"] / name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(patch).save(out)

    sides = []
    for index, circle in enumerate(circles):
        row = films[circle["file"]]
        side = int(np.clip(2.5 * float(circle["radius"]), 128, 512))
        sides.append(side)
        film = np.array(Image.open(args.prepared / circle["file"]))
        save(_square(film, int(circle["x"]), int(circle["y"]), side), row, f"_{index}")
    for row in films.values():
        if row["label"] != "NOR":
            continue
        film = np.array(Image.open(args.prepared / row["file"]))
        side = int(rng.choice(sides))
        half = side // 2
        # Tissue: where the film, averaged over half a patch, is at least half its brightest.
        smooth = ndimage.uniform_filter(film.astype(np.float64), half)
        tissue = smooth > 0.5 * smooth.max()
        tissue[:half] = tissue[-half:] = False
        tissue[:, :half] = tissue[:, -half:] = False
        ys, xs = np.nonzero(tissue)
        pick = rng.integers(len(ys))
        save(_square(film, xs[pick], ys[pick], side), row)
    for name in ("BEN", "CAN", "NOR"):
        print(name, len(list((args.dest / name).glob("*.png"))))


if __name__ == "__main__":
    main()
