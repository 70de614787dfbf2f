"""Keep freed memory in the process instead of handing it back to the OS after every step.

A training step allocates and frees the same few-megabyte arrays again and again. glibc serves
blocks that large with fresh mmap()s (or trims the heap after freeing them), so every step pays
thousands of page faults to zero-fill memory it just returned. Raising the mmap and trim
thresholds once makes those blocks come back from the heap; the process keeps its peak
footprint, which a training process reaches every step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap is kept


def _libc_function(name: str):
    """glibc's function `name` (a ctypes function), or None where there is no glibc or no such function."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # musl and others have no mallopt or malloc_trim
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no glibc (a no-op)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))


def release_freed_memory() -> bool:
    """Hand the heap's free memory back to the OS now (glibc's malloc_trim); False where there is no glibc."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started or since reset_peak_memory(), in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak_memory() -> bool:
    """Start peak_rss_mb() again from the current footprint (Linux: /proc/self/clear_refs); False where it can't."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False
