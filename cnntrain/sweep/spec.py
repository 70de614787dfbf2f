"""The `sweep:` section of an experiment file: parsing, checks with key paths, and the runs it stands for.

Pure and deterministic (no files, no training): the runner turns `expand_trials()` into runs and
uses `rungs()` and `survivors()` for successive halving. Key paths are written dotted
(`optimizer.lr: [...]`) or nested (`optimizer: {lr: [...]}`, as `--set sweep.grid.optimizer.lr=[...]`
writes them); both mean the same key.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..monitor import MONITORS, Monitor
from ..registry import did_you_mean, join_path
from ..schema import parse_yaml

SWEEP_KEYS = ("grid", "sample", "trials", "sampler_seed", "seeds", "metric", "mode", "halving")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
EXAMPLE = "{loguniform: [1.0e-4, 0.1]}"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Distribution:
    """One sampled key: uniform [lo, hi), loguniform exp(uniform(log lo, log hi)), int lo..hi inclusive, or choice."""

    kind: str
    args: list

    def __post_init__(self):
        args, kind = self.args, self.kind
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ValueError(f"choice needs a non-empty list of options, got {args!r}")
            return
        ok = _is_int if kind == "int" else _is_number
        if not (isinstance(args, list) and len(args) == 2 and all(ok(a) for a in args)):
            what = "integers" if kind == "int" else "numbers"
            raise ValueError(f"{kind} needs [lo, hi], two {what}, got {args!r}")
        lo, hi = args
        if kind == "int" and lo > hi:
            raise ValueError(f"int needs lo <= hi, got {args!r}")
        if kind != "int" and not lo < hi:
            raise ValueError(f"{kind} needs lo < hi, got {args!r}")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform needs lo > 0, got {args!r}")

    def draw(self, rng: np.random.Generator):
        """One value as a Python scalar (a choice option as written)."""
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        lo, hi = self.args
        if self.kind == "int":
            return int(rng.integers(lo, hi + 1))
        if self.kind == "uniform":
            return float(rng.uniform(lo, hi))
        return min(max(float(np.exp(rng.uniform(math.log(lo), math.log(hi)))), lo), hi)  # exp may round past a bound

    @property
    def is_numeric(self) -> bool:
        return self.kind != "choice" or all(_is_number(a) for a in self.args)

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(f'{a:g}' if isinstance(a, float) else str(a) for a in self.args)})"


@dataclass
class Halving:
    """Successive halving: every configuration trains min_epochs, the best 1/eta of them go on to
    min_epochs*eta epochs, and so on; the last rung is train.epochs."""

    min_epochs: int
    eta: int = 3

    def __post_init__(self):
        if not _is_int(self.min_epochs) or self.min_epochs < 1:
            raise ValueError(f"min_epochs: expected an integer >= 1, got {self.min_epochs!r}")
        if not _is_int(self.eta) or self.eta < 2:
            raise ValueError(f"eta: expected an integer >= 2, got {self.eta!r}")


@dataclass
class SweepSpec:
    """A validated `sweep:` section; None/empty means "not given" (seeds: the config's seed,
    metric: train.monitor, mode: the metric's own direction). trials is 1 without sample."""

    grid: dict[str, list]
    sample: dict[str, Distribution]
    trials: int
    seeds: list[int] | None
    metric: str | None
    mode: str | None
    halving: Halving | None
    sampler_seed: int = 0


@dataclass
class Trial:
    """One run: configuration `config_index` (key path -> value) trained with `seed`."""

    index: int
    config_index: int
    params: dict
    seed: int

    @property
    def key(self) -> str:
        return f"t{self.index:03d}"

    @property
    def overrides(self) -> list[str]:
        """The run's `--set` strings, `seed=` last; each value reads back as itself."""
        return [f"{k}={_encode(v)}" for k, v in self.params.items() if k != "seed"] + [f"seed={self.seed}"]


def parse_sweep(data, source: str) -> SweepSpec:
    """The raw `sweep:` mapping -> SweepSpec; a ConfigError `source: sweep.key.path: problem` otherwise."""
    try:
        return _parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(data) -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"sweep: expected a mapping with grid, sample or seeds, got {data!r}")
    for key in data:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"sweep.{key}: unknown key{did_you_mean(key, SWEEP_KEYS)}")
    if all(data.get(key) is None for key in ("grid", "sample", "seeds")):
        raise ConfigError("sweep: needs at least one of grid, sample, seeds")
    grid, sample = _grid(data.get("grid")), _sample(data.get("sample"))
    for key in sample:
        if key in grid:
            raise ConfigError(f"sweep.sample.{key}: also in sweep.grid; a key is either on the grid or sampled")
    trials, sampler_seed = data.get("trials"), data.get("sampler_seed")
    if not sample:
        for key in ("trials", "sampler_seed"):
            if data.get(key) is not None:
                raise ConfigError(f"sweep.{key}: only used with sweep.sample")
    elif trials is None:
        raise ConfigError("sweep.trials: required with sweep.sample")
    elif not _is_int(trials) or trials < 1:
        raise ConfigError(f"sweep.trials: expected an integer >= 1, got {trials!r}")
    if sampler_seed is not None and (not _is_int(sampler_seed) or sampler_seed < 0):
        raise ConfigError(f"sweep.sampler_seed: expected an integer >= 0, got {sampler_seed!r}")
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds)
                              or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"sweep.seeds: expected a non-empty list of distinct integers, got {seeds!r}")
    metric, mode = data.get("metric"), data.get("mode")
    if metric is not None and metric not in MONITORS:
        raise ConfigError(f"sweep.metric: expected one of {', '.join(MONITORS)}, got {metric!r}"
                          f"{did_you_mean(metric, MONITORS)}")
    if mode is not None and mode not in ("min", "max"):
        raise ConfigError(f"sweep.mode: expected min or max, got {mode!r}")
    halving = _halving(data.get("halving"))
    for section, keys in (("grid", grid), ("sample", sample)):
        for key in keys:
            if key.split(".")[0] == "sweep":
                raise ConfigError(f"sweep.{section}.{key}: a sweep cannot vary its own section")
        if "seed" in keys and seeds is not None:
            raise ConfigError(f"sweep.{section}.seed: not with sweep.seeds, "
                              "which runs every configuration with each seed")
        if "train.epochs" in keys and halving is not None:
            raise ConfigError(f"sweep.{section}.train.epochs: not with sweep.halving, whose rungs set the epochs")
    return SweepSpec(grid, sample, trials if sample else 1, seeds, metric, mode, halving,
                     0 if sampler_seed is None else sampler_seed)


def _flatten(mapping: dict, where: str, is_leaf) -> dict:
    """{optimizer: {lr: v}} and {optimizer.lr: v} -> {"optimizer.lr": v}; descends into mappings not is_leaf."""
    out = {}
    for key, value in mapping.items():
        if _is_int(key):  # a list index in a nested path: model: {layers: {1: ...}}
            key = str(key)
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(f"{where}.{key}: expected a key path such as optimizer.lr")
        inner = (_flatten(value, f"{where}.{key}", is_leaf) if isinstance(value, dict) and not is_leaf(value)
                 else {"": value})
        for sub, leaf in inner.items():
            path = f"{key}.{sub}" if sub else key
            if path in out:
                raise ConfigError(f"{where}.{path}: given twice (dotted and nested)")
            out[path] = leaf
    return out


def _grid(value) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"sweep.grid: expected a mapping of key path -> list of values, got {value!r}")
    grid = _flatten(value, "sweep.grid", lambda v: not v)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key}: expected a non-empty list of values, got {values!r}")
        seen = [json.dumps(v, sort_keys=True, default=repr) for v in values]  # 1, 1.0 and true stay apart
        for i, text in enumerate(seen):
            if text in seen[:i]:
                raise ConfigError(f"sweep.grid.{key}: value {values[i]!r} is listed twice")
    return grid


def _sample(value) -> dict[str, Distribution]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"sweep.sample: expected a mapping of key path -> distribution such as {EXAMPLE}, "
                          f"got {value!r}")
    flat = _flatten(value, "sweep.sample", _is_distribution)
    return {key: _distribution(dist, f"sweep.sample.{key}") for key, dist in flat.items()}


def _is_distribution(value: dict) -> bool:
    """A mapping with one key whose value is not a mapping: {loguniform: [...]}, not {lr: {...}}."""
    return not value or (len(value) == 1 and not isinstance(next(iter(value.values())), dict))


def _distribution(value, where: str) -> Distribution:
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"{where}: expected a distribution, a mapping with one of {', '.join(DISTRIBUTIONS)}, "
                          f"such as {EXAMPLE}, got {value!r}")
    ((kind, args),) = value.items()
    if kind not in DISTRIBUTIONS:
        hint = did_you_mean(kind, DISTRIBUTIONS) or f"; expected one of {', '.join(DISTRIBUTIONS)}"
        raise ConfigError(f"{where}: unknown distribution {kind!r}{hint}")
    try:
        return Distribution(kind, args)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _halving(value) -> Halving | None:
    if value is None:
        return None
    keys = ("min_epochs", "eta")
    if not isinstance(value, dict):
        raise ConfigError(f"sweep.halving: expected a mapping such as {{min_epochs: 1, eta: 3}}, got {value!r}")
    for key in value:
        if key not in keys:
            raise ConfigError(f"sweep.halving.{key}: unknown key{did_you_mean(key, keys)}")
    if "min_epochs" not in value:
        raise ConfigError("sweep.halving.min_epochs: required key is missing")
    try:
        return Halving(**value)
    except ValueError as exc:
        raise ConfigError(join_path("sweep.halving", str(exc), keys)) from None


def configurations(spec: SweepSpec) -> list[dict]:
    """Every grid combination (first key varying slowest), each with the `trials` sampled points: G*T
    mappings key path -> value, grid keys first.

    The points are drawn once, trial by trial and key by key, from default_rng(sampler_seed), and are
    shared by every grid combination, so grid values are compared at the same points; raising `trials`
    keeps the earlier points.
    """
    rng = np.random.default_rng(spec.sampler_seed)
    points = [{key: dist.draw(rng) for key, dist in spec.sample.items()}
              for _ in range(spec.trials if spec.sample else 1)]
    return [copy.deepcopy({**dict(zip(spec.grid, combo)), **point})
            for combo in itertools.product(*spec.grid.values()) for point in points]


def expand_trials(spec: SweepSpec, default_seed: int) -> list[Trial]:
    """Every configuration with every seed (spec.seeds, else default_seed), configuration-major; a swept
    `seed` key is the trial's seed."""
    configs = configurations(spec)
    seeds = spec.seeds or [default_seed]
    pairs = [(c, seed) for c in range(len(configs)) for seed in seeds]
    return [Trial(i, c, dict(configs[c]), configs[c].get("seed", seed)) for i, (c, seed) in enumerate(pairs)]


def objective(spec: SweepSpec, default_metric: str) -> tuple[str, str]:
    """(metric, min|max) a sweep ranks its runs by: sweep.metric else train.monitor, in its own direction
    unless sweep.mode says otherwise."""
    metric = spec.metric or default_metric
    return metric, spec.mode or Monitor(metric).mode


def rungs(spec_halving: Halving | None, epochs: int) -> list[int]:
    """The epochs at which halving ranks configurations: min_epochs * eta**k below epochs, then epochs."""
    if spec_halving is None:
        return [epochs]
    out, rung = [], spec_halving.min_epochs
    while rung < epochs:
        out.append(rung)
        rung *= spec_halving.eta
    return out + [epochs]


def survivors(n_configs: int, eta: int) -> int:
    """How many configurations go on to the next rung: the best 1/eta, at least one."""
    return max(1, n_configs // eta)


def describe(spec: SweepSpec, epochs: int | None = None) -> list[str]:
    """Short lines for people: the grid, the sampled keys, seeds, metric, halving rungs (given epochs), runs."""
    lines = []
    if spec.grid:
        axes = [f"{key} ({len(values)}{' values' if i == 0 else ''})"
                for i, (key, values) in enumerate(spec.grid.items())]
        lines.append("grid: " + " x ".join(axes))
    if spec.sample:
        lines.append(f"sample: {spec.trials} draws of " + ", ".join(f"{k} ~ {d}" for k, d in spec.sample.items()))
    if spec.seeds:
        lines.append("seeds: " + ", ".join(map(str, spec.seeds)))
    if spec.metric or spec.mode:
        lines.append(f"metric: {spec.metric or 'train.monitor'}" + (f" ({spec.mode})" if spec.mode else ""))
    if spec.halving:
        h = spec.halving
        at = (", ".join(map(str, rungs(h, epochs))) if epochs
              else f"{h.min_epochs}, {h.min_epochs * h.eta}, ... train.epochs")
        lines.append(f"halving: rungs at epochs {at} (eta {h.eta})")
    n = math.prod(len(values) for values in spec.grid.values()) * spec.trials
    s = len(spec.seeds or [None])
    lines.append(f"runs: {n * s} ({n} configuration{'s' * (n != 1)} x {s} seed{'s' * (s != 1)})")
    return lines


def _encode(value) -> str:
    """A `--set` value YAML reads back as `value`: a plain string as it is, anything else as JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    try:
        plain = isinstance(value, str) and parse_yaml(value, "--set") == value  # not `true`, `1` or `a: b`
    except ConfigError:
        plain = False
    return value if plain else json.dumps(value)
