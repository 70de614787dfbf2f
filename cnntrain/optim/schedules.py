"""Learning-rate schedules: pure closed-form callables lr(step) -> float, step counted from 0.

lr(step) is the rate of the (step+1)-th optimizer update, so a run resumes from the step number
alone. A registered schedule maps t, the time in units of its `interval`, to a value;
build_schedule() makes lr(step) from it: with interval 'epoch', t = floor(step / steps_per_epoch)
(the lr is constant within an epoch, as with PyTorch schedulers stepped once per epoch), and a
linear Warmup, when asked for, goes in front. Momentum schedules are built the same way.
"""

from __future__ import annotations

import bisect
import inspect
import math
from typing import Callable

from ..errors import ConfigError
from ..registry import SCHEDULES, did_you_mean, join_path
from .optimizers import check_number

INTERVALS = ("epoch", "step")


def check_int(value, name: str, low: int = 1) -> int:
    """value if it is an int >= low, else ValueError "name: must be an integer >= low, got value"."""
    if value is None:
        raise ValueError(f"{name}: required, an integer >= {low}")
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
    return value


def check_rate(value, name: str) -> float:
    """A required rate k > 0."""
    if value is None:
        raise ValueError(f"{name}: required, a number > 0")
    return check_number(value, name, 0.0, low_open=True)


class Schedule:
    """Base: self(t) is the value at time t in units of `interval`; also takes the common options.

    interval: 'epoch' or 'step'. warmup_epochs or warmup_steps (not both) and warmup_start_lr
    describe the linear Warmup that build_schedule puts in front. Called directly, a schedule
    applies neither: it is the closed form in t.
    """

    length_option: str | None = None  # the option that build_schedule fills with the rest of training when null

    def __init__(self, lr: float, interval: str = "epoch", warmup_epochs: float = 0.0, warmup_steps: int = 0,
                 warmup_start_lr: float = 0.0):
        self.lr0 = check_number(lr, "lr", 0.0)
        if interval not in INTERVALS:
            raise ValueError(f"interval: must be 'epoch' or 'step', got {interval!r}"
                             f"{did_you_mean(interval, INTERVALS)}")
        self.interval = interval
        self.warmup_epochs = check_number(warmup_epochs, "warmup_epochs", 0.0)
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", 0)
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError(f"warmup_epochs: give warmup_epochs or warmup_steps, not both "
                             f"(got {warmup_epochs!r} and {warmup_steps!r})")
        self.warmup_start_lr = check_number(warmup_start_lr, "warmup_start_lr", 0.0)

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.options = inspect.signature(cls).bind(*args, **kwargs).arguments  # what replace() builds on
        return self

    def replace(self, **changes) -> "Schedule":
        """The same schedule with some options changed (the base lr, or a length filled in)."""
        return type(self)(**{**self.options, **changes})

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _signature(cls)

    def __call__(self, t) -> float:
        raise NotImplementedError


def _signature(cls) -> inspect.Signature:
    """The options of cls.__init__, then the common ones of Schedule.__init__ that it passes on as **common.

    Registry.create() checks option names against this and config.py reads the defaults from it,
    so every schedule lists (and resolves) the common options while they are written once.
    """
    own = [p for p in inspect.signature(cls.__init__).parameters.values()
           if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in own}
    common = [p for p in inspect.signature(Schedule.__init__).parameters.values()
              if p.name != "self" and p.name not in names]
    return inspect.Signature(own + common)


@SCHEDULES.register("constant")
class Constant(Schedule):
    """lr(t) = lr0."""

    def __call__(self, t):
        return self.lr0


@SCHEDULES.register("step")
class Step(Schedule):
    """lr(t) = lr0 * gamma ** floor(t / step_size)   (halve every 50 epochs: gamma 0.5, step_size 50)."""

    def __init__(self, lr: float, step_size: int | None = None, gamma: float = 0.1, **common):
        super().__init__(lr, **common)
        self.step_size = check_int(step_size, "step_size", 1)
        self.gamma = check_number(gamma, "gamma", 0.0, low_open=True)

    def __call__(self, t):
        return self.lr0 * self.gamma ** (t // self.step_size)


@SCHEDULES.register("multistep")
class MultiStep(Schedule):
    """lr(t) = lr0 * gamma ** (number of milestones <= t)   (milestones strictly increasing, >= 1)."""

    def __init__(self, lr: float, milestones: list | None = None, gamma: float = 0.1, **common):
        super().__init__(lr, **common)
        expected = "a list of strictly increasing integers >= 1, e.g. [30, 60]"
        if milestones is None:
            raise ValueError(f"milestones: required, {expected}")
        ok = isinstance(milestones, (list, tuple)) and len(milestones) > 0 and all(
            isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in milestones) and all(
            a < b for a, b in zip(milestones, milestones[1:]))
        if not ok:
            raise ValueError(f"milestones: must be {expected}, got {milestones!r}")
        self.milestones = list(milestones)
        self.gamma = check_number(gamma, "gamma", 0.0, low_open=True)

    def __call__(self, t):
        return self.lr0 * self.gamma ** bisect.bisect_right(self.milestones, t)


@SCHEDULES.register("exponential")
class Exponential(Schedule):
    """lr(t) = lr0 * exp(-k * t)."""

    def __init__(self, lr: float, k: float | None = None, **common):
        super().__init__(lr, **common)
        self.k = check_rate(k, "k")

    def __call__(self, t):
        return self.lr0 * math.exp(-self.k * t)


@SCHEDULES.register("inverse_time")
class InverseTime(Schedule):
    """lr(t) = lr0 / (1 + k * t)."""

    def __init__(self, lr: float, k: float | None = None, **common):
        super().__init__(lr, **common)
        self.k = check_rate(k, "k")

    def __call__(self, t):
        return self.lr0 / (1 + self.k * t)


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """lr(t) = min_lr + (lr0 - min_lr) * (1 + cos(pi * t / t_max)) / 2 for t <= t_max, min_lr after.

    t_max: null anneals over the rest of training after any warmup (build_schedule fills it in).
    """

    length_option = "t_max"

    def __init__(self, lr: float, t_max: float | None = None, min_lr: float = 0.0, **common):
        super().__init__(lr, **common)
        self.t_max = None if t_max is None else check_number(t_max, "t_max", 0.0, low_open=True)
        self.min_lr = check_number(min_lr, "min_lr", 0.0)

    def __call__(self, t):
        if self.t_max is None:
            raise ValueError("t_max: not set; build_schedule() fills it in from the length of training")
        if t >= self.t_max:
            return self.min_lr
        return self.min_lr + (self.lr0 - self.min_lr) * (1 + math.cos(math.pi * t / self.t_max)) / 2


@SCHEDULES.register("warmup_cosine")
class WarmupCosine(Cosine):
    """cosine after a linear warmup: use with warmup_epochs/steps (default: 1 epoch when neither is given).

    The same lr as {name: cosine} with the same options; warmup_epochs: null means 1 unless
    warmup_steps is given.
    """

    def __init__(self, lr: float, t_max: float | None = None, min_lr: float = 0.0,
                 warmup_epochs: float | None = None, **common):
        if warmup_epochs is None:
            warmup_epochs = 0.0 if common.get("warmup_steps") else 1.0
        super().__init__(lr, t_max, min_lr, warmup_epochs=warmup_epochs, **common)


@SCHEDULES.register("linear")
class Linear(Schedule):
    """lr(t) = start + (end - start) * t / duration for t < duration, end after (a ramp, then constant).

    start: null means lr0; duration: null means the rest of training after any warmup. Also for
    momentum ramps: {name: linear, start: 0.5, end: 0.99, duration: 5}.
    """

    length_option = "duration"

    def __init__(self, lr: float, start: float | None = None, end: float = 0.0, duration: float | None = None,
                 **common):
        super().__init__(lr, **common)
        self.start = self.lr0 if start is None else check_number(start, "start", 0.0)
        self.end = check_number(end, "end", 0.0)
        self.duration = None if duration is None else check_number(duration, "duration", 0.0, low_open=True)

    def __call__(self, t):
        if self.duration is None:
            raise ValueError("duration: not set; build_schedule() fills it in from the length of training")
        if t >= self.duration:
            return self.end
        return self.start + (self.end - self.start) * t / self.duration


class PerEpoch:
    """lr(step) = inner(floor(step / steps_per_epoch)): constant within an epoch (interval 'epoch')."""

    def __init__(self, inner: Callable, steps_per_epoch: int):
        self.inner, self.steps_per_epoch = inner, check_int(steps_per_epoch, "steps_per_epoch")

    def __call__(self, step: int) -> float:
        return float(self.inner(step // self.steps_per_epoch))


class Warmup:
    """lr(step) = start_lr + (inner(0) - start_lr) * step / steps for step < steps, else inner(step - steps).

    A linear ramp per step in front of any step-callable; the inner schedule starts at the
    hand-over, so lr(steps) == inner(0) and its length is what remains of training.
    """

    def __init__(self, inner: Callable, steps: int, start_lr: float = 0.0):
        self.inner, self.steps = inner, check_int(steps, "warmup_steps")
        self.start_lr = check_number(start_lr, "warmup_start_lr", 0.0)
        self.target = float(inner(0))

    def __call__(self, step: int) -> float:
        if step < self.steps:
            return self.start_lr + (self.target - self.start_lr) * step / self.steps
        return float(self.inner(step - self.steps))


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """Epochs as a whole number of steps, rounded half up; at least 1 step when epochs > 0."""
    if not epochs:
        return 0
    return max(1, math.floor(epochs * steps_per_epoch + 0.5))


def build_schedule(schedule: Schedule, steps_per_epoch: int, total_steps: int, lr: float | None = None,
                   where: str = "schedule") -> Callable[[int], float]:
    """lr(step) from a constructed schedule: base lr set, interval applied, warmup in front.

    warmup_epochs become steps here, once. total_steps is the length of training; a null t_max
    (cosine) or duration (linear) becomes what follows the warmup, in units of the interval.
    Errors are ConfigErrors prefixed by `where`.
    """
    check_int(steps_per_epoch, "steps_per_epoch")
    check_int(total_steps, "total_steps")
    warmup = schedule.warmup_steps or epochs_to_steps(schedule.warmup_epochs, steps_per_epoch)
    if warmup >= total_steps:
        key = "warmup_steps" if schedule.warmup_steps else "warmup_epochs"
        epochs = schedule.warmup_epochs
        given = (f"{warmup} steps" if schedule.warmup_steps
                 else f"{epochs:g} epoch{'' if epochs == 1 else 's'} = {warmup} steps")
        raise ConfigError(join_path(where, f"{key}: the warmup ({given}) must be shorter than training "
                                           f"({total_steps} steps)", [key]))
    per = steps_per_epoch if schedule.interval == "epoch" else 1
    changes = {} if lr is None or lr == schedule.lr0 else {"lr": lr}
    length = schedule.length_option
    if length is not None and getattr(schedule, length) is None:
        changes[length] = (total_steps - warmup) / per
    if changes:
        try:
            schedule = schedule.replace(**changes)
        except ValueError as exc:
            raise ConfigError(join_path(where, str(exc), list(changes))) from None
    lr_at = PerEpoch(schedule, steps_per_epoch) if schedule.interval == "epoch" else schedule
    return Warmup(lr_at, warmup, schedule.warmup_start_lr) if warmup else lr_at


def momentum_options(options: dict, momentum: float | None = None, where: str = "momentum_schedule") -> dict:
    """A momentum schedule's constructor options with its base value as `lr`, each momentum checked in [0, 1).

    The base momentum is `lr`, else `start`, else the optimizer's `momentum`.
    """
    options = dict(options)
    base = options.pop("lr", None)
    if base is None:
        base = options.get("start")
    if base is None:
        base = momentum
    if base is None:
        raise ConfigError(join_path(where, "lr: the base momentum is required (or give start)", ["lr"]))
    for key, value in [("lr", base)] + [(k, options.get(k)) for k in ("start", "end", "min_lr", "warmup_start_lr")]:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value < 1:
            raise ConfigError(join_path(where, f"{key}: a momentum must be in [0, 1), got {value!r}", [key]))
    return {**options, "lr": base}


def build_momentum_schedule(schedule: Schedule, steps_per_epoch: int, total_steps: int,
                            where: str = "momentum_schedule") -> Callable[[int], float]:
    """momentum(step) from a schedule whose values are momenta (see momentum_options); every value in [0, 1).

    Set optimizer.mu from it before each step.
    """
    momentum_at = build_schedule(schedule, steps_per_epoch, total_steps, where=where)
    for step in range(total_steps):  # e.g. step with gamma > 1; closed forms are cheap to sweep
        value = momentum_at(step)
        if not 0 <= value < 1:
            raise ConfigError(f"{where}: momentum must stay in [0, 1), but it is {value:g} at step {step}")
    return momentum_at
