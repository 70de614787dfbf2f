"""The progress callback: a tqdm bar per epoch on stderr, or one plain line per epoch when not a terminal."""

from __future__ import annotations

import math
import sys

from .train import Callback


def _fmt(value: float, spec: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def epoch_line(logs: dict, epochs: int) -> str:
    return (f"epoch {logs['epoch']}/{epochs}  train_loss {_fmt(logs['train_loss'], '.4f')}  "
            f"train_acc {_fmt(logs['train_acc'], '.4f')}  val_loss {_fmt(logs['val_loss'], '.4f')}  "
            f"val_acc {_fmt(logs['val_acc'], '.4f')}  lr {logs['lr']:.3g}  {logs['seconds']:.1f}s")


class ProgressBar(Callback):
    """Shows loss, accuracy and lr while an epoch runs; writes to `stream` (stderr)."""

    def __init__(self, epochs: int, stream=None, bar: bool | None = None, refresh_steps: int = 10):
        self.epochs, self.stream = epochs, stream or sys.stderr
        self.bar_enabled = self.stream.isatty() if bar is None else bar
        self.refresh_steps = refresh_steps
        self.bar = None

    def on_train_begin(self, state, steps_per_epoch):
        self.steps = steps_per_epoch

    def on_epoch_begin(self, state):
        self.loss_sum, self.acc_sum, self.count = 0.0, 0.0, 0
        if self.bar_enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, desc=f"epoch {state.epoch + 1}/{self.epochs}", file=self.stream,
                            leave=True, dynamic_ncols=True, unit="step")

    def on_step_end(self, state, logs):
        self.loss_sum += logs["loss"]
        self.acc_sum += logs["acc"]
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.count % self.refresh_steps == 0 or self.count == self.steps:
                self.bar.set_postfix(loss=f"{self.loss_sum / self.count:.4f}", acc=f"{self.acc_sum / self.count:.4f}",
                                    lr=f"{logs['lr']:.3g}", refresh=False)

    def on_epoch_end(self, state, logs):
        if self.bar is not None:
            self.bar.set_postfix(loss=_fmt(logs["train_loss"], ".4f"), acc=_fmt(logs["train_acc"], ".4f"),
                                 val_acc=_fmt(logs["val_acc"], ".4f"), lr=f"{logs['lr']:.3g}")
            self.bar.close()
            self.bar = None
        else:
            print(epoch_line(logs, self.epochs), file=self.stream, flush=True)

    def on_train_end(self, state):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_interrupt = on_train_end
