"""One rank's share of a data parallel step (parallel.py), and the worker processes that compute them.

Rank 0 runs compute_share in the run's own process; ranks 1.. are `python -m cnntrain.share`
processes running worker(), which waits for a step, computes its share and leaves its gradients
in shared memory (ipc.py).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import signal
import sys
import time
from multiprocessing.connection import Connection

import numpy as np

from .ipc import SPIN_SECONDS, Channel, Reducer, views
from .memory import keep_freed_memory
from .threads import set_blas_threads


def dropouts(model):
    return [layer for layer in model.layers if hasattr(layer, "draw_seed")]


def batchnorms(model):
    return [layer for layer in model.layers if hasattr(layer, "reducer")]


def compute_share(model, loss, reducer, seeds: list, n: int, start: int, stop: int, x, y):
    """Forward and backward on rows start..stop of an n-row batch (x and y hold at least those rows).

    The dropout layers get the step's seeds with this share's first row and the batchnorms the
    reducer, for this call only; dy is scaled so the ranks' gradients sum to the batch mean's.
    Returns (share mean loss, correct predictions); gradients are left on the layers.
    """
    reducer.batch, reducer.rows = n, stop - start
    for layer, seed in zip(dropouts(model), seeds):
        layer.share = (seed, start)
    for layer in batchnorms(model):
        layer.reducer = reducer
    try:
        xs, ys = x[: stop - start], y[: stop - start]
        out = model.forward(xs, training=True)
        share_loss = loss.forward(out, ys)
        dy = loss.backward()
        if len(ys) != n:
            dy = dy * dy.dtype.type(len(ys) / n)
        model.backward(dy)
        return share_loss, int((loss.predict(out) == ys).sum())
    finally:
        for layer in dropouts(model):
            layer.share = None
        for layer in batchnorms(model):
            layer.reducer = None


def worker(rank: int, workers: int, shm_fd: int, up: int, down: int, conn_fd: int) -> None:
    """A worker process: wait for a step, compute its share, leave its gradients in shared memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are for rank 0, which stops at a step's end
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: end with rank 0
    except (OSError, AttributeError):
        pass  # not Linux: the closed pipes end it instead
    keep_freed_memory()  # as rank 0 does: without it every step's arrays are fresh pages, faulted in anew
    conn = Connection(conn_fd)
    model, loss, specs = pickle.loads(conn.recv_bytes())
    arrays = views(mmap.mmap(shm_fd, 0), specs)
    for i, layer in enumerate(model.layers):
        for key in layer.params:
            layer.params[key] = arrays[f"param/layers.{i}.{key}"]
    up = Channel(arrays["channels"][rank, 0], up)
    down = Channel(arrays["channels"][rank, 1], down)
    ups, downs = [None] * workers, [None] * workers
    ups[rank], downs[rank] = up, down
    reducer = Reducer(rank, arrays["slots"], arrays["results"], ups, downs)
    conn.send("ready")
    current = None
    replied = None  # when this rank last replied
    spin = True
    while True:
        # the next step may come within a ms: a sleeping process takes 0.05-0.15 ms to wake
        if not down.wait(SPIN_SECONDS if spin else 0):
            return  # rank 0 stopped this worker, or is gone
        if replied is not None:
            # between steps rank 0 adds the gradients and runs the optimizer, maybe on all the cores:
            # when that took longer than a spin, spinning again would only take a core from it
            spin = time.perf_counter() - replied < SPIN_SECONDS
        n, start, stop, want, *seeds = map(int, arrays["steps"][rank])
        try:
            if want != current:
                set_blas_threads(want)
                current = want
            loss_value, correct = compute_share(model, loss, reducer, seeds, n, start, stop, arrays["x"][start:],
                                                arrays["y"][start:])
            for name, g in model.named_grads().items():
                np.copyto(arrays[f"grad{rank}/{name}"], g)
        except Exception as exc:  # reported to rank 0, which raises it as a RunError
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            up.ring(failed=True)  # rank 0 may be waiting for this rank's batchnorm sums or reply
            return
        arrays["replies"][rank] = (loss_value, correct)
        up.ring()
        replied = time.perf_counter()


if __name__ == "__main__":
    worker(*map(int, sys.argv[1:]))
