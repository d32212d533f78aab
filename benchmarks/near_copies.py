"""How far copies of a film are from it, against how close two different films come.

    python benchmarks/near_copies.py PREPARED_MIAS [--image-size 128] [--every 8]
    python benchmarks/near_copies.py --timing 10000 [--image-size 256]

The measurement behind `near_copies.NEAR_COPY_DISTANCE`, the threshold with which `train`
and `evaluate` flag images that appear in two splits. Every film of a `prepare mini-mias`
folder (only read) is turned into its model input (breast crop, the given size) and its
thumbnail (`near_copies.thumbnails`); the distance is 1 - the correlation of two
thumbnails. Printed: the closest pairs of different films, then for every `--every`-th
film, how far each kind of copy (re-encoded, resized, 16-bit, RGB; made in memory) lies
from the film itself.
With `--timing N`: the cost of the check for N decoded images (random pixels in a cache
file), the thumbnails and all against all, medians of 3 runs.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_classifier.cache import CachedImages
from tumor_classifier.near_copies import NEAR_COPY_DISTANCE, find_near_copies, thumbnails
from tumor_classifier.preprocessing import load_model_input


def _copies(path: Path) -> dict[str, tuple[str, bytes]]:
    """Each kind of copy: (a file name with the right extension, its bytes)."""
    film = Image.open(path).convert("L")
    made: dict[str, tuple[str, bytes]] = {}

    def save(kind: str, image: Image.Image, fmt: str, **options: object) -> None:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        made[kind] = (f"copy.{fmt.lower()}", buffer.getvalue())

    for quality in (95, 75, 50):
        save(f"JPEG quality {quality}", film, "JPEG", quality=quality)
    for side in (512, 256):
        save(f"resized to {side}", film.resize((side, side), Image.Resampling.BILINEAR), "PNG")
    save("16-bit PNG", Image.fromarray(np.asarray(film).astype(np.uint16) * 257), "PNG")
    save("RGB PNG", film.convert("RGB"), "PNG")
    return made


def _median_seconds(step: Callable[[], object]) -> float:
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


def _timing(count: int, image_size: int) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "images.f32"
        with path.open("wb") as handle:
            for start in range(0, count, 500):
                rows = min(500, count - start)
                handle.write(rng.random((rows, image_size, image_size, 1), np.float32).tobytes())
        images = CachedImages(path, (count, image_size, image_size, 1), {})
        own = thumbnails(images, np.arange(count))
        print(f"{count} images at {image_size} px: thumbnails "
              f"{_median_seconds(lambda: thumbnails(images, np.arange(count))):.2f} s, all "
              f"against all {_median_seconds(lambda: find_near_copies(own, own)):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, nargs="?",
                        help="a folder written by prepare mini-mias")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--every", type=int, default=8, help="copy every N-th film")
    parser.add_argument("--timing", type=int, metavar="N",
                        help="time the check on N synthetic images instead")
    args = parser.parse_args()
    if args.timing:
        _timing(args.timing, args.image_size)
        return
    if args.prepared is None:
        parser.error("give PREPARED_MIAS, or --timing N")

    files = sorted(args.prepared.glob("*/*/*.png"))
    inputs = np.stack([load_model_input(path, args.image_size, 1, crop=True) for path in files])
    own = thumbnails(inputs, np.arange(len(files)))
    distance = 1 - own @ own.T / own.shape[1]
    np.fill_diagonal(distance, np.inf)
    print(f"{len(files)} films at {args.image_size} px; threshold {NEAR_COPY_DISTANCE}")
    print("closest different films:")
    for flat in np.argsort(distance, axis=None)[:10:2]:  # each pair appears twice
        first, second = np.unravel_index(flat, distance.shape)
        print(f"  {files[first].name} {files[second].name}  {distance[first, second]:.4f}")

    by_kind: dict[str, list[float]] = {}
    for row in range(0, len(files), args.every):
        for kind, (name, data) in _copies(files[row]).items():
            copy = load_model_input(io.BytesIO(data), args.image_size, 1, name=name, crop=True)
            thumbnail = thumbnails(copy[np.newaxis], [0])[0]
            by_kind.setdefault(kind, []).append(float(1 - thumbnail @ own[row] / own.shape[1]))
    print(f"copies of {len(range(0, len(files), args.every))} films: median, max distance")
    for kind, values in by_kind.items():
        print(f"  {kind:<16} {np.median(values):.4f}  {max(values):.4f}")


if __name__ == "__main__":
    main()
