"""The `sweep:` section: parsing and errors with key paths, grid expansion, seeded sampling, trials, rungs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import yaml

from cnntrain.config import config_from_text, load_config
from cnntrain.errors import ConfigError
from cnntrain.schema import apply_override, parse_yaml
from cnntrain.sweep.spec import (Distribution, Halving, SweepSpec, Trial, configurations, describe, expand_trials,
                                 objective, parse_sweep, rungs, survivors)

MINIMAL = """
model:
  layers:
    - flatten
    - dense: {units: 10}
"""

SWEEP = """
sweep:
  grid:
    optimizer.name: [sgd, adam]
    train.batch_size: [32, 128]
  sample:
    optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}
    model.l2: {uniform: [0.0, 1.0e-3]}
  trials: 3
  seeds: [0, 1]
  metric: val_loss
  halving: {min_epochs: 1, eta: 3}
"""


def spec_of(data) -> SweepSpec:
    return parse_sweep(data, "x.yaml")


def test_a_full_section_parses_into_its_dataclasses():
    spec = spec_of(yaml.safe_load(SWEEP)["sweep"])
    assert spec.grid == {"optimizer.name": ["sgd", "adam"], "train.batch_size": [32, 128]}
    assert spec.sample == {"optimizer.lr": Distribution("loguniform", [1e-4, 0.1]),
                           "model.l2": Distribution("uniform", [0.0, 1e-3])}
    assert (spec.trials, spec.seeds, spec.metric, spec.mode, spec.sampler_seed) == (3, [0, 1], "val_loss", None, 0)
    assert spec.halving == Halving(min_epochs=1, eta=3)
    assert objective(spec, "val_acc") == ("val_loss", "min")  # the metric's own direction
    assert objective(spec_of({"seeds": [0]}), "val_acc") == ("val_acc", "max")  # train.monitor by default
    assert objective(spec_of({"seeds": [0], "mode": "min"}), "val_acc") == ("val_acc", "min")


def test_nested_key_paths_mean_the_same_as_dotted_ones():
    # `--set sweep.grid.optimizer.lr=[...]` writes nested mappings
    nested = spec_of({"grid": {"optimizer": {"lr": [0.1, 0.01], "name": ["sgd"]}},
                      "sample": {"model": {"l2": {"uniform": [0, 1]}}}, "trials": 2})
    assert nested.grid == {"optimizer.lr": [0.1, 0.01], "optimizer.name": ["sgd"]}
    assert nested.sample == {"model.l2": Distribution("uniform", [0, 1])}
    assert spec_of({"grid": {"model": {"sweep": [1]}}}).grid == {"model.sweep": [1]}  # only the top is `sweep`
    with pytest.raises(ConfigError, match=r"^x.yaml: sweep.grid.optimizer.lr: given twice"):
        spec_of({"grid": {"optimizer.lr": [0.1], "optimizer": {"lr": [0.2]}}})


def test_grid_expands_every_combination_first_key_slowest():
    spec = spec_of({"grid": {"optimizer.name": ["sgd", "adam"], "train.batch_size": [32, 128], "seed": [7]}})
    assert configurations(spec) == [
        {"optimizer.name": "sgd", "train.batch_size": 32, "seed": 7},
        {"optimizer.name": "sgd", "train.batch_size": 128, "seed": 7},
        {"optimizer.name": "adam", "train.batch_size": 32, "seed": 7},
        {"optimizer.name": "adam", "train.batch_size": 128, "seed": 7},
    ]
    assert [list(c) for c in configurations(spec)] == [["optimizer.name", "train.batch_size", "seed"]] * 4


def test_grid_times_trials_shares_the_sampled_points_across_grid_combinations():
    spec = spec_of({"grid": {"optimizer.name": ["sgd", "adam", "rmsprop"]}, "trials": 4,
                    "sample": {"optimizer.lr": {"loguniform": [1e-4, 1e-1]}, "train.epochs": {"int": [1, 9]}}})
    configs = configurations(spec)
    assert len(configs) == 3 * 4
    assert [list(c) for c in configs] == [["optimizer.name", "optimizer.lr", "train.epochs"]] * 12  # grid keys first
    assert [c["optimizer.name"] for c in configs] == ["sgd"] * 4 + ["adam"] * 4 + ["rmsprop"] * 4
    points = [[(c["optimizer.lr"], c["train.epochs"]) for c in configs[g * 4:(g + 1) * 4]] for g in range(3)]
    assert points[0] == points[1] == points[2], "every grid combination should see the same sampled points"
    assert len(set(points[0])) == 4, f"the 4 trials should be distinct draws, got {points[0]}"


def test_sampling_is_reproducible_and_follows_sampler_seed():
    data = {"sample": {"optimizer.lr": {"loguniform": [1e-4, 1e-1]}, "optimizer.name": {"choice": ["sgd", "adam"]}},
            "trials": 16}
    assert configurations(spec_of(data)) == configurations(spec_of(data))
    assert configurations(spec_of(data)) == configurations(spec_of({**data, "sampler_seed": 0}))  # the default
    assert configurations(spec_of(data)) != configurations(spec_of({**data, "sampler_seed": 1}))
    # more trials keep the earlier points, so a sweep can be extended
    assert configurations(spec_of({**data, "trials": 40}))[:16] == configurations(spec_of(data))


def test_draws_stay_within_bounds_and_are_python_scalars():
    rng = np.random.default_rng(0)
    for dist, kind in [(Distribution("uniform", [-0.5, 2.0]), float), (Distribution("loguniform", [1e-6, 1e-5]), float),
                       (Distribution("int", [-3, 3]), int), (Distribution("loguniform", [0.5, 0.5000001]), float)]:
        values = [dist.draw(rng) for _ in range(2000)]
        lo, hi = dist.args
        assert all(type(v) is kind for v in values), f"{dist}: expected {kind.__name__}s"
        assert lo <= min(values) and max(values) <= hi, f"{dist}: drew {min(values)}..{max(values)}"


def test_loguniform_is_uniform_in_log10():
    rng = np.random.default_rng(0)
    logs = np.log10([Distribution("loguniform", [1e-4, 1e-1]).draw(rng) for _ in range(2000)])
    assert abs(logs.mean() - (-2.5)) < 0.1, f"mean of log10 {logs.mean():.3f}, midpoint -2.5"
    # each decade gets about a third: 2000/3 = 667, binomial sd about 21
    counts, _ = np.histogram(logs, bins=[-4, -3, -2, -1])
    assert np.all(np.abs(counts - 2000 / 3) < 100), f"decade counts {counts}"


def test_int_includes_both_bounds_and_choice_covers_every_option():
    rng = np.random.default_rng(0)
    assert {Distribution("int", [2, 5]).draw(rng) for _ in range(500)} == {2, 3, 4, 5}
    assert {Distribution("int", [4, 4]).draw(rng) for _ in range(10)} == {4}
    options = ["adam", "rmsprop", 3, [1, 2]]
    drawn = [Distribution("choice", options).draw(rng) for _ in range(500)]
    assert all(any(d is o for o in options) for d in drawn), "choice should return the options themselves"
    assert sorted(map(str, {str(d) for d in drawn})) == sorted(map(str, options))


def test_is_numeric_and_log_scale():
    assert Distribution("loguniform", [1e-3, 1]).log_scale and Distribution("loguniform", [1e-3, 1]).is_numeric
    assert not Distribution("uniform", [0, 1]).log_scale and Distribution("int", [0, 1]).is_numeric
    assert Distribution("choice", [32, 0.5]).is_numeric
    assert not Distribution("choice", ["sgd", "adam"]).is_numeric
    assert not Distribution("choice", [True, False]).is_numeric, "bool is not a number"


def test_trials_cross_configurations_with_seeds_config_major():
    spec = spec_of({"grid": {"optimizer.name": ["sgd", "adam"]}, "seeds": [0, 1, 2]})
    trials = expand_trials(spec, default_seed=9)
    assert [(t.index, t.config_index, t.seed) for t in trials] == [
        (0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 1, 0), (4, 1, 1), (5, 1, 2)]
    assert [t.key for t in trials[:2]] == ["t000", "t001"] and Trial(123, 0, {}, 0).key == "t123"
    assert trials[4].overrides == ["optimizer.name=adam", "seed=1"]
    # without seeds every configuration runs once with the config's seed
    assert [t.seed for t in expand_trials(spec_of({"grid": {"train.epochs": [1, 2]}}), 9)] == [9, 9]
    # a swept `seed` is the trial's seed and is written once
    swept = expand_trials(spec_of({"grid": {"seed": [3, 4]}}), 9)
    assert [(t.seed, t.overrides) for t in swept] == [(3, ["seed=3"]), (4, ["seed=4"])]


def test_overrides_read_back_as_the_same_values():
    params = {"optimizer.name": "adam", "optimizer.lr": 1.2345678901234e-05, "train.batch_size": "full",
              "model.input_shape": [1, 28, 28], "data.preprocess": [{"normalize": {"mean": 0.5, "std": 0.5}}],
              "train.shuffle": False, "model.init_from": None, "name": "true", "data.mirror": "http://x.org/a: b",
              "train.grad_clip_norm": math.inf, "data.root": "0.5"}
    trial = Trial(0, 0, params, 5)
    assert trial.overrides[:3] == ["optimizer.name=adam", "optimizer.lr=1.2345678901234e-05", "train.batch_size=full"]
    data = {}
    for assignment in trial.overrides:
        apply_override(data, assignment)
    assert data["optimizer"] == {"name": "adam", "lr": 1.2345678901234e-05}
    assert data["model"]["input_shape"] == [1, 28, 28] and data["train"]["shuffle"] is False
    assert data["data"]["preprocess"] == params["data.preprocess"] and data["model"]["init_from"] is None
    assert data["name"] == "true" and data["data"]["root"] == "0.5", "strings YAML would misread are quoted"
    assert data["data"]["mirror"] == "http://x.org/a: b" and data["train"]["grad_clip_norm"] == math.inf
    assert data["seed"] == 5


def test_a_real_config_accepts_every_trials_overrides():
    spec = spec_of(yaml.safe_load(SWEEP)["sweep"])
    trials = expand_trials(spec, 0)
    assert len(trials) == 2 * 2 * 3 * 2
    for trial in trials[::5]:
        cfg = load_config("configs/lenet5.yaml", trial.overrides)
        p = trial.params
        assert (cfg.optimizer.name, cfg.train.batch_size) == (p["optimizer.name"], p["train.batch_size"])
        assert (cfg.optimizer.lr, cfg.model.l2, cfg.seed) == (p["optimizer.lr"], p["model.l2"], trial.seed)


def test_rungs_and_survivors():
    assert rungs(None, 10) == [10]
    assert rungs(Halving(min_epochs=1, eta=3), 10) == [1, 3, 9, 10]
    assert rungs(Halving(min_epochs=2, eta=2), 8) == [2, 4, 8]
    assert rungs(Halving(min_epochs=5), 5) == [5] and rungs(Halving(min_epochs=7), 5) == [5]
    assert rungs(Halving(min_epochs=1, eta=3), 9) == [1, 3, 9]
    assert [survivors(n, 3) for n in (27, 9, 10, 3, 2, 1)] == [9, 3, 3, 1, 1, 1]
    assert survivors(8, 2) == 4


def test_describe_summarises_the_sweep():
    spec = spec_of({"grid": {"optimizer.name": ["sgd", "adam"], "train.batch_size": [32, 128]},
                    "sample": {"optimizer.lr": {"loguniform": [1e-4, 0.1]}}, "trials": 8, "seeds": [0, 1, 2],
                    "halving": {"min_epochs": 1, "eta": 3}})
    assert describe(spec, epochs=10) == [
        "grid: optimizer.name (2 values) x train.batch_size (2)",
        "sample: 8 draws of optimizer.lr ~ loguniform(0.0001, 0.1)",
        "seeds: 0, 1, 2",
        "halving: rungs at epochs 1, 3, 9, 10 (eta 3)",
        "runs: 96 (32 configurations x 3 seeds)",
    ]
    assert describe(spec_of({"grid": {"train.epochs": [1]}})) == ["grid: train.epochs (1 values)",
                                                                 "runs: 1 (1 configuration x 1 seed)"]


@pytest.mark.parametrize("data,message", [
    ({"sample": {"optimizer.lr": {"logunifrom": [1e-4, 0.1]}}, "trials": 2},
     "x.yaml: sweep.sample.optimizer.lr: unknown distribution 'logunifrom' (did you mean 'loguniform'?)"),
    ({"grid": {"optimizer.lr": []}}, "x.yaml: sweep.grid.optimizer.lr: expected a non-empty list of values, got []"),
    ({"grid": {"optimizer.lr": 0.1}}, "x.yaml: sweep.grid.optimizer.lr: expected a non-empty list of values, got 0.1"),
    ({"sample": {"optimizer.lr": {"uniform": [0, 1]}}}, "x.yaml: sweep.trials: required with sweep.sample"),
    ({"grid": {"seed": [1]}, "trails": 3}, "x.yaml: sweep.trails: unknown key (did you mean 'trials'?)"),
    ({"grid": {"train.epochs": [1]}, "trials": 3}, "x.yaml: sweep.trials: only used with sweep.sample"),
    ({"sample": {"train.epochs": {"int": [1, 2]}}, "trials": 0},
     "x.yaml: sweep.trials: expected an integer >= 1, got 0"),
    ({"sample": {"model.l2": {"uniform": [1e-3, 0.0]}}, "trials": 1},
     "x.yaml: sweep.sample.model.l2: uniform needs lo < hi, got [0.001, 0.0]"),
    ({"sample": {"optimizer.lr": {"loguniform": [0, 0.1]}}, "trials": 1},
     "x.yaml: sweep.sample.optimizer.lr: loguniform needs lo > 0, got [0, 0.1]"),
    ({"sample": {"optimizer.lr": {"uniform": [0.1]}}, "trials": 1},
     "x.yaml: sweep.sample.optimizer.lr: uniform needs [lo, hi], two numbers, got [0.1]"),
    ({"sample": {"train.epochs": {"int": [1, 2.5]}}, "trials": 1},
     "x.yaml: sweep.sample.train.epochs: int needs [lo, hi], two integers, got [1, 2.5]"),
    ({"sample": {"train.epochs": {"int": [True, 3]}}, "trials": 1},
     "x.yaml: sweep.sample.train.epochs: int needs [lo, hi], two integers, got [True, 3]"),
    ({"sample": {"train.epochs": {"int": [3, 2]}}, "trials": 1},
     "x.yaml: sweep.sample.train.epochs: int needs lo <= hi, got [3, 2]"),
    ({"sample": {"optimizer.name": {"choice": []}}, "trials": 1},
     "x.yaml: sweep.sample.optimizer.name: choice needs a non-empty list of options, got []"),
    ({"sample": {"optimizer.lr": 0.1}, "trials": 1}, "x.yaml: sweep.sample.optimizer.lr: expected a distribution"),
    ({"sample": {"optimizer.lr": {"gauss": [0, 1]}}, "trials": 1},
     "x.yaml: sweep.sample.optimizer.lr: unknown distribution 'gauss'; "
     "expected one of uniform, loguniform, int, choice"),
    ({"seeds": []}, "x.yaml: sweep.seeds: expected a non-empty list of distinct integers, got []"),
    ({"seeds": [0, 1, 0]}, "x.yaml: sweep.seeds: expected a non-empty list of distinct integers, got [0, 1, 0]"),
    ({"seeds": [0, False]}, "x.yaml: sweep.seeds: expected a non-empty list of distinct integers"),
    ({"seeds": [0], "metric": "val_accuracy"},
     "x.yaml: sweep.metric: expected one of val_acc, val_loss, train_acc, train_loss, got 'val_accuracy' "
     "(did you mean 'val_acc'?)"),
    ({"seeds": [0], "mode": "maximize"}, "x.yaml: sweep.mode: expected min or max, got 'maximize'"),
    ({"grid": {"optimizer.lr": [0.1]}, "sample": {"optimizer.lr": {"uniform": [0, 1]}}, "trials": 2},
     "x.yaml: sweep.sample.optimizer.lr: also in sweep.grid"),
    ({"grid": {"seed": [1, 2]}, "seeds": [0, 1]}, "x.yaml: sweep.grid.seed: not with sweep.seeds"),
    ({"sample": {"seed": {"int": [0, 9]}}, "trials": 2, "seeds": [0]},
     "x.yaml: sweep.sample.seed: not with sweep.seeds"),
    ({"grid": {"train.epochs": [2, 4]}, "halving": {"min_epochs": 1}},
     "x.yaml: sweep.grid.train.epochs: not with sweep.halving"),
    ({"seeds": [0], "halving": {"min_epochs": 0}}, "x.yaml: sweep.halving.min_epochs: expected an integer >= 1, got 0"),
    ({"seeds": [0], "halving": {"min_epochs": 1, "eta": 1}},
     "x.yaml: sweep.halving.eta: expected an integer >= 2, got 1"),
    ({"seeds": [0], "halving": {"eta": 2}}, "x.yaml: sweep.halving.min_epochs: required key is missing"),
    ({"seeds": [0], "halving": {"min_epoch": 2}},
     "x.yaml: sweep.halving.min_epoch: unknown key (did you mean 'min_epochs'?)"),
    ({"seeds": [0], "sampler_seed": 1}, "x.yaml: sweep.sampler_seed: only used with sweep.sample"),
    ({"grid": {"optimizer.name": ["sgd", "adam", "sgd"]}},
     "x.yaml: sweep.grid.optimizer.name: value 'sgd' is listed twice"),
    ({"grid": {"sweep.seeds": [[0], [1]]}}, "x.yaml: sweep.grid.sweep.seeds: a sweep cannot vary its own section"),
    ({"grid": {"optimizer..lr": [1]}}, "x.yaml: sweep.grid.optimizer..lr: expected a key path"),
    ({"metric": "val_acc"}, "x.yaml: sweep: needs at least one of grid, sample, seeds"),
    ([1, 2], "x.yaml: sweep: expected a mapping with grid, sample or seeds, got [1, 2]"),
])
def test_mistakes_name_the_file_and_key_path(data, message):
    with pytest.raises(ConfigError) as info:
        spec_of(data)
    text = str(info.value)
    assert text.startswith(message), f"got: {text}"
    assert "\n" not in text


def test_distribution_and_halving_check_themselves():
    with pytest.raises(ValueError, match="loguniform needs lo > 0"):
        Distribution("loguniform", [-1.0, 1.0])
    with pytest.raises(ValueError, match="unknown distribution 'normal'"):
        Distribution("normal", [0, 1])
    with pytest.raises(ValueError, match="uniform needs"):
        Distribution("uniform", [0.0, math.inf])
    with pytest.raises(ValueError, match="eta: expected an integer >= 2"):
        Halving(1, eta=2.5)
    with pytest.raises(ValueError, match="min_epochs"):
        Halving(True)


def test_a_bad_sweep_section_fails_at_load_with_its_key_path(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(MINIMAL + "sweep:\n  sample:\n    optimizer.lr: {logunifrom: [1.0e-4, 1.0e-1]}\n  trials: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: sweep.sample.optimizer.lr: unknown distribution 'logunifrom' "
                               "(did you mean 'loguniform'?)")
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: sweep.trials: expected an integer >= 1, got -1$"):
        load_config(path, ["sweep.sample.optimizer.lr={uniform: [0, 1]}", "sweep.trials=-1"])


def test_config_keeps_the_sweep_section_and_round_trips_it(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(MINIMAL + SWEEP)
    cfg = load_config(path)
    assert cfg.sweep == yaml.safe_load(SWEEP)["sweep"]
    text = cfg.to_yaml()
    again = config_from_text(text, "saved")
    assert again.sweep == cfg.sweep and again.to_dict() == cfg.to_dict()
    assert spec_of(parse_yaml(text, "saved")["sweep"]) == spec_of(cfg.sweep)


def test_a_config_without_sweep_saves_no_sweep_key_and_overrides_can_add_one(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(MINIMAL)
    cfg = load_config(path)
    assert cfg.sweep is None and "sweep" not in cfg.to_dict() and "sweep:" not in cfg.to_yaml()
    cfg = load_config(path, ["sweep.seeds=[0,1]", "sweep.grid.optimizer.name=[sgd, adam]"])
    assert cfg.sweep == {"seeds": [0, 1], "grid": {"optimizer": {"name": ["sgd", "adam"]}}}
    spec = spec_of(cfg.sweep)
    assert spec.seeds == [0, 1] and spec.grid == {"optimizer.name": ["sgd", "adam"]}
    assert "sweep" not in load_config(path, ["sweep=null"]).to_dict()  # how a sweep's own runs can drop it
