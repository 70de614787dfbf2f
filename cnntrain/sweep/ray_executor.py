"""The Ray executor: each trial a Ray task with K CPUs on whatever node has them; no shared filesystem.

A task trains its trial in a scratch folder on its node and returns the run directory as a
tar.gz archive; a promoted or interrupted trial is shipped out the same way. The driver replaces
its copy only with a complete archive, so a task that Ray re-runs after its node died starts
again from the same archive. Ray is imported only when a RayExecutor is made.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from ..runs import write_json
from ..threads import THREAD_VARIABLES
from .local import _die_with_parent
from .trial import LOG, TrialResult, TrialTask, command, prepare

MAX_RETRIES = 3        # re-runs of a task whose worker or node died; a trial's own failure is never re-run
STOP_SECONDS = 120.0   # how long shutdown() waits for cancelled trials to checkpoint and send their folders back
POLL_SECONDS = 0.5     # a cancel reaches a task between two polls of its trial process


def pack(run_dir: Path) -> bytes:
    """A run directory as tar.gz bytes, its files at the archive's top level."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:  # checkpoints barely compress
        for path in sorted(run_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack(archive: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: no absolute paths, links out or device files
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder)


def run_task(task: TrialTask, archive: bytes | None, threads: int) -> tuple[str, bytes]:
    """The Ray task: one trial in a scratch folder on this node; (TrialResult JSON, run directory as tar.gz).

    A trial process (not this worker) trains, so the BLAS variables apply before NumPy loads and a
    crash is contained. ray.cancel raises KeyboardInterrupt here: the trial is asked to checkpoint
    and stop (SIGTERM), and its folder still goes back.
    """
    import ray

    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="cnntrain-trial-"))
    try:
        run_dir = scratch / task.key
        if archive is not None:
            unpack(archive, run_dir)
        prepare(task, run_dir)
        env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
        stopped = False
        with open(run_dir / LOG, "a") as log, open(scratch / "stdout", "w+") as out:
            proc = subprocess.Popen(command(task, run_dir), env=env, cwd=scratch, stdout=out, stderr=log,
                                    start_new_session=True, preexec_fn=_die_with_parent)
            try:
                while proc.poll() is None:
                    time.sleep(POLL_SECONDS)
            except KeyboardInterrupt:
                stopped = True
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            out.seek(0)
            lines = out.read().strip().splitlines()
        result = _result(task, run_dir, proc.returncode, lines, stopped, started)
        node_id = ray.get_runtime_context().get_node_id()
        result.node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, ray node {node_id[:8]})"
        return result.to_json(), pack(run_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _result(task: TrialTask, run_dir: Path, returncode: int, lines: list[str], stopped: bool,
            started: float) -> TrialResult:
    if returncode == 0 and lines:
        return TrialResult.from_json(lines[-1])
    try:  # the trial process died: its traceback's last line is the best one-line error there is
        tail = (run_dir / LOG).read_text().strip().splitlines()[-1]
    except (OSError, IndexError):
        tail = ""
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
    # stopped before it could checkpoint: interrupted, so a resumed sweep runs it again
    return TrialResult(task.key, "interrupted" if stopped else "failed",
                       f"trial process {how}{': ' + tail if tail else ''}", "", round(time.time() - started, 3))


class RayExecutor:
    """Trials as Ray tasks of `cpus_per_trial` CPUs each, on a running cluster (address) or a local Ray.

    slots: as many trials as the cluster's nodes hold at once (max_running, if given).
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_trial: int = 1, max_running: int | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("the ray executor needs Ray: pip install 'cnntrain[ray]'") from None
        if cpus_per_trial < 1:
            raise ConfigError(f"--cpus-per-trial: must be at least 1, got {cpus_per_trial}")
        self.ray = ray
        self.cpus = cpus_per_trial
        self.owns_ray = not ray.is_initialized()  # a Ray this process already joined is left as it is
        if self.owns_ray:
            _check_reachable(address)
            local = {"include_dashboard": False} if address is None else {}
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **local)
            except ConnectionError as exc:
                raise ConfigError(f"--address {address}: no Ray cluster there ({exc})") from None
        alive = [node for node in ray.nodes() if node["Alive"]]
        node_cpus = [int(node["Resources"].get("CPU", 0)) for node in alive]
        if max(node_cpus, default=0) < cpus_per_trial:
            if self.owns_ray:
                ray.shutdown()
            raise ConfigError(f"--cpus-per-trial {cpus_per_trial}: no Ray node has that many CPUs "
                              f"(the largest has {max(node_cpus, default=0)})")
        self.nodes, self.total_cpus = len(alive), sum(node_cpus)
        self.slots = max_running or max(1, sum(c // cpus_per_trial for c in node_cpus))
        blas = {name: str(cpus_per_trial) for name in THREAD_VARIABLES}
        self.remote = ray.remote(run_task).options(
            num_cpus=cpus_per_trial, max_retries=MAX_RETRIES, retry_exceptions=False,
            runtime_env={"env_vars": blas})
        self.running: dict[str, tuple[object, TrialTask, float]] = {}  # key -> (ObjectRef, task, start time)

    def describe(self) -> str:
        return f"ray executor: {self.nodes} node(s), {self.total_cpus} CPU(s), {self.cpus} CPU(s) per trial"

    def start(self, task: TrialTask) -> None:
        archive = pack(task.run_dir) if task.resume else None
        ref = self.remote.remote(task, archive, self.cpus)
        self.running[task.key] = (ref, task, time.time())

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        """The results of the trials that finished, waiting until one does (or `timeout` seconds: maybe none);
        their folders are written back."""
        if not self.running:
            return []
        keys = {ref: key for key, (ref, _, _) in self.running.items()}
        ready, _ = self.ray.wait(list(keys), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(list(keys), num_returns=len(keys), timeout=0)
        return [self._collect(keys[ref]) for ref in ready]

    def _collect(self, key: str, timeout: float | None = None) -> TrialResult:
        """A finished task's result, its run directory replacing the driver's copy; a Ray failure as a result."""
        exceptions = self.ray.exceptions
        ref, task, started = self.running.pop(key)
        try:
            text, archive = self.ray.get(ref, timeout=timeout)
        except exceptions.TaskCancelledError:
            return TrialResult(key, "interrupted", "stopped before it sent its run directory back", "",
                               round(time.time() - started, 3))
        except exceptions.GetTimeoutError:
            self.ray.cancel(ref, force=True)
            return TrialResult(key, "interrupted", f"did not stop within {STOP_SECONDS:g} s; killed",
                               "", round(time.time() - started, 3))
        except exceptions.RayError as exc:  # its worker or node died MAX_RETRIES + 1 times, or this module failed
            return TrialResult(key, "failed", f"ray: {_one_line(exc)}", "", round(time.time() - started, 3))
        replace_run_dir(task.run_dir, archive)
        return TrialResult.from_json(text)

    def shutdown(self) -> list[TrialResult]:
        """Asks every running trial to checkpoint and stop; their results and folders; leaves Ray if it joined it."""
        for ref, _, _ in self.running.values():
            self.ray.cancel(ref)  # force=False: KeyboardInterrupt in run_task, which stops the trial process
        deadline = time.time() + STOP_SECONDS
        results = [self._collect(key, max(0.0, deadline - time.time())) for key in list(self.running)]
        if self.owns_ray:
            self.ray.shutdown()
        return results


def replace_run_dir(run_dir: Path, archive: bytes) -> None:
    """The driver's copy of a run directory replaced by an archive's, never left half-written."""
    incoming, old = run_dir.with_name(f".{run_dir.name}.incoming"), run_dir.with_name(f".{run_dir.name}.old")
    for leftover in (incoming, old):  # of a driver killed while replacing
        shutil.rmtree(leftover, ignore_errors=True)
    unpack(archive, incoming)
    summary = incoming / "summary.json"
    if summary.is_file():  # it names the scratch folder the trial ran in
        write_json(summary, {**json.loads(summary.read_text()), "run_dir": str(run_dir)})
    if run_dir.exists():
        os.replace(run_dir, old)
    os.replace(incoming, run_dir)
    shutil.rmtree(old, ignore_errors=True)


def _check_reachable(address: str | None) -> None:
    """A HOST:PORT where nothing listens fails now, not after Ray's minutes of retries."""
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigError(f"--address {address}: no Ray cluster there ({exc.strerror or exc})") from None


def _one_line(exc: Exception) -> str:
    cause = getattr(exc, "cause", None)  # RayTaskError: the exception raised in the task
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
