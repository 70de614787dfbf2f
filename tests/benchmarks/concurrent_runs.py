"""Two training runs at once against one alone: the images/s each keeps, with and without the thread policy.

Not part of the test suite. Each run is a real `cnntrain run` of one epoch on a subset of MNIST;
the figure is summary.json's images_per_second. "policy" leaves the thread variables unset, so
each run picks max(1, cores // live runs) BLAS threads; "no policy" sets OMP_NUM_THREADS to the
core count for both, as every process did before:
    CNNTRAIN_DATA=../shared/datasets python tests/benchmarks/concurrent_runs.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def start(config: str, runs_dir: Path, images: int, threads: int | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    if threads is not None:
        env.update({k: str(threads) for k in THREAD_VARIABLES})
    return subprocess.Popen([sys.executable, "-m", "cnntrain", "run", config, "--runs-dir", str(runs_dir),
                             "--set", "train.epochs=1", "--set", f"data.limit_train={images}",
                             "--set", "data.limit_val=1000", "--set", "data.limit_test=1000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def speeds(procs, runs_dir: Path) -> list[float]:
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(p.stderr.read())
    return [json.loads((d / "summary.json").read_text())["images_per_second"] for d in sorted(runs_dir.iterdir())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "lenet5.yaml"))
    parser.add_argument("--images", type=int, default=20000)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        solo = speeds([start(args.config, Path(tmp) / "solo", args.images, None)], Path(tmp) / "solo")[0]
        print(f"{Path(args.config).stem}, {cores} cores: alone {solo:,.0f} images/s")
        for label, threads in (("policy", None), ("no policy", cores)):
            folder = Path(tmp) / label.replace(" ", "_")
            pair = speeds([start(args.config, folder, args.images, threads) for _ in range(2)], folder)
            print(f"two at once, {label}: " + ", ".join(f"{s:,.0f} images/s ({s / solo:.2f}x)" for s in pair),
                  flush=True)


if __name__ == "__main__":
    main()
