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
LINE = 8  # int64 entries in a 64-byte cache line: each process writes its own lines only


class Channel:
    """Signals from one process to another: a count in shared memory, and a pipe for a sleeping receiver.

    ring() adds one to the count; the receiver's wait() returns once the count has grown by one.
    A waiting receiver first watches the count for up to SPIN_SECONDS, yielding the core at every
    turn, so a signal passes with no system call on either side: a pipe byte took 50-120 us from
    write to read on the Intel host, mostly after the waiter had spun a few milliseconds, a count
    5-20 us, and a data parallel step signals about a dozen times (the step, each batchnorm sum,
    the reply). Past that the receiver marks itself asleep and sleeps on the pipe, and a sender that
    sees the mark writes a byte, so an idle process costs nothing. The mark and the count can cross
    (each side may read the other's line before its own write is seen), so a sleeper also wakes
    every few milliseconds to look at the count: a signal can come late, never be lost. The pipe
    also tells a receiver that the sender died (its end closes); a sender that fails says so with
    ring(failed=True).

    Yielding at every turn matters when the scheduler puts both ranks on one core (the host took
    the other away, or other work fills it): a plain spin burns the time the rank it waits for needs,
    and mnist_bn_dropout trained at a quarter of its two-core speed (979-1,122 images/s); yielding,
    at what one core can do (1,904-2,134).
    """

    def __init__(self, lines: np.ndarray, fd: int):
        """lines: a (2, LINE) int64 view of shared memory, zeros at first: the count and the failure
        flag (written by the sender), the asleep mark (written by the receiver). fd: this process's
        end of the pipe (the write end for the sender, the read end for the receiver)."""
        self.sent, self.asleep = lines[0], lines[1]
        self.fd, self.seen = fd, 0

    def ring(self, failed: bool = False) -> None:
        if failed:
            self.sent[1] = 1
        else:
            self.sent[0] += 1  # the sender alone writes it
        if self.asleep[0]:
            try:
                os.write(self.fd, b"1")
            except OSError:  # the receiver is gone
                pass

    def wait(self, seconds: float = SPIN_SECONDS) -> bool:
        """Wait for the next signal: True once it came, False if the sender failed or died instead."""
        self.seen += 1
        sent, deadline = self.sent, time.perf_counter() + seconds
        while sent[0] < self.seen:
            if sent[1]:
                return False
            if time.perf_counter() >= deadline:
                return self._sleep()
            os.sched_yield()
        return True

    def _sleep(self) -> bool:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        self.asleep[0] = 1
        try:
            timeout = 1
            while self.sent[0] < self.seen:
                if self.sent[1]:
                    return False
                if poller.poll(timeout):
                    if not os.read(self.fd, 4096):  # the sender's end closed: it ended
                        return self.sent[0] >= self.seen and not self.sent[1]
                timeout = min(2 * timeout, 50)
            return True
        finally:
            self.asleep[0] = 0


def channel_lines(ranks: int) -> tuple:
    """Shared memory for the channels of ranks 1..ranks-1 to and from rank 0, as a layout() spec."""
    return ((ranks, 2, 2, LINE), np.int64)  # [rank, up or down, the sender's line or the receiver's]


class Reducer:
    """Sums per-channel statistics over the ranks, in rank order, identical on every rank.

    Rank k > 0 writes its partial sum to its slot and signals its `up` channel; rank 0 waits for
    every up channel, writes the sum into the result buffer of this call's parity and signals every
    `down` channel. Two result buffers let a fast rank start the next call while a slow one still
    reads. A dead or failed rank ends the other side's wait (Channel), so neither waits forever.
    """

    def __init__(self, rank: int, slots: np.ndarray, results: np.ndarray, up, down, failed=None):
        """up, down: the Channels by rank (rank 0 holds all, rank k its own at index k).
        failed(k): the error rank 0 raises when rank k stops answering (workers raise none)."""
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
                if not self.up[k].wait():
                    raise self.failed(k)
            np.copyto(out, local.ravel())
            for k in range(1, len(self.slots)):
                out += self.slots[k, :size]
            for k in range(1, len(self.slots)):
                self.down[k].ring()
        else:
            np.copyto(self.slots[self.rank, :size], local.ravel())
            self.up[self.rank].ring()
            if not self.down[self.rank].wait():
                raise SystemExit(0)  # rank 0 is gone, or stopped this worker
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
