"""How training cost grows: images/s against batch size and BLAS threads, and peak memory against batch size.

Not part of the test suite. Each point is one `cnntrain bench --json --no-profile` in its own
process (so peak memory is that batch size's alone), repeated --rounds times; medians are printed
as a Markdown table:
    CNNTRAIN_DATA=../shared/datasets python tests/benchmarks/scaling.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench(config: Path, batch: int, threads: int, steps: int) -> dict:
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    out = subprocess.run([sys.executable, "-m", "cnntrain", "bench", str(config), "--batch-size", str(batch),
                          "--steps", str(steps), "--no-profile", "--json"],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="lenet5,keras_mnist")
    parser.add_argument("--batches", default="16,32,64,128,256,512")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--images", type=int, default=4096, help="images per timed run (steps = images / batch)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; train images/s (medians of {args.rounds} "
          f"processes) and peak memory (MiB, whole process)")
    header = "| network | batch | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} img/s" for t in threads)
    print(header + " | peak MiB (training) |")
    print("| --- | ---: | " + " | ".join("---:" for _ in threads) + " | ---: |", flush=True)
    for name in args.configs.split(","):
        config = REPO / "configs" / f"{name}.yaml"
        if not config.is_file():
            config = REPO / "tests" / "benchmarks" / f"{name}.yaml"
        for batch in batches:
            steps = max(5, args.images // batch)
            cells, peaks = [], []
            for t in threads:
                runs = [bench(config, batch, t, steps) for _ in range(args.rounds)]
                cells.append(statistics.median(r["train_images_per_s"] for r in runs))
                peaks += [r["train_peak_memory_mb"] for r in runs]
            print(f"| {name} | {batch} | " + " | ".join(f"{c:,.0f}" for c in cells) + f" | {max(peaks):,.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
