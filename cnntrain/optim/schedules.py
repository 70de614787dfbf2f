"""Learning-rate schedules: pure closed-form callables lr(step) -> float, step counted from 0."""

from __future__ import annotations

from ..registry import SCHEDULES


class Schedule:
    def __init__(self, lr: float):
        self.lr0 = float(lr)

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@SCHEDULES.register("constant")
class Constant(Schedule):
    """lr(t) = lr0."""

    def __call__(self, step):
        return self.lr0


def build_schedule(name: str, options: dict, lr: float, steps_per_epoch: int, total_steps: int,
                   where: str = "schedule") -> Schedule:
    """A schedule from its config entry; epoch-valued options become steps here, once."""
    return SCHEDULES.create(name, {"lr": lr, **options}, where=where)
