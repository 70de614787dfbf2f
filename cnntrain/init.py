"""Weight initialisers: INITS.create(name, kwargs)(shape, fan_in, fan_out, rng) -> float32 array.

fan_in is inputs per output unit (C*KH*KW for a conv), fan_out outputs per input.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError
from .registry import INITS


class Initializer:
    def __call__(self, shape, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
        return self.sample(tuple(shape), fan_in, fan_out, rng).astype(np.float32)

    def sample(self, shape, fan_in, fan_out, rng):
        raise NotImplementedError


@INITS.register("zeros")
class Zeros(Initializer):
    """All zeros: every unit computes the same thing and gets the same gradient (the symmetry problem)."""

    def sample(self, shape, fan_in, fan_out, rng):
        return np.zeros(shape)


@INITS.register("constant")
class Constant(Initializer):
    """Every weight equals `value`."""

    def __init__(self, value: float = 0.0):
        self.value = float(value)

    def sample(self, shape, fan_in, fan_out, rng):
        return np.full(shape, self.value)


@INITS.register("normal")
class Normal(Initializer):
    """N(0, std^2), the fixed-scale init of early course notes (std 0.01)."""

    def __init__(self, std: float = 0.01):
        if not std > 0:
            raise ValueError(f"std: must be > 0, got {std}")
        self.std = float(std)

    def sample(self, shape, fan_in, fan_out, rng):
        return rng.normal(0.0, self.std, shape)


@INITS.register("uniform")
class Uniform(Initializer):
    """U(-a, a)."""

    def __init__(self, a: float = 0.05):
        if not a > 0:
            raise ValueError(f"a: must be > 0, got {a}")
        self.a = float(a)

    def sample(self, shape, fan_in, fan_out, rng):
        return rng.uniform(-self.a, self.a, shape)


class _Scaled(Initializer):
    """Normal with std = sqrt(gain / fan), or uniform with the same variance."""

    gain, fan, dist = 1.0, "in", "normal"

    def sample(self, shape, fan_in, fan_out, rng):
        fan = {"in": fan_in, "avg": (fan_in + fan_out) / 2}[self.fan]
        std = math.sqrt(self.gain / fan)
        if self.dist == "normal":
            return rng.standard_normal(shape) * std
        limit = math.sqrt(3.0) * std
        return rng.uniform(-limit, limit, shape)


@INITS.register("lecun_normal")
class LecunNormal(_Scaled):
    """randn / sqrt(fan_in)."""


@INITS.register("lecun_uniform")
class LecunUniform(_Scaled):
    """U(-sqrt(3/fan_in), sqrt(3/fan_in))."""

    dist = "uniform"


@INITS.register("xavier_normal")
class XavierNormal(_Scaled):
    """Glorot: randn * sqrt(2 / (fan_in + fan_out))."""

    fan = "avg"


@INITS.register("xavier_uniform")
class XavierUniform(_Scaled):
    """Glorot: U(-sqrt(6 / (fan_in + fan_out)), +sqrt(6 / (fan_in + fan_out)))."""

    fan, dist = "avg", "uniform"


@INITS.register("he_normal")
class HeNormal(_Scaled):
    """He/Kaiming for ReLU: randn * sqrt(2 / fan_in)."""

    gain = 2.0


@INITS.register("he_uniform")
class HeUniform(_Scaled):
    """He/Kaiming: U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))."""

    gain, dist = 2.0, "uniform"


INITS.register("lecun")(type("Lecun", (LecunNormal,), {"__doc__": "Alias of lecun_normal."}))
INITS.register("glorot_normal")(type("GlorotNormal", (XavierNormal,), {"__doc__": "Alias of xavier_normal."}))
INITS.register("glorot_uniform")(type("GlorotUniform", (XavierUniform,), {"__doc__": "Alias of xavier_uniform."}))
INITS.register("kaiming_normal")(type("KaimingNormal", (HeNormal,), {"__doc__": "Alias of he_normal."}))
INITS.register("kaiming_uniform")(type("KaimingUniform", (HeUniform,), {"__doc__": "Alias of he_uniform."}))


def make_init(spec) -> Initializer:
    """'he_normal' or {'normal': {'std': 0.01}} -> an Initializer; ValueError when malformed."""
    name, kwargs = spec, {}
    if isinstance(spec, dict) and len(spec) == 1:
        ((name, kwargs),) = spec.items()
        kwargs = {} if kwargs is None else kwargs
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise ValueError(f"init: expected a name or {{name: {{options}}}}, got {spec!r}")
    try:
        return INITS.create(name, kwargs, where=f"init.{name}")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
