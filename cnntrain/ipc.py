"""Shared memory and pipes between the processes of a data parallel run (parallel.py)."""

from __future__ import annotations

import math
import mmap
import os
import select
import time
import tempfile

import numpy as np

from .errors import RunError


SPIN_SECONDS = 0.002


def spin_until_readable(fd: int, seconds: float = SPIN_SECONDS) -> None:
    """Poll fd without sleeping for up to `seconds`, then return (the caller's read may still block).

    A process asleep in read() takes 50-150 us to run again after the byte arrives, and a data
    parallel step waits several times (each batchnorm sum, each reply): busy-waiting briefly first,
    as OpenMP threads do, made steps 5-15% faster. Past `seconds` the wait is an ordinary blocking
    read, so an idle process costs nothing. A closed other end also counts as readable.

    Each turn of the loop yields the core (sched_yield): when the scheduler puts two ranks on one
    core (the host took the other away, or other work fills it), a plain spin burns the time the
    rank it waits for needs, and mnist_bn_dropout trained at a quarter of its two-core speed
    (979-1,122 images/s); yielding, at what one core can do (1,904-2,134). With a core each there
    is nobody to yield to and the step is as fast as before.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.perf_counter() + seconds
    while not poller.poll(0) and time.perf_counter() < deadline:
        os.sched_yield()


class Reducer:
    """Sums per-channel statistics over the ranks, in rank order, identical on every rank.

    Rank k > 0 writes its partial sum to its slot and writes one byte to its `up` pipe; rank 0
    reads a byte from every up pipe, writes the sum into the result buffer of this call's parity
    and writes a byte to every `down` pipe. Two result buffers let a fast rank start the next call
    while a slow one still reads. A pipe read returns nothing when the other end's process has
    died, so neither side can wait forever for a dead one; a worker that fails sends FAILED up.
    """

    FAILED = b"x"

    def __init__(self, rank: int, slots: np.ndarray, results: np.ndarray, up, down, failed=None):
        """failed(k): the error rank 0 raises when rank k stops answering (workers raise none)."""
        self.rank, self.slots, self.results, self.up, self.down, self.failed = rank, slots, results, up, down, failed
        self.parity = 0
        self.batch = self.rows = 0  # rows of the whole batch and of this rank's share (set every step)

    def total(self, count: int) -> int:
        """A per-channel count over this rank's rows, for the whole batch."""
        return count // self.rows * self.batch

    def sum(self, local: np.ndarray) -> np.ndarray:
        size = local.size
        out = self.results[self.parity, :size]
        self.parity ^= 1
        if self.rank == 0:
            for k in range(1, len(self.slots)):
                spin_until_readable(self.up[k])
                if os.read(self.up[k], 1) != b"1":
                    raise self.failed(k)
            np.copyto(out, local.ravel())
            for k in range(1, len(self.slots)):
                out += self.slots[k, :size]
            for k in range(1, len(self.slots)):
                os.write(self.down[k], b"1")
        else:
            np.copyto(self.slots[self.rank, :size], local.ravel())
            os.write(self.up[self.rank], b"1")
            spin_until_readable(self.down[self.rank])
            if os.read(self.down[self.rank], 1) != b"1":
                raise SystemExit(0)  # rank 0 is gone
        return out.astype(local.dtype, copy=True).reshape(local.shape)


def shared_block(size: int) -> tuple[int, mmap.mmap]:
    """(fd, mapping) of `size` bytes of shared memory that vanishes with its last user.

    A file in /dev/shm (else, or when that is too small, the temp dir) unlinked at once: worker
    processes map it through the inherited fd, and nothing is left behind however they end. The
    space is allocated up front, so a full /dev/shm is an error here, not a SIGBUS mid-step.
    """
    size = max(size, 1)
    for folder in ("/dev/shm", None):
        if folder and not os.path.isdir(folder):
            continue
        fd, path = tempfile.mkstemp(prefix="cnntrain-", dir=folder)
        os.unlink(path)
        try:
            os.posix_fallocate(fd, 0, size)
            return fd, mmap.mmap(fd, size)
        except OSError as exc:
            os.close(fd)
            error = exc
    raise RunError(f"data parallel: cannot allocate {size / 2**20:.0f} MiB of shared memory ({error.strerror}); "
                   "set train.workers: 1 to train in one process")


def layout(specs: dict) -> tuple[dict, int]:
    """Byte offsets of named (shape, dtype) arrays in one block, 64-byte aligned, and its size."""
    offsets, size = {}, 0
    for name, (shape, dtype) in specs.items():
        offsets[name] = size
        size += -(-math.prod(shape) * np.dtype(dtype).itemsize // 64) * 64
    return offsets, size


def views(block, specs: dict) -> dict[str, np.ndarray]:
    """The named arrays of `specs` over a block laid out by layout()."""
    offsets, _ = layout(specs)
    buf = np.frombuffer(block, dtype=np.uint8)
    return {name: buf[offsets[name] : offsets[name] + math.prod(shape) * np.dtype(dtype).itemsize]
            .view(dtype).reshape(shape) for name, (shape, dtype) in specs.items()}
