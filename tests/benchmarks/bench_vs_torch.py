"""cnntrain vs PyTorch on the CPU: training and inference images/s of three MNIST networks.

Not part of the test suite. Needs PyTorch in the running Python (a separate venv):
    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 -e .
    CNNTRAIN_DATA=../shared/datasets .venv-torch/bin/python tests/benchmarks/bench_vs_torch.py
Same batch (64), Adam, float32, 2 threads, real MNIST batches already in memory (data loading
excluded). The two frameworks are timed alternately, round after round, in one process, and the
table reports medians and the cnntrain/PyTorch ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "2"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from cnntrain.build import build_model  # noqa: E402
from cnntrain.registry import DATASETS, LOSSES, OPTIMIZERS  # noqa: E402

# name -> list of (cnntrain layer, options); the PyTorch twin is built from the same list
NETWORKS = {
    "small": [("conv2d", {"filters": 8, "kernel_size": 3, "padding": 1}), ("relu", {}), ("maxpool2d", {"size": 2}),
              ("conv2d", {"filters": 16, "kernel_size": 3, "padding": 1}), ("relu", {}), ("maxpool2d", {"size": 2}),
              ("flatten", {}), ("dense", {"units": 10})],
    "lenet5": [("conv2d", {"filters": 6, "kernel_size": 5, "padding": 2}), ("relu", {}), ("maxpool2d", {"size": 2}),
               ("conv2d", {"filters": 16, "kernel_size": 5}), ("relu", {}), ("maxpool2d", {"size": 2}),
               ("flatten", {}), ("dense", {"units": 120}), ("relu", {}), ("dense", {"units": 84}), ("relu", {}),
               ("dense", {"units": 10})],
    "keras_mnist": [("conv2d", {"filters": 32, "kernel_size": 3}), ("relu", {}),
                    ("conv2d", {"filters": 64, "kernel_size": 3}), ("relu", {}), ("maxpool2d", {"size": 2}),
                    ("dropout", {"rate": 0.25}), ("flatten", {}), ("dense", {"units": 128}), ("relu", {}),
                    ("dropout", {"rate": 0.5}), ("dense", {"units": 10})],
}


def torch_net(specs, in_shape):
    layers, shape = [], in_shape
    for name, kw in specs:
        if name == "conv2d":
            pad = kw.get("padding", 0)
            layers.append(nn.Conv2d(shape[0], kw["filters"], kw["kernel_size"], padding=pad))
            k = kw["kernel_size"]
            shape = (kw["filters"], shape[1] + 2 * pad - k + 1, shape[2] + 2 * pad - k + 1)
        elif name == "relu":
            layers.append(nn.ReLU())
        elif name == "maxpool2d":
            layers.append(nn.MaxPool2d(kw["size"]))
            shape = (shape[0], shape[1] // kw["size"], shape[2] // kw["size"])
        elif name == "dropout":
            layers.append(nn.Dropout(kw["rate"]))
        elif name == "flatten":
            layers.append(nn.Flatten())
            shape = (int(np.prod(shape)),)
        elif name == "dense":
            layers.append(nn.Linear(shape[0], kw["units"]))
            shape = (kw["units"],)
    return nn.Sequential(*layers)


class NumpyRunner:
    def __init__(self, specs, batches):
        self.model = build_model(specs, (1, 28, 28), np.random.default_rng(0))
        self.model.rng = np.random.default_rng(1)
        for layer in self.model.layers:
            if hasattr(layer, "rng"):
                layer.rng = self.model.rng
        self.loss = LOSSES.create("softmax_cross_entropy")
        self.opt = OPTIMIZERS.create("adam", {"lr": 1e-3})
        self.batches = batches

    def train(self, n):
        for i in range(n):
            x, y = self.batches[i % len(self.batches)]
            out = self.model.forward(x, training=True)
            self.loss.forward(out, y)
            self.model.backward(self.loss.backward())
            self.opt.step(self.model.named_params(), self.model.named_grads())

    def infer(self, n):
        for i in range(n):
            self.model.forward(self.batches[i % len(self.batches)][0], training=False)


class TorchRunner:
    def __init__(self, specs, batches):
        torch.manual_seed(0)
        self.model = torch_net(specs, (1, 28, 28))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.lossf = nn.CrossEntropyLoss()
        self.batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def train(self, n):
        self.model.train()
        for i in range(n):
            x, y = self.batches[i % len(self.batches)]
            self.opt.zero_grad(set_to_none=True)
            self.lossf(self.model(x), y).backward()
            self.opt.step()

    def infer(self, n):
        self.model.eval()
        with torch.no_grad():
            for i in range(n):
                self.model(self.batches[i % len(self.batches)][0])


def timed(fn, n):
    start = time.perf_counter()
    fn(n)
    return (time.perf_counter() - start) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40, help="steps per timed round")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    ds = DATASETS.get("mnist")(download=False)
    x = ((ds.train_x[:64 * 20].astype(np.float32) / 255) - 0.1307) / 0.3081
    batches = [(x[i:i + 64], ds.train_y[i:i + 64]) for i in range(0, len(x), 64)]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{THREADS} threads, numpy {np.__version__}, torch {torch.__version__}, batch 64, Adam")
    print("| network | cnntrain train img/s | PyTorch train img/s | ratio | cnntrain infer img/s | "
          "PyTorch infer img/s | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.networks.split(","):
        runners = {"np": NumpyRunner(NETWORKS[name], batches), "torch": TorchRunner(NETWORKS[name], batches)}
        times = {(k, m): [] for k in runners for m in ("train", "infer")}
        for r in runners.values():  # warm-up
            r.train(5)
            r.infer(5)
        for _ in range(args.rounds):
            for key, r in runners.items():  # alternate, so drifting machine load hits both alike
                times[key, "train"].append(timed(r.train, args.steps))
                times[key, "infer"].append(timed(r.infer, args.steps))
        ips = {k: 64 / statistics.median(v) for k, v in times.items()}
        print(f"| {name} | {ips['np', 'train']:,.0f} | {ips['torch', 'train']:,.0f} | "
              f"{ips['np', 'train'] / ips['torch', 'train']:.2f} | {ips['np', 'infer']:,.0f} | "
              f"{ips['torch', 'infer']:,.0f} | {ips['np', 'infer'] / ips['torch', 'infer']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
