"""The monitored metric: the one meaning of "best" for best.npz, early stopping, summary.json,
the final line and `cnntrain compare`."""

from __future__ import annotations

import math
from dataclasses import dataclass

MONITORS = ("val_acc", "val_loss", "train_acc", "train_loss")


@dataclass(frozen=True)
class Monitor:
    """Follows `metric`, or its train_* twin when there is no validation split to measure val_* on.

    Accuracies are maximised, losses minimised; a value is an improvement when it beats the best
    so far by more than min_delta. NaN never improves.
    """

    metric: str = "val_acc"
    has_validation: bool = True
    min_delta: float = 0.0

    def __post_init__(self):
        if self.metric not in MONITORS:
            raise ValueError(f"monitor: expected one of {', '.join(MONITORS)}, got {self.metric!r}")

    @property
    def name(self) -> str:
        """The metrics.csv column actually followed."""
        if not self.has_validation and self.metric.startswith("val_"):
            return "train_" + self.metric[len("val_"):]
        return self.metric

    @property
    def mode(self) -> str:
        return "max" if self.name.endswith("acc") else "min"

    @property
    def fell_back(self) -> bool:
        return self.name != self.metric

    def describe(self) -> str:
        """`val_acc`, or `train_acc (no validation split)` when the monitor fell back."""
        return f"{self.name} (no validation split)" if self.fell_back else self.name

    def value(self, logs: dict) -> float:
        return float(logs[self.name])

    def improved(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best + self.min_delta if self.mode == "max" else value < best - self.min_delta

    def best(self, history) -> tuple[float | None, int]:
        """(best value, its epoch) over metrics rows, replayed as training saw them; (None, 0) for none."""
        best, epoch = None, 0
        for row in history:
            value = self.value(row)
            if self.improved(value, best):
                best, epoch = value, int(row["epoch"])
        return best, epoch

    def format(self, value) -> str:
        """An accuracy as a percentage, a loss with four decimals; '-' for none."""
        if value is None or not math.isfinite(value):
            return "-"
        return f"{100 * value:.2f}%" if self.name.endswith("acc") else f"{value:.4f}"
