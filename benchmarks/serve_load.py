"""Load test of `tumor-classifier serve` on 127.0.0.1: concurrent clients, bounded in
requests and time, reporting throughput, latency percentiles and failures.

    python benchmarks/serve_load.py RUN_DIR FILM.png [--clients 8] [--requests 400]
                                    [--max-seconds 120]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("film", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tumor_classifier.cli", "serve", str(args.run_dir),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the service did not start") from None
                time.sleep(0.5)
        data = args.film.read_bytes()
        latencies: list[float] = []
        failures: list[str] = []
        counter = iter(range(args.requests))
        lock = threading.Lock()
        stop_at = time.monotonic() + args.max_seconds

        def client() -> None:
            with httpx.Client(timeout=60) as session:
                while time.monotonic() < stop_at:
                    with lock:
                        if next(counter, None) is None:
                            return
                    started = time.perf_counter()
                    try:
                        answer = session.post(f"{url}/v1/predict",
                                              files={"file": (args.film.name, data)})
                        ok = answer.status_code == 200 and "probabilities" in answer.json()
                    except httpx.HTTPError as error:
                        ok, answer = False, error  # type: ignore[assignment]
                    elapsed = time.perf_counter() - started
                    with lock:
                        (latencies.append(elapsed) if ok else failures.append(str(answer)))

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    ordered = sorted(latencies)

    def percentile(share: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    print(f"# {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"{args.clients} clients, {args.film.name} ({len(data) / 1e3:.0f} kB)")
    print("| requests | failed | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) "
          "| mean (ms) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(latencies) + len(failures)} | {len(failures)} | {len(latencies) / wall:.1f} "
          f"| {percentile(0.5):.0f} | {percentile(0.9):.0f} | {percentile(0.99):.0f} "
          f"| {1000 * statistics.mean(ordered):.0f} |")


if __name__ == "__main__":
    main()
