"""How fast could a NumPy training step be, if everything but its matrix products were free?

Not part of the test suite. A convolution trained the im2col way costs three GEMMs per step
(forward, weight gradient, input gradient; the first layer needs no input gradient) and a dense
layer three more; a Winograd convolution 16 or 36 smaller ones for each (F(2x2, 3x3) or F(4x4, 3x3)),
a banded one two wider ones
(layers/conv.py chooses, per layer, as a training step does). This times exactly those products,
np.matmul at the network's shapes (batch 64, float32, the BLAS threads of the environment; a
convolution's in the cache-sized blocks of a few images that cnntrain multiplies, faster than
one whole-batch product), with no im2col, transform, pooling, activation or optimizer work, and
prints the images/s that GEMM time alone allows. Where it is
below what PyTorch trains at (tests/benchmarks/bench_vs_torch.py), no arrangement of NumPy code
around sgemm can reach PyTorch: its convolutions are oneDNN's direct kernels, not im2col + GEMM.

    CNNTRAIN_DATA=../shared/datasets python tests/benchmarks/gemm_floor.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_torch import NETWORKS, TRAIN_BATCH, network_spec  # noqa: E402


def gemm_shapes(spec: dict, batch: int, training: bool = True) -> list[tuple[str, int, int, int]]:
    """(what, M, K, N) of every product of one training step (or forward pass): (M, K) @ (K, N)."""
    from cnntrain.build import build_model
    from cnntrain.layers.channels_last import BAND, CHUNK_BYTES
    from cnntrain.layers.winograd import WINOGRAD_CHUNK_BYTES
    from cnntrain.layers.conv import forward_method, input_grad_method, winograd_scheme

    def chunks(per_image: int, budget: int) -> list[int]:
        """Images per product, as the kernels take them: a few at a time, by bytes per image."""
        images = max(1, budget // per_image)
        return [min(images, batch - start) for start in range(0, batch, images)]

    model = build_model([tuple(s) for s in spec["layers"]], spec["input_shape"], np.random.default_rng(0))
    shapes, first = [], True
    for layer in model.layers:
        kind = type(layer).__name__.lower()
        if hasattr(layer, "kernel_size"):
            C, F = layer.in_shape[0], layer.filters
            OH, OW = layer.out_shape[1:]
            (KH, KW), K = layer.kernel_size, C * layer.kernel_size[0] * layer.kernel_size[1]
            method = forward_method(layer)
            if method == "winograd":  # (m+2)^2 products per block of images, each (tiles, C) @ (C, F)
                m = winograd_scheme(layer).m
                tiles, positions = OH * OW // (m * m), (m + 2) ** 2
                for n in chunks(positions * tiles * C * 4, WINOGRAD_CHUNK_BYTES):
                    shapes += [(f"{kind} forward", n * tiles, C, F)] * positions
                    shapes += [(f"{kind} dW", C, n * tiles, F)] * positions if training else []
            elif method == "banded":  # rows of 4 outputs by (KH*(4+KW-1)*C, 4F)
                rows, width = OH * (OW + -OW % BAND) // BAND, KH * (BAND + KW - 1) * C
                for n in chunks(rows * width * 4, CHUNK_BYTES):
                    shapes += [(f"{kind} forward", n * rows, width, BAND * F)]
                    shapes += [(f"{kind} dW", width, n * rows, BAND * F)] if training else []
            else:  # im2col: the products of a few images at a time (cache-sized column blocks)
                for n in chunks(OH * OW * K * 4, CHUNK_BYTES):
                    shapes += [(f"{kind} forward", n * OH * OW, K, F)]
                    shapes += [(f"{kind} dW", K, n * OH * OW, F)] if training else []
            if training and not first:
                if input_grad_method(layer) == "winograd":  # dM U^T per tile position, the forward's blocks
                    for n in chunks(positions * tiles * C * 4, WINOGRAD_CHUNK_BYTES):
                        shapes += [(f"{kind} dx", n * tiles, F, C)] * positions
                else:
                    for n in chunks(OH * OW * K * 4, CHUNK_BYTES):
                        shapes += [(f"{kind} dx", n * OH * OW, F, K)]
        elif kind == "dense":
            D, U = layer.in_shape[0], layer.out_shape[0]
            shapes += [("dense forward", batch, D, U)]
            shapes += [("dense dW", D, batch, U)] + ([] if first else [("dense dx", batch, U, D)]) if training else []
        else:
            continue
        first = False
    return shapes


@functools.cache  # a convolution's blocks repeat one shape
def time_gemm(M: int, K: int, N: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    out = np.empty((M, N), np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_images_per_second(spec: dict, batch: int, training: bool, repeats: int = 30, processes: int = 1) -> float:
    """Images/s of a step (or forward pass) that did nothing but its GEMMs.

    processes > 1: as cnntrain splits a batch (data parallel training, the rows of an evaluation
    batch), each of `processes` workers multiplies its 1/processes of the rows on one BLAS thread;
    this times one worker's products and counts all of them as running side by side.
    """
    if processes <= 1:
        return batch / sum(time_gemm(M, K, N, repeats) for _, M, K, N in gemm_shapes(spec, batch, training))
    from threadpoolctl import threadpool_limits

    share = batch // processes
    time_gemm.cache_clear()  # timings on other thread counts are no guide
    with threadpool_limits(limits=1, user_api="blas"):
        seconds = sum(time_gemm(M, K, N, repeats) for _, M, K, N in gemm_shapes(spec, share, training))
    time_gemm.cache_clear()
    return processes * share / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS))
    args = parser.parse_args()
    print("| network | GEMMs per step | GEMM-only step (ms) | images/s with GEMMs alone | GFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.networks:
        shapes = gemm_shapes(network_spec(name), TRAIN_BATCH)
        seconds = sum(time_gemm(M, K, N, args.repeats) for _, M, K, N in shapes)
        flops = sum(2 * M * K * N for _, M, K, N in shapes)
        print(f"| {name} | {len(shapes)} | {seconds * 1e3:.2f} | {TRAIN_BATCH / seconds:,.0f} | "
              f"{flops / seconds / 1e9:.0f} |")


if __name__ == "__main__":
    main()
