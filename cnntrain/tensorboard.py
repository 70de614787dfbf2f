"""TensorBoard event files in RUN_DIR/tensorboard (train.tensorboard), built with tensorboardX's protocol buffers.

Not through tensorboardX's SummaryWriter: it writes from a background thread whose flush() does not wait for
the queued events, names its file by the second (a resume within it truncates the file), and writes no
SessionLog START for a new run, so TensorBoard takes a resumed session's START as the first and purges nothing.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
from numbers import Real
from pathlib import Path

from .compare import flatten
from .errors import ConfigError, RunError
from .runs import read_csv
from .train import Callback

FINAL_METRICS = ("test_accuracy", "test_loss", "best_monitor_value", "best_val_accuracy", "final_train_loss",
                 "final_train_accuracy", "final_val_loss", "final_val_accuracy")


def require_tensorboard() -> None:
    """A one-line ConfigError when tensorboardX is missing (checked before a run directory is written)."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard needs: pip install 'cnntrain[tensorboard]'") from None


def hparam_value(value):
    """A config value as the hparams plugin takes it: bool, number or string (lists and null as JSON)."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


def grad_tag(column: str) -> str:
    """grad_norms.csv's `layers.0.grad_norm` -> `grad_norm/layers.0` (likewise update_ratio)."""
    layer, _, kind = column.rpartition(".")
    return f"{kind}/{layer}"


class TensorBoardLogger(Callback):
    """Per step `train/<steps.csv column>` (loss, acc, lr, ...) and, with a GradNormLogger, `grad_norm/<layer>`
    and `update_ratio/<layer>`; per epoch `epoch/<metrics.csv column>` (finite values) at the epoch's last step,
    so every curve shares the step axis; the flattened config as hparams, and `hparams/<summary key>` (test
    accuracy, best monitored value, ...) when the run completes (finish).

    Each hook's events are written and flushed at once, as the CSV rows are, so the files always cover
    what a checkpoint covers. A session (new or resumed at step S) starts its own event file with a
    SessionLog START at S: TensorBoard then drops every event at a step >= S from the earlier files (logged
    after the checkpoint), and step S is logged again from steps.csv and grad_norms.csv.
    """

    def __init__(self, run_dir: Path, config: dict, grad_norms=None):
        require_tensorboard()
        from tensorboardX.proto import event_pb2, summary_pb2
        from tensorboardX.record_writer import masked_crc32c
        from tensorboardX.summary import hparams

        self.pb, self.Summary, self.crc, self.hparams_summary = event_pb2, summary_pb2.Summary, masked_crc32c, hparams
        self.run_dir, self.dir = Path(run_dir), Path(run_dir) / "tensorboard"
        self.hparams = {key: hparam_value(v) for key, v in flatten(config).items()}
        self.grad_norms, self.path, self.file = grad_norms, None, None

    def write(self, *events) -> None:
        """Appends TFRecords (length, its masked CRC32C, the event, its CRC) and flushes them."""
        out = bytearray()
        for event in events:
            event.wall_time = event.wall_time or time.time()
            data = event.SerializeToString()
            header = struct.pack("<Q", len(data))
            out += header + struct.pack("<I", self.crc(header)) + data + struct.pack("<I", self.crc(data))
        try:
            if self.file is None:  # opened by on_train_begin, again by finish() after on_train_end
                self.file = open(self.path, "ab")
            self.file.write(out)
            self.file.flush()
        except OSError as exc:
            raise RunError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def scalars(self, step: int, values: dict) -> None:
        values = [self.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()
                  if isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)]
        if values:
            self.write(self.pb.Event(step=step, summary=self.Summary(value=values)))

    def on_train_begin(self, state, steps_per_epoch):
        self.dir.mkdir(parents=True, exist_ok=True)
        # sorted by name = by start (TensorBoard reads a run's files in name order); the count keeps names unique
        n = len(list(self.dir.glob("events.out.tfevents.*")))
        self.path = self.dir / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{n}"
        pb = self.pb
        self.write(pb.Event(file_version="brain.Event:2"),
                   pb.Event(step=state.step, session_log=pb.SessionLog(status=pb.SessionLog.START)))
        if state.step == 0:
            self.write(pb.Event(step=0, summary=self.hparams_summary(self.hparams, {})[1]))  # session start info
        else:
            self.replay(state.step)

    def replay(self, step: int) -> None:
        """Logs step `step` again from the CSV files (resume truncated them to it), as the START at it dropped it."""
        values = {}
        for name, tag in (("steps.csv", lambda c: f"train/{c}"), ("grad_norms.csv", grad_tag)):
            table = read_csv(self.run_dir / name) if (self.run_dir / name).is_file() else {}
            if len(table.get("step", ())) and table["step"][-1] == step:
                values.update({tag(c): v[-1] for c, v in table.items() if c not in ("step", "epoch")})
        self.scalars(step, values)

    def on_step_end(self, state, logs):
        values = {f"train/{k}": v for k, v in logs.items() if k not in ("step", "epoch")}
        if self.grad_norms is not None:  # its row is complete once the update is done, before any on_step_end
            values.update({grad_tag(c): v for c, v in self.grad_norms.row.items()})
        self.scalars(logs["step"], values)

    def on_epoch_end(self, state, logs):
        self.scalars(logs["step"], {f"epoch/{k}": v for k, v in logs.items() if k != "step"})

    def on_train_end(self, state):
        if self.file is not None:
            self.file.close()
            self.file = None

    on_interrupt = on_train_end

    def finish(self, summary: dict) -> None:
        """The completed run's final metrics, as `hparams/<key>` at its last step, and the session's end."""
        self.scalars(summary["steps"], {f"hparams/{k}": summary.get(k) for k in FINAL_METRICS})
        self.write(self.pb.Event(step=summary["steps"], summary=self.hparams_summary(self.hparams, {})[2]))
        self.on_train_end(None)
