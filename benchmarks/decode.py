"""Decode-and-preprocess time of one full-field 16-bit mammogram, on one CPU core.

    python benchmarks/decode.py [--runs 7] [--sizes 128 256 512]

Writes a synthetic 4,500 x 3,000 mammogram as RLE DICOM and as 16-bit PNG into a temporary
folder, then times `read_image` + `preprocess` (the path every command uses) and prints the
median of the runs. Target: under 0.5 s for the DICOM on one core.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from synthetic import synthetic_mammogram, write_png16, write_rle_dicom

from tumor_classifier.imaging import read_image
from tumor_classifier.preprocessing import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    pixels = synthetic_mammogram()
    with tempfile.TemporaryDirectory() as folder:
        files = {
            "RLE DICOM": write_rle_dicom(Path(folder) / "film.dcm", pixels),
            "16-bit PNG": write_png16(Path(folder) / "film.png", pixels),
        }
        print(f"# {platform.processor() or platform.machine()}, one core, "
              f"{pixels.shape[0]}x{pixels.shape[1]} 12-bit in 16, median of {args.runs} runs")
        print("| file | size | read_image (s) | read + preprocess (s) |")
        print("|---|---|---|---|")
        for name, path in files.items():
            read_image(path)  # warm the imports and decoders
            for size in args.sizes:
                read_times, total_times = [], []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    image = read_image(path)
                    read_times.append(time.perf_counter() - started)
                    preprocess(image, size, 1)
                    total_times.append(time.perf_counter() - started)
                print(f"| {name} ({path.stat().st_size / 1e6:.1f} MB) | {size} | "
                      f"{statistics.median(read_times):.3f} | "
                      f"{statistics.median(total_times):.3f} |")


if __name__ == "__main__":
    main()
