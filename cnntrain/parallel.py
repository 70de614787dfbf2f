"""Data parallel training on one machine: each batch split over worker processes.

NumPy runs the work between the matrix products (im2col copies, pooling, batchnorm, ReLU) on one
core, and a second BLAS thread does little for small GEMMs; W processes with one BLAS thread
each, every one on its share of the batch, use the cores for all of it. This process is rank 0
and keeps the model, the optimizer and the callbacks; ranks 1..W-1 are spawned processes with a
copy of the network.

One step, and why it equals the single-process step up to float32 rounding:
- rank 0 copies the parameters and the batch rows of the others into shared memory, and draws
  each dropout layer's seed from the model's generator as a single process does; a mask is
  counter-based (layers/dropout.py), so each rank computes its own rows of the batch's mask;
- each rank backpropagates its rows' share of the *batch* mean loss (dy scaled by n_k / n), so
  the batch gradient is the plain sum of the ranks' gradients, taken in rank order;
- batchnorm uses the statistics of the whole batch (synchronised like PyTorch's SyncBatchNorm):
  the per-channel sums it needs are summed over the ranks in rank order (`Reducer`).
A step chunked for memory (train.chunk_size, full-batch descent) is one such split step per
chunk, accumulated as train.accumulate_chunks does in one process: each chunk's batchnorm
statistics and dropout seeds are the chunk's, as they are there.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from .errors import RunError
from .ipc import Channel, Reducer, channel_lines, layout, shared_block, views
from .share import batchnorms, compute_share, dropouts
from .threads import blas_threads, set_blas_threads
from .train import accumulate_chunks, batch_gradients

# Below this many multiply-adds per training step (forward, for the whole batch) `workers: auto`
# keeps one process: such a step takes about a millisecond, too short to pay for the hand-over
MIN_AUTO_MACS = 2_000_000


def choose_workers(requested, threads_requested: int | None, live: int, macs_per_sample: int, batch_size: int,
                   chunk_size: int) -> int:
    """train.workers as a number: itself, or for `auto` one process per BLAS thread this run may
    use (train.threads, an explicit OMP_NUM_THREADS-style variable, else cores // live runs), when
    one forward pass (the batch, or a chunk of it) is big enough to pay for the hand-over."""
    from .threads import choose, explicit_threads

    if requested != "auto":
        return int(requested)
    threads, _ = choose(threads_requested, live)
    if threads is None:  # the environment decides
        threads = explicit_threads()
    rows = min(batch_size, chunk_size)
    if threads < 2 or macs_per_sample * rows < MIN_AUTO_MACS:
        return 1
    return max(1, min(threads, rows // 8))


def gradients_for(model, loss, workers: int, batch_size: int, chunk_size: int, policy):
    """What computes a run's batch gradients, as a context manager: train.batch_gradients in this
    process, or a DataParallel of `workers` processes sharing the thread policy's threads."""
    if workers < 2:
        return contextlib.nullcontext(batch_gradients)
    return DataParallel(model, loss, workers, min(batch_size, chunk_size), lambda: policy.each,
                        lambda: policy.threads)


class DataParallel:
    """Batch gradients computed by `workers` processes; the same call as train.batch_gradients.

    Worker processes start at start(), which a run calls before its first epoch, or else at the
    first step, and stop at close(). A pass that cannot be split (fewer rows than workers, or more than `rows`)
    runs here alone, with the same result up to rounding (the masks are counter-based and the
    batch's statistics are the batch's either way), and so do all steps while other runs leave
    this one fewer cores than workers. Workers are `python -m cnntrain.share`
    processes (share.py), so nothing depends on how the caller's own program was started.
    """

    def __init__(self, model, loss, workers: int, rows: int, threads=lambda: 1, budget=None):
        """rows: the most rows of one forward pass (the batch size, or the chunk size when steps are
        chunked). threads() gives each process's BLAS threads for the next step (ThreadPolicy.each);
        budget() the run's share of the cores (ThreadPolicy.threads): while it is below `workers`,
        because other runs started, steps run in this process alone and the workers wait."""
        if workers < 2:
            raise ValueError(f"DataParallel needs 2 or more workers, got {workers}")
        self.model, self.loss, self.workers, self.rows, self.threads = model, loss, workers, rows, threads
        self.budget = budget or (lambda: workers)
        self.procs, self.conns = [], []
        self.up, self.down = [None], [None]  # Channels from and to ranks 1.. (index = rank)
        self.arrays = None

    # --- lifecycle ---
    def start(self, x: np.ndarray, y: np.ndarray) -> None:
        """Start the worker processes now and wait until they are ready, so that the first step,
        which an epoch's clock times, does not (0.1 s here: rank 0's setup and the workers'
        imports). x, y: rows like those the steps will pass (their shape and dtype size the
        shared memory). Does nothing once started; a step starts them itself if need be."""
        if self.arrays is None:
            try:
                self._start(x, y)
            except BaseException:
                self.close()
                raise

    def _start(self, x: np.ndarray, y: np.ndarray) -> None:
        B, W = self.rows, self.workers
        params = self.model.named_params()
        dtype = next(iter(params.values())).dtype if params else x.dtype
        width = 2 * max([layer.in_shape[0] for layer in batchnorms(self.model)] or [1])
        specs = {"x": ((B,) + x.shape[1:], x.dtype), "y": ((B,) + y.shape[1:], y.dtype),
                 "slots": ((W, width), dtype), "results": ((2, width), dtype), "channels": channel_lines(W),
                 # a step for each rank (n, start, stop, BLAS threads, the dropout seeds) and its reply (loss, correct)
                 "steps": ((W, 4 + len(dropouts(self.model))), np.int64), "replies": ((W, 2), np.float64)}
        specs.update({f"param/{k}": (p.shape, p.dtype) for k, p in params.items()})
        specs.update({f"grad{r}/{k}": (p.shape, p.dtype) for r in range(1, W) for k, p in params.items()})
        shm_fd, self.block = shared_block(layout(specs)[1])
        self.arrays = views(self.block, specs)
        blob = pickle.dumps((self.model, self.loss, specs))
        env = _worker_env(self.threads())
        try:
            for rank in range(1, W):
                up_r, up_w = os.pipe()
                down_r, down_w = os.pipe()
                here, there = socket.socketpair()
                inherit = (shm_fd, up_w, down_r, there.fileno())
                proc = subprocess.Popen(
                    [sys.executable, "-m", "cnntrain.share", str(rank), str(W), *map(str, inherit)],
                    pass_fds=inherit, env=env, stdin=subprocess.DEVNULL, start_new_session=False)
                for fd in (up_w, down_r):
                    os.close(fd)
                there.close()
                conn = Connection(here.detach())
                self.up.append(Channel(self.arrays["channels"][rank, 0], up_r))
                self.down.append(Channel(self.arrays["channels"][rank, 1], down_w))
                self.procs.append(proc)
                self.conns.append(conn)
                try:
                    conn.send_bytes(blob)
                except OSError:  # it has already ended: say how
                    raise self._failure(rank) from None
        finally:
            os.close(shm_fd)
        self.reducer = Reducer(0, self.arrays["slots"], self.arrays["results"], self.up, self.down, self._failure)
        for rank in range(1, W):  # each says "ready" once it has the network and the shared memory
            try:
                _check_reply(rank, self.conns[rank - 1].recv())
            except (EOFError, OSError):
                raise self._failure(rank) from None

    def close(self) -> None:
        """Stop the worker processes (they also stop by themselves when this process dies).

        Signalling a stop on every channel to the workers first ends a worker wherever it waits:
        for the next step, or inside a batchnorm sum of a step that failed here.
        """
        for down in self.down[1:]:
            down.ring(failed=True)
        for conn in self.conns:
            conn.close()
        for channel in self.up[1:] + self.down[1:]:
            os.close(channel.fd)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs, self.conns, self.up, self.down, self.arrays = [], [], [None], [None], None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _failure(self, rank: int) -> RunError:
        """The error for a worker that stopped answering: the one it reported, else how it ended."""
        conn, proc = self.conns[rank - 1], self.procs[rank - 1]
        try:
            if conn.poll(1.0):
                _check_reply(rank, conn.recv())
        except RunError as reported:
            return reported
        except (EOFError, OSError):
            pass
        try:
            code = proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = "none yet"
        return RunError(f"data parallel worker {rank} stopped (exit code {code}); "
                        "set train.workers: 1 to train in one process")

    def _reply(self, rank: int) -> tuple[float, int]:
        """Rank's (share loss, correct predictions) for this step, once it signals them."""
        if not self.up[rank].wait():
            raise self._failure(rank)
        loss, correct = self.arrays["replies"][rank]
        return float(loss), int(correct)

    # --- one step ---
    def __call__(self, model, loss, x_u8, y, transform, chunk_size: int):
        if model is not self.model or (self.budget() or 1) < self.workers:
            return batch_gradients(model, loss, x_u8, y, transform, chunk_size)
        return accumulate_chunks(len(y), chunk_size,
                                 lambda start, stop: self._pass(model, loss, x_u8[start:stop], y[start:stop], transform))

    def _pass(self, model, loss, x_u8, y, transform):
        """One forward and backward pass (a batch, or a chunk of one) split over the processes."""
        n = len(y)
        if n < self.workers or n > self.rows:
            return batch_gradients(model, loss, x_u8, y, transform, n)
        x = transform(x_u8)
        self.start(x, y)
        try:
            return self._step(model, loss, x, y)
        except BaseException:
            self.close()  # workers may be waiting inside the failed step; the next step starts new ones
            raise

    def _step(self, model, loss, x, y):
        n, W, arrays = len(y), self.workers, self.arrays
        bounds = [k * n // W for k in range(W + 1)]
        for name, p in model.named_params().items():
            np.copyto(arrays[f"param/{name}"], p)
        seeds = [layer.draw_seed() for layer in dropouts(model)]  # in layer order, as one process draws them
        arrays["x"][bounds[1]:n] = x[bounds[1]:]
        arrays["y"][bounds[1]:n] = y[bounds[1]:]
        threads = self.threads()
        own = blas_threads()
        if own != threads:
            set_blas_threads(threads)  # the run's other threads are the workers' now; back after this share
        for rank in range(1, W):
            arrays["steps"][rank] = [n, bounds[rank], bounds[rank + 1], threads, *seeds]
            self.down[rank].ring()
        try:
            share_loss, correct = compute_share(model, loss, self.reducer, seeds, n, 0, bounds[1], x, y)
        finally:
            if own != threads:
                set_blas_threads(own)
        total = share_loss * bounds[1] / n
        replies = [self._reply(rank) for rank in range(1, W)]
        grads = model.named_grads()
        for rank, (rank_loss, rank_correct) in enumerate(replies, start=1):
            total += rank_loss * (bounds[rank + 1] - bounds[rank]) / n
            correct += rank_correct
        others = [{name: arrays[f"grad{rank}/{name}"] for name in grads} for rank in range(1, W)]
        return total, correct, model.packed_grads(grads, *others)  # summed in rank order


def _check_reply(rank: int, message):
    """A worker's reply to a step, or the RunError it reported instead."""
    if isinstance(message, tuple) and message and message[0] == "error":
        raise RunError(f"data parallel worker {rank} failed: {message[1]}")
    return message


def _worker_env(threads: int) -> dict:
    """The environment of a worker: this one, cnntrain importable, and its BLAS thread count set
    before NumPy loads (unless the user set one explicitly)."""
    from .threads import THREAD_VARIABLES, explicit_env

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if explicit_env() is None:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env
