"""The local executor: trials as processes on this machine, a few at a time, sharing its cores."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from ..threads import THREAD_VARIABLES, cores, explicit_env
from .trial import LOG, TrialResult, TrialTask, command, prepare


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the driver dies, even by SIGKILL (Linux), so no trial outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalExecutor:
    """Runs `jobs` trial processes at once, sharing the cores.

    By default each trial's thread policy (cnntrain.threads) gives it cores // live training
    runs BLAS threads, rechecked every epoch: two trials get one each, and the last one left
    running gets both. threads_per_trial (--cpus-per-trial) or the user's own OMP_NUM_THREADS /
    OPENBLAS_NUM_THREADS / MKL_NUM_THREADS fix the count instead. Each trial is its own process
    group, so Ctrl-C reaches the driver alone, which then asks every trial once (SIGTERM) to
    checkpoint and stop.
    """

    name = "local"

    def __init__(self, jobs: int = 1, threads_per_trial: int | None = None):
        self.slots = jobs
        self.env = dict(os.environ)
        self.threads = threads_per_trial
        if threads_per_trial is not None and explicit_env() is None:
            self.env.update({name: str(threads_per_trial) for name in THREAD_VARIABLES})
        self.running: dict[str, tuple[subprocess.Popen, TrialTask, float]] = {}

    def describe(self) -> str:
        threads = (f"{self.threads} BLAS thread(s) each" if self.threads and explicit_env() is None else
                   f"BLAS threads as {explicit_env()} says" if explicit_env() else
                   f"the {cores()} cores' BLAS threads shared among the running trials")
        return f"local executor: {self.slots} trial(s) at a time, {threads}"

    def start(self, task: TrialTask) -> None:
        prepare(task)
        with open(task.run_dir / LOG, "a") as log:  # a crash's traceback lands in the trial's log
            proc = subprocess.Popen(command(task), env=self.env, stdout=subprocess.PIPE, stderr=log, text=True,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        self.running[task.key] = (proc, task, time.time())

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        """The results of the trials that finished, waiting until one does (or `timeout` seconds: maybe none)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done = [key for key, (proc, _, _) in self.running.items() if proc.poll() is not None]
            if done or (deadline is not None and time.monotonic() >= deadline):
                return [self._result(*self.running.pop(key)) for key in done]
            time.sleep(0.1)

    @staticmethod
    def _result(proc: subprocess.Popen, task: TrialTask, started: float, stopped: bool = False) -> TrialResult:
        lines = proc.stdout.read().strip().splitlines()
        proc.stdout.close()
        if proc.returncode == 0 and lines:
            return TrialResult.from_json(lines[-1])
        try:  # the worker crashed: its traceback's last line is the best one-line error there is
            tail = (task.run_dir / LOG).read_text().strip().splitlines()[-1]
        except (OSError, IndexError):
            tail = ""
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return TrialResult(task.key, "interrupted" if stopped else "failed",  # stopped before it could checkpoint f"trial process {how}{': ' + tail if tail else ''}", os.uname().nodename,
                           round(time.time() - started, 3))

    def shutdown(self) -> list[TrialResult]:
        """Asks every running trial to checkpoint and stop; waits for them; their results."""
        for proc, _, _ in self.running.values():
            proc.send_signal(signal.SIGTERM)
        results = []
        for key, (proc, task, started) in list(self.running.items()):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            results.append(self._result(proc, task, started, stopped=True))
        self.running.clear()
        return results
