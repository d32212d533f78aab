"""Peak memory of `train` against dataset size: it must stay flat, because batches are read
from the on-disk cache instead of holding the dataset in memory.

    python benchmarks/memory.py [--sizes 10000 40000] [--image-size 64]

Writes synthetic 16-bit PNGs (each image different), then for each size runs
`tumor-classifier train` for one epoch in a fresh process (cold cache) and reports that
process's peak resident set size (ru_maxrss) next to the size of the decoded data.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_dataset(root: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 65535, (96, 96), dtype=np.uint16)
    for index in range(count):
        label = ("BEN", "CAN", "NOR")[index % 3]
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        image = np.roll(base, index, axis=index % 2) ^ np.uint16(index)
        Image.fromarray(image).save(folder / f"img{index:06d}.png", compress_level=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"seed preset at {args.image_size}x{args.image_size}, one epoch, cold cache")
    print("| training images | decoded data (MB) | peak RSS (MB) | wall (s) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            data = Path(work) / f"data{size}"
            write_dataset(data / "train", size, seed=0)
            write_dataset(data / "validation", 300, seed=1)
            arguments = ["train", str(data), "--out", str(Path(work) / f"run{size}"),
                         "--epochs", "1", "--image-size", str(args.image_size),
                         "--batch-size", "64", "--cache-dir", str(Path(work) / f"cache{size}")]
            report = Path(work) / f"rss{size}"
            # The training process reports its own peak RSS (decode workers are separate
            # processes that exit after the cache is built).
            script = (
                "import resource, sys\n"
                "from tumor_classifier.cli import main\n"
                f"code = main({arguments!r})\n"
                f"open({str(report)!r}, 'w').write("
                "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
                "sys.exit(code)\n"
            )
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", script], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            peak_mb = int(report.read_text()) / 1024
            decoded = size * args.image_size**2 * 4 / 1e6
            print(f"| {size:,} | {decoded:.0f} | {peak_mb:.0f} | {wall:.0f} |", flush=True)

if __name__ == "__main__":
    main()
