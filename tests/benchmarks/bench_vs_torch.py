"""cnntrain vs PyTorch on the CPU, as a user compares them: each framework in its own process.

Not part of the test suite. PyTorch lives in a separate venv (never a dependency of cnntrain):
    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 numpy
    CNNTRAIN_DATA=../shared/datasets python tests/benchmarks/bench_vs_torch.py --torch-python .venv-torch/bin/python

For every network and round, one fresh process per framework times training steps (batch 64,
Adam or the config's AdamW, float32), then inference (batch 1000), then training again, on the
same batches, read from
a shared .npy file (real MNIST, or generated 3x32x32 images for the CIFAR-10 network); data
loading is excluded for both. The order of the frameworks alternates between rounds, each
round goes through every network in turn (a busy minute on a shared machine then costs each
network one round, not one network all of them; progress goes to stderr), and the table
reports each median and the cnntrain / PyTorch ratio. Both get the same thread count.
The first training figure is a run's first epoch (a fresh process, as `cnntrain run` or a PyTorch
script starts); the second, after the evaluation passes, that of the epochs after a validation
pass, where PyTorch's allocations have warmed up (see run_worker).
A third process per round times only the step's matrix products at their shapes (gemm_floor.py),
split over one-thread workers as cnntrain splits its steps: the speed a NumPy im2col + sgemm
step could reach if everything else in it were free.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONV = lambda f, k, **kw: ("conv2d", {"filters": f, "kernel_size": k, **kw})  # noqa: E731
# name -> (config file or inline layers, input shape)
NETWORKS = {
    "small": ([CONV(8, 3, padding=1), ("relu", {}), ("maxpool2d", {"size": 2}), CONV(16, 3, padding=1),
               ("relu", {}), ("maxpool2d", {"size": 2}), ("flatten", {}), ("dense", {"units": 10})], [1, 28, 28]),
    "lenet5": ("configs/lenet5.yaml", [1, 28, 28]),
    "keras_mnist": ([CONV(32, 3), ("relu", {}), CONV(64, 3), ("relu", {}), ("maxpool2d", {"size": 2}),
                     ("dropout", {"rate": 0.25}), ("flatten", {}), ("dense", {"units": 128}), ("relu", {}),
                     ("dropout", {"rate": 0.5}), ("dense", {"units": 10})], [1, 28, 28]),
    "mnist_bn_dropout": ("configs/mnist_bn_dropout.yaml", [1, 28, 28]),
    "cifar10_cnn": ("configs/cifar10_cnn.yaml", [3, 32, 32]),
}
TRAIN_BATCH, INFER_BATCH = 64, 1000


def network_spec(name: str) -> dict:
    """{layers: [[name, kwargs]], input_shape, optimizer: {name, lr, weight_decay}} from a config or the table."""
    layers, shape = NETWORKS[name]
    optimizer = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}
    if isinstance(layers, str):
        from cnntrain.config import load_config

        cfg = load_config(REPO / layers)
        layers = cfg.layer_specs
        optimizer = {"name": cfg.optimizer.name, "lr": cfg.optimizer.lr,
                     "weight_decay": cfg.optimizer.options.get("weight_decay", 0.0)}
    return {"layers": [[n, kw] for n, kw in layers], "input_shape": shape, "optimizer": optimizer}


def write_data(path: Path, shape) -> None:
    """Training and inference batches as float32 (normalised like the configs) and int64 labels."""
    import numpy as np

    n = TRAIN_BATCH * 16 + INFER_BATCH
    if shape == [1, 28, 28]:
        from cnntrain.registry import DATASETS

        ds = DATASETS.get("mnist")(download=False)
        x = ((ds.train_x[:n].astype(np.float32) / 255) - 0.1307) / 0.3081
        y = ds.train_y[:n]
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        y = rng.integers(0, 10, n)
    np.savez(path, x=x, y=y.astype(np.int64))


def run_worker(framework: str, spec: dict, data: str, steps: int, warmup: int, threads: int = 1) -> dict:
    import numpy as np

    if framework == "gemm":  # split over `threads` one-thread workers, as cnntrain trains and evaluates
        from gemm_floor import gemm_images_per_second

        ceiling = gemm_images_per_second(spec, TRAIN_BATCH, training=True, processes=threads)
        return {"train": ceiling, "train_after_eval": ceiling,
                "infer": gemm_images_per_second(spec, INFER_BATCH, training=False, processes=threads)}

    with np.load(data) as f:
        x, y = f["x"], f["y"]
    train = [(x[i:i + TRAIN_BATCH], y[i:i + TRAIN_BATCH]) for i in range(0, TRAIN_BATCH * 16, TRAIN_BATCH)]
    infer = x[-INFER_BATCH:]
    step, predict = (cnntrain_runner if framework == "cnntrain" else torch_runner)(spec, train, infer)

    def train_images_per_second() -> float:
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        return TRAIN_BATCH * steps / (time.perf_counter() - start)

    for i in range(warmup):
        step(i)
    first = train_images_per_second()  # as a run's first epoch: no evaluation pass before it
    predict()
    times = []
    for _ in range(max(5, steps // 4)):  # the median call: a 45 ms call is easily hit by a neighbour's burst
        start = time.perf_counter()
        predict()
        times.append(time.perf_counter() - start)
    # Again after the evaluation passes, as in the epochs after a run's first validation. PyTorch
    # trains faster here (mnist_bn_dropout 25-30%): freeing the batch-1000 pass's big tensors raised
    # glibc's mmap and trim thresholds, so its step's tensors stop being fresh, zero-filled pages (the
    # same speed-up as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set before it starts); cnntrain
    # raises them itself at start (memory.keep_freed_memory), so both columns are the same for it.
    after_eval = train_images_per_second()
    return {"train": first, "train_after_eval": after_eval, "infer": INFER_BATCH / statistics.median(times)}


def cnntrain_runner(spec, train, infer):
    import numpy as np

    from cnntrain.build import build_model
    from cnntrain.memory import keep_freed_memory
    from cnntrain.registry import LOSSES, OPTIMIZERS
    from cnntrain.parallel import DataParallel, choose_workers
    from cnntrain.threads import explicit_threads
    from cnntrain.train import batch_gradients, train_step

    keep_freed_memory()  # as `cnntrain run` does

    model = build_model([tuple(s) for s in spec["layers"]], spec["input_shape"], np.random.default_rng(0))
    model.rng = np.random.default_rng(1)
    loss = LOSSES.create("softmax_cross_entropy")
    opt = OPTIMIZERS.create(spec["optimizer"]["name"], {k: v for k, v in spec["optimizer"].items() if k != "name"})

    # the processes a `cnntrain run` with train.workers: auto uses (OMP_NUM_THREADS is set for both frameworks)
    batch = len(train[0][1])
    workers = choose_workers("auto", None, 1, sum(layer.macs() for layer in model.layers), batch, batch)
    gradients = batch_gradients
    opt.threads = explicit_threads()  # what the thread policy gives a run's optimizer
    if workers > 1:
        gradients = DataParallel(model, loss, workers, batch, lambda: max(1, explicit_threads() // workers))
        atexit.register(gradients.close)

    def step(i):
        xb, yb = train[i % len(train)]
        train_step(model, loss, opt, xb, yb, lambda a: a, opt.lr, len(yb), gradients=gradients)

    return step, lambda: model.forward(infer, training=False)


def torch_runner(spec, train, infer):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers, shape = [], list(spec["input_shape"])
    for name, kw in spec["layers"]:
        if name == "conv2d":
            k, stride = kw.get("kernel_size", 3), kw.get("stride", 1)
            pad = kw.get("padding", 0)
            pad = (k - 1) // 2 if pad == "same" else 0 if pad == "valid" else pad
            layers.append(nn.Conv2d(shape[0], kw["filters"], k, stride, pad, bias=kw.get("use_bias", True)))
            shape = [kw["filters"], (shape[1] + 2 * pad - k) // stride + 1, (shape[2] + 2 * pad - k) // stride + 1]
        elif name == "batchnorm":
            layers.append(nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0]))
        elif name == "relu":
            layers.append(nn.ReLU())
        elif name == "maxpool2d":
            layers.append(nn.MaxPool2d(kw.get("size", 2)))
            shape = [shape[0], shape[1] // kw.get("size", 2), shape[2] // kw.get("size", 2)]
        elif name == "global_avgpool":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            shape = [shape[0]]
        elif name == "dropout":
            layers.append(nn.Dropout(kw.get("rate", 0.5)))
        elif name == "flatten":
            layers.append(nn.Flatten())
            shape = [shape[0] * shape[1] * shape[2]]
        elif name == "dense":
            layers.append(nn.Linear(shape[0], kw["units"], bias=kw.get("use_bias", True)))
            shape = [kw["units"]]
        else:
            raise ValueError(f"no PyTorch twin for layer {name}")
    model = nn.Sequential(*layers)
    o = spec["optimizer"]
    opt = (torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam)(
        model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
    lossf = nn.CrossEntropyLoss()
    batches = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in train]
    infer_t = torch.from_numpy(infer)

    def step(i):
        model.train()
        xb, yb = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        lossf(model(xb), yb).backward()
        opt.step()

    def predict():
        model.eval()
        with torch.no_grad():
            model(infer_t)

    return step, predict


def worker_main(args) -> None:
    if args.framework == "torch":
        import torch

        torch.set_num_threads(args.threads)
    elif args.framework == "cnntrain":  # the environment `cnntrain run` gives itself before NumPy loads
        from cnntrain.threads import quiet_idle_blas_threads

        quiet_idle_blas_threads()
    result = run_worker(args.framework, json.loads(args.spec), args.data, args.steps, args.warmup, args.threads)
    print(json.dumps(result))


def spawn(python: str, framework: str, spec: dict, data: Path, args) -> dict:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    out = subprocess.run([python, __file__, "--worker", framework, "--spec", json.dumps(spec), "--data", str(data),
                          "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", threads],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{framework} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (/proc/stat's `cpu` line: user, nice, system, idle, iowait, irq,
    softirq, steal, ...), or None where there is no /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def stolen_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time a virtual machine's host gave to others between two cpu_times() (its
    `steal` field), or None where it is not known. On a busy shared host it runs at 10-25%, and
    every figure of the run is slower and noisier for it."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])  # guest time is already counted in user and nice
    return (after[7] - before[7]) / total if total > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default=str(REPO / ".venv-torch" / "bin" / "python"),
                        help="a Python with torch installed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per process")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--worker", dest="framework", choices=["cnntrain", "torch", "gemm"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.framework:
        worker_main(args)
        return
    import numpy as np

    torch_version = subprocess.run([args.torch_python, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    blas = subprocess.run([sys.executable, "-c", "from cnntrain.threads import blas_library; print(blas_library())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # e.g. OpenBLAS's kernels
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
          f"numpy {np.__version__} ({blas}), torch {torch_version}; train batch {TRAIN_BATCH}, inference batch "
          f"{INFER_BATCH}; each framework in its own process, alternating, medians of {args.rounds} rounds")
    print("| network | cnntrain train img/s | PyTorch train img/s | ratio | after an evaluation pass: cnntrain "
          "| PyTorch | ratio | GEMM-only ceiling | ceiling / PyTorch | cnntrain infer img/s | PyTorch infer img/s "
          "| ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    pythons = {"cnntrain": sys.executable, "torch": args.torch_python, "gemm": sys.executable}
    orders = [["cnntrain", "torch", "gemm"], ["torch", "gemm", "cnntrain"], ["gemm", "cnntrain", "torch"]]
    names = args.networks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        specs, data = {}, {}
        for name in names:
            specs[name], data[name] = network_spec(name), Path(tmp) / f"{name}.npz"
            write_data(data[name], specs[name]["input_shape"])
        results = {name: {fw: [] for fw in pythons} for name in names}
        started = cpu_times()
        # rounds outermost: each network's rounds are spread over the whole run, so a busy minute on a
        # shared machine costs every network one round rather than one network all of its rounds
        for r in range(args.rounds):
            for name in names:
                for fw in orders[r % len(orders)]:
                    results[name][fw].append(spawn(pythons[fw], fw, specs[name], data[name], args))
                last = {fw: results[name][fw][-1] for fw in ("cnntrain", "torch")}
                print(f"round {r + 1}/{args.rounds} {name}: training "
                      f"{last['cnntrain']['train'] / last['torch']['train']:.2f}x, after an evaluation pass "
                      f"{last['cnntrain']['train_after_eval'] / last['torch']['train_after_eval']:.2f}x",
                      file=sys.stderr, flush=True)
        for name in names:
            med = {(fw, m): statistics.median(x[m] for x in results[name][fw]) for fw in pythons
                   for m in ("train", "train_after_eval", "infer")}
            ratio = {m: med["cnntrain", m] / med["torch", m] for m in ("train", "train_after_eval", "infer")}
            print(f"| {name} | {med['cnntrain', 'train']:,.0f} | {med['torch', 'train']:,.0f} | {ratio['train']:.2f}x "
                  f"| {med['cnntrain', 'train_after_eval']:,.0f} | {med['torch', 'train_after_eval']:,.0f} "
                  f"| {ratio['train_after_eval']:.2f}x | {med['gemm', 'train']:,.0f} "
                  f"| {med['gemm', 'train'] / med['torch', 'train']:.2f}x | {med['cnntrain', 'infer']:,.0f} "
                  f"| {med['torch', 'infer']:,.0f} | {ratio['infer']:.2f}x |", flush=True)
        stolen = stolen_share(started, cpu_times())
        if stolen is not None:
            print(f"\nCPU time taken by the virtual machine's host for others during the run (steal): {stolen:.1%}")


if __name__ == "__main__":
    main()
