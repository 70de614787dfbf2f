"""How many BLAS threads a training process uses, so that runs started side by side share the cores.

Each process's BLAS starts one thread per core; two runs on a 2-core machine then spin four
threads against each other and each runs several times slower than half its solo speed. A
training process registers its pid in a small folder of live cnntrain training processes and
uses max(1, cores // live) threads, rechecked at every epoch. An explicit OMP_NUM_THREADS /
OPENBLAS_NUM_THREADS / MKL_NUM_THREADS, or train.threads, always wins.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}


def thread_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """A pool of `threads` Python threads named cnntrain-<name>, made once and kept for the process
    (the optimizer's pieces, the rows of an evaluation batch)."""
    key = (name, threads)
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix=f"cnntrain-{name}")
    return _pools[key]


def quiet_idle_blas_threads() -> None:
    """Let OpenBLAS's idle threads sleep at once instead of spinning (unless the user chose).

    After a product on several threads, OpenBLAS keeps its idle threads spinning for 2^28 cycles
    (about 0.1 s). A data parallel run's rank 0 evaluates on all its threads, and the spinning
    threads then took a core from the worker processes: the first 20-30 steps after it ran at
    7-9 ms instead of 5 (lenet5, small). OPENBLAS_THREAD_TIMEOUT=4 (2^4 cycles) makes them sleep;
    one-process training on 2 threads was no slower for it (lenet5, keras_mnist). It is read when
    NumPy loads OpenBLAS, so the CLI sets it before any command imports NumPy.
    """
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def registry_dir() -> Path:
    """Where live training processes are listed: $CNNTRAIN_RUNTIME_DIR, else a per-user folder in the temp dir."""
    base = os.environ.get("CNNTRAIN_RUNTIME_DIR")
    if base:
        return Path(base) / "training"
    return Path(tempfile.gettempdir()) / f"cnntrain-{os.getuid()}" / "training"


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def explicit_env() -> str | None:
    """The first thread variable the user set, as 'NAME=value', or None."""
    for name in THREAD_VARIABLES:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name].strip()}"
    return None


def explicit_threads() -> int | None:
    """The thread count the user's variable asks for (1 if it is not a number), or None if none is set."""
    env = explicit_env()
    if env is None:
        return None
    value = env.split("=", 1)[1]
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), which tells a reused pid apart; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the parenthesised command name


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    now = _start_time(pid)
    return now is None or not started or now == started


class TrainingProcesses:
    """This process's entry in the folder of live training processes; count() counts the live ones."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or registry_dir()
        self.entry = self.folder / str(os.getpid())

    def __enter__(self) -> "TrainingProcesses":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.entry.write_text(_start_time(os.getpid()) or "")
        except OSError:  # a read-only temp dir only costs the thread policy its knowledge of others
            pass
        return self

    def __exit__(self, *exc) -> None:
        self.entry.unlink(missing_ok=True)

    def count(self) -> int:
        """Live registered processes, this one included; entries of dead processes are removed."""
        live = 1
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return live
        for entry in entries:
            if entry == self.entry or not entry.name.isdigit():
                continue
            try:
                started = entry.read_text().strip()
            except OSError:
                continue
            if _alive(int(entry.name), started):
                live += 1
            else:
                entry.unlink(missing_ok=True)
        return live


_controller = None


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries, found once (a lookup scans every
    loaded library; setting a count through a found controller takes microseconds)."""
    global _controller
    if _controller is None:
        import numpy  # noqa: F401  (loads the BLAS the controller must find)
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return [lib for lib in _controller.lib_controllers if lib.user_api == "blas"]


def blas_threads() -> int | None:
    """The BLAS library's current thread count, or None without a BLAS threadpoolctl knows."""
    counts = [lib.num_threads for lib in _blas_libraries()]
    return max(counts) if counts else None


def blas_library() -> str:
    """The loaded BLAS and the kernels it runs, e.g. "OpenBLAS 0.3.31, SkylakeX kernels" ("unknown BLAS"
    where threadpoolctl finds none); `cnntrain bench` prints it.

    OpenBLAS picks its kernels for the CPU unless OPENBLAS_CORETYPE names them, and the name says
    so: on an AVX-512 CPU, OPENBLAS_CORETYPE=Haswell halves the speed of the products.
    """
    names = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}
    described = []
    for lib in _blas_libraries():
        text = " ".join(filter(None, [names.get(lib.internal_api, lib.internal_api), lib.version]))
        kernels = getattr(lib, "architecture", None)
        if kernels:
            chosen = lib.internal_api == "openblas" and "OPENBLAS_CORETYPE" in os.environ
            text += f", {kernels} kernels" + (" (set by OPENBLAS_CORETYPE)" if chosen else "")
        described.append(text)
    return "; ".join(described) or "unknown BLAS"


# OpenBLAS's kernel sets that use AVX-512, and the CPU flags they need (Linux lists a flag only
# where the kernel saves its registers, so a listed flag is usable)
AVX512_KERNELS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first CPU in `cpuinfo` (none where there is no such file)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def blas_hint(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """A line for `cnntrain bench` when OPENBLAS_CORETYPE keeps OpenBLAS off the AVX-512 kernels of a CPU
    that has them (the products then run at about half speed), else None."""
    chosen = os.environ.get("OPENBLAS_CORETYPE")
    if not chosen or not AVX512_FLAGS <= cpu_flags(cpuinfo):
        return None
    kernels = [lib.architecture for lib in _blas_libraries()
               if lib.internal_api == "openblas" and getattr(lib, "architecture", None)]
    if not kernels or any(k.lower() in AVX512_KERNELS for k in kernels):
        return None
    return (f"this CPU has AVX-512, which OPENBLAS_CORETYPE={chosen} leaves unused: without it "
            "(env -u OPENBLAS_CORETYPE) products run up to twice as fast, if you need not match other machines' bits")


def set_blas_threads(n: int) -> None:
    for lib in _blas_libraries():
        lib.set_num_threads(n)


def choose(requested: int | None, live: int) -> tuple[int | None, str]:
    """(BLAS threads to use, why), or (None, why) when the environment decides.

    train.threads wins, then an explicit environment variable; else max(1, cores // live runs).
    """
    if requested is not None:
        return requested, "train.threads"
    env = explicit_env()
    if env is not None:
        return None, env
    n = cores()
    return max(1, n // live), f"{live} cnntrain run{'s' if live > 1 else ''} training on {n} core{'s' if n > 1 else ''}"
