"""One trial of a sweep: what an executor runs, where it runs, and what it reports back.

A trial is an ordinary run directory. An executor starts `python -m cnntrain.sweep.trial`
(a fresh process, so the BLAS thread variables it is given take effect) on a TrialTask: a new
trial trains from its complete experiment file, a promoted or interrupted one resumes from its
last checkpoint; both stop after `until_epoch` (a halving rung) with status "paused", the
schedule still spanning train.epochs, so a trial promoted rung by rung ends bit-identical to
one trained straight through.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FINISHED = ("completed", "failed", "diverged")  # a trial in one of these states never runs again
LOG = "trial.log"  # the trial's own output, in its run directory
TASK_CONFIG = "task.yaml"  # a new trial's experiment file, written by the driver before it starts


@dataclass
class TrialTask:
    key: str            # the trial's folder name in the sweep's group folder, e.g. "t007"
    config_text: str    # the trial's complete experiment file (every override applied, no sweep section)
    run_dir: Path       # the trial's run directory on the driver's side
    until_epoch: int    # pause after this epoch (a rung); train.epochs stays the whole length
    resume: bool        # continue from run_dir/checkpoints/last.npz


@dataclass
class TrialResult:
    key: str
    status: str                # paused | completed | failed | diverged | interrupted
    error: str | None = None   # the one-line error of a trial that failed on its own
    node: str = ""             # the host it ran on
    wall_seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrialResult":
        return cls(**json.loads(text))


def command(task: TrialTask, run_dir: Path | None = None) -> list[str]:
    """The worker's command line for `task`, running in run_dir (default: the task's own)."""
    args = [sys.executable, "-m", "cnntrain.sweep.trial", "--run-dir", str(run_dir or task.run_dir),
            "--until", str(task.until_epoch)]
    return args + (["--resume"] if task.resume else [])


def prepare(task: TrialTask, run_dir: Path | None = None) -> None:
    """A new trial's folder holding only its experiment file, which the worker trains from."""
    if not task.resume:
        from ..runs import atomic_write_text

        run_dir = Path(run_dir or task.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / TASK_CONFIG, task.config_text)


def run(run_dir: Path, until_epoch: int, resume: bool) -> TrialResult:
    """Train or resume one trial in this process; its status, never an exception for a trial's own failure."""
    from ..build import experiment_from_text
    from ..errors import CnnTrainError, RunInterrupted
    from ..session import resume_run, train_from_config
    from ..train import Diverged

    start = time.time()
    with open(run_dir / LOG, "a") as log:
        echo = lambda line: print(line, file=log, flush=True)  # noqa: E731
        try:
            if resume:
                summary = resume_run(run_dir, echo=echo, progress=False, until_epoch=until_epoch)
            else:
                exp = experiment_from_text((run_dir / TASK_CONFIG).read_text(), str(run_dir / "config.yaml"))
                summary = train_from_config(exp, echo=echo, progress=False, run_dir=run_dir, until_epoch=until_epoch)
            status, error = summary["status"], None
        except RunInterrupted as exc:
            status, error = "interrupted", str(exc)
        except Diverged as exc:
            status, error = "diverged", str(exc)
        except CnnTrainError as exc:
            status, error = "failed", str(exc)
        if error:
            echo(f"error: {error}")
    (run_dir / TASK_CONFIG).unlink(missing_ok=True)  # the run's own config.yaml holds it now
    return TrialResult(run_dir.name, status, error, socket.gethostname(), round(time.time() - start, 3))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnntrain.sweep.trial", description="Run one sweep trial.")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--until", required=True, type=int)
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints/last.npz")
    args = parser.parse_args(argv)
    result = run(args.run_dir, args.until, args.resume)
    print(result.to_json(), flush=True)  # the last line of stdout is the result
    return 0


if __name__ == "__main__":
    sys.exit(main())
