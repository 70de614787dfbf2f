"""Schedules against their closed forms at chosen steps, for both intervals; warmup; momentum ramps; errors.

Unless a test says otherwise: lr0 = 0.1, steps_per_epoch = 10, total_steps = 100 (10 epochs).
"""

from __future__ import annotations

import inspect
import math

import pytest

from cnntrain.errors import ConfigError
from cnntrain.optim import schedules
from cnntrain.optim.schedules import Warmup, momentum_options
from cnntrain.registry import SCHEDULES

# Options that make every schedule change from epoch 0 to epoch 1 (and from step 0 to step 1).
CASES = {
    "constant": {},
    "step": {"step_size": 1, "gamma": 0.5},
    "multistep": {"milestones": [1, 2]},
    "exponential": {"k": 0.5},
    "inverse_time": {"k": 0.5},
    "cosine": {},
    "warmup_cosine": {"warmup_epochs": 0},
    "linear": {},
}


def build_schedule(name, options, lr, spe, total):
    """lr(step) as a run gets it: the schedule constructed from its config options, then bound to the run."""
    schedule = SCHEDULES.create(name, {**options, "lr": lr}, where="schedule")
    return schedules.build_schedule(schedule, spe, total, where="schedule")


def build_momentum_schedule(options, spe, total, momentum=None):
    """momentum(step) as a run gets it from a momentum_schedule section and the optimizer's momentum."""
    options = dict(options)
    name = options.pop("name", "constant")
    schedule = SCHEDULES.create(name, momentum_options(options, momentum), where="momentum_schedule")
    return schedules.build_momentum_schedule(schedule, spe, total)


def test_binding_a_new_base_lr_keeps_every_other_option():
    schedule = SCHEDULES.create("linear", {"lr": 0.1, "end": 0.01, "interval": "step"})
    bound = schedules.build_schedule(schedule, 10, 100, lr=0.4)
    # start defaults to the base lr, so it follows the new one; end and interval stay as given
    assert [bound(0), bound(50), bound(100)] == pytest.approx([0.4, 0.205, 0.01], rel=1e-12)
    assert schedule.lr0 == 0.1, "binding returns a new schedule; the constructed one is unchanged"


def lr_at(name, steps, spe=10, total=100, lr=0.1, **options):
    schedule = build_schedule(name, options, lr, spe, total)
    return [schedule(s) for s in steps]


def test_every_schedule_has_a_case():
    assert set(SCHEDULES.names()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_common_options_are_in_every_signature_with_their_defaults(name):
    params = inspect.signature(SCHEDULES.get(name)).parameters
    defaults = {k: params[k].default for k in ("interval", "warmup_epochs", "warmup_steps", "warmup_start_lr")}
    warmup_epochs = None if name == "warmup_cosine" else 0.0  # null: 1 epoch unless warmup_steps is given
    assert defaults == {"interval": "epoch", "warmup_epochs": warmup_epochs, "warmup_steps": 0,
                        "warmup_start_lr": 0.0}


@pytest.mark.parametrize("name", sorted(CASES))
def test_interval_epoch_holds_the_lr_for_a_whole_epoch(name):
    values = lr_at(name, range(20), **CASES[name])
    assert values[:10] == [values[0]] * 10 and values[10:] == [values[10]] * 10, values
    assert values[0] == 0.1
    if name != "constant":
        assert values[10] < values[9]


@pytest.mark.parametrize("name", sorted(CASES))
def test_interval_step_changes_every_step(name):
    values = lr_at(name, range(3), interval="step", **CASES[name])
    assert values[0] == 0.1
    if name != "constant":
        assert values[2] < values[1] < values[0], values


@pytest.mark.parametrize("name", sorted(CASES))
def test_resolved_options_build_the_same_schedule(name):
    # config.py fills every option with the default from the signature (t_max: null, ...) before building
    params = inspect.signature(SCHEDULES.get(name)).parameters
    resolved = {k: p.default for k, p in params.items() if k != "lr"} | CASES[name]
    steps = [0, 9, 10, 55, 99, 100]
    assert lr_at(name, steps, **resolved) == lr_at(name, steps, **CASES[name])


def test_schedules_are_pure_functions_of_the_step():
    schedule = build_schedule("warmup_cosine", {}, 0.1, 10, 100)
    forward = [schedule(s) for s in range(101)]
    backward = [schedule(s) for s in reversed(range(101))][::-1]
    assert forward == backward


def test_constant():
    assert lr_at("constant", [0, 9, 10, 99]) == [0.1] * 4
    assert lr_at("constant", [0, 9, 10, 99], interval="step") == [0.1] * 4


def test_step_by_epoch():
    # lr0 * 0.5 ** floor(epoch / 3): epochs 0-2 -> 0.1, 3-5 -> 0.05, 6-8 -> 0.025, 9 -> 0.0125
    got = lr_at("step", [0, 29, 30, 59, 60, 99], step_size=3, gamma=0.5)
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125], rel=1e-15)


def test_step_by_step():
    # lr0 * 0.5 ** floor(step / 3): step 2 -> 0.1, 3 -> 0.05, 99 -> 0.1 * 0.5**33
    got = lr_at("step", [0, 2, 3, 99], step_size=3, gamma=0.5, interval="step")
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.1 * 0.5 ** 33], rel=1e-15)


def test_step_default_gamma_is_a_tenth():
    # lr0 * 0.1 ** floor(epoch / 5): epoch 4 -> 0.1, epoch 5 -> 0.01
    assert lr_at("step", [49, 50], step_size=5) == pytest.approx([0.1, 0.01], rel=1e-15)


def test_multistep_by_epoch():
    # lr0 * 0.1 ** (milestones <= epoch), milestones [2, 5]: epochs 0-1 -> 0.1, 2-4 -> 0.01, 5- -> 0.001
    got = lr_at("multistep", [0, 19, 20, 49, 50, 99], milestones=[2, 5])
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-15)


def test_multistep_by_step():
    # milestones [2, 5] in steps, gamma 0.5: steps 0-1 -> 0.1, 2-4 -> 0.05, 5- -> 0.025
    got = lr_at("multistep", [1, 2, 4, 5, 99], milestones=[2, 5], gamma=0.5, interval="step")
    assert got == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025], rel=1e-15)


def test_exponential():
    # lr0 * exp(-k * t); by epoch with k 0.5: step 9 -> epoch 0, 10 -> epoch 1, 99 -> epoch 9
    got = lr_at("exponential", [0, 9, 10, 99], k=0.5)
    assert got == pytest.approx([0.1, 0.1, 0.1 * math.exp(-0.5), 0.1 * math.exp(-4.5)], rel=1e-15)
    # by step with k 0.05: step 1 -> exp(-0.05), step 99 -> exp(-4.95)
    got = lr_at("exponential", [1, 99], k=0.05, interval="step")
    assert got == pytest.approx([0.1 * math.exp(-0.05), 0.1 * math.exp(-4.95)], rel=1e-15)


def test_inverse_time():
    # lr0 / (1 + k * t); by epoch with k 0.5: epoch 1 -> 0.1/1.5, epoch 9 -> 0.1/5.5
    got = lr_at("inverse_time", [0, 9, 10, 99], k=0.5)
    assert got == pytest.approx([0.1, 0.1, 0.1 / 1.5, 0.1 / 5.5], rel=1e-15)
    # by step with k 0.1: step 10 -> 0.1/2, step 99 -> 0.1/10.9
    got = lr_at("inverse_time", [10, 99], k=0.1, interval="step")
    assert got == pytest.approx([0.05, 0.1 / 10.9], rel=1e-15)


def test_cosine_by_epoch_over_the_whole_run():
    # min_lr + (lr0 - min_lr) * (1 + cos(pi * epoch / t_max)) / 2, t_max = 10 epochs (the run), min_lr 0.01
    got = lr_at("cosine", [0, 9, 10, 50, 99, 100], min_lr=0.01)
    assert got == pytest.approx([0.1, 0.1,
                                 0.01 + 0.09 * (1 + math.cos(math.pi / 10)) / 2,
                                 0.01 + 0.09 * 0.5,                               # cos(pi/2) = 0
                                 0.01 + 0.09 * (1 + math.cos(0.9 * math.pi)) / 2,
                                 0.01], rel=1e-12)                                # t = t_max -> min_lr


def test_cosine_by_step_and_after_t_max():
    # t_max defaults to 100 steps: step 25 -> 0.1 * (1 + cos(pi/4)) / 2; from step 100 on: min_lr 0
    got = lr_at("cosine", [0, 25, 50, 100, 150], interval="step")
    assert got == pytest.approx([0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.0, 0.0], rel=1e-12, abs=1e-17)
    # an explicit t_max of 4 epochs: epoch 2 -> 0.05, epochs 4-9 -> min_lr
    got = lr_at("cosine", [20, 39, 40, 99], t_max=4, min_lr=0.001)
    assert got == pytest.approx([0.001 + 0.099 * 0.5, 0.001 + 0.099 * (1 + math.cos(0.75 * math.pi)) / 2,
                                 0.001, 0.001], rel=1e-12)


def test_linear_decays_to_zero_over_the_run_by_default():
    # start lr0, end 0, duration = 10 epochs: epoch e -> 0.1 * (1 - e/10)
    got = lr_at("linear", [0, 9, 10, 99, 100])
    assert got == pytest.approx([0.1, 0.1, 0.09, 0.01, 0.0], rel=1e-12, abs=1e-17)


def test_linear_ramp_by_step_then_constant():
    # start 0.05 -> end 0.15 over 4 steps: step 2 -> 0.1, step 4 and later -> 0.15
    got = lr_at("linear", [0, 2, 4, 99], start=0.05, end=0.15, duration=4, interval="step")
    assert got == pytest.approx([0.05, 0.1, 0.15, 0.15], rel=1e-15)


def test_warmup_in_front_of_constant():
    # warmup_steps 5 from 0: lr = 0.1 * step / 5 for step < 5, then 0.1
    got = lr_at("constant", [0, 1, 4, 5, 99], warmup_steps=5)
    assert got == pytest.approx([0.0, 0.02, 0.08, 0.1, 0.1], rel=1e-15, abs=1e-18)
    assert got[2] < 0.1 and got[3] == 0.1  # lr(warmup_steps - 1) < lr0 == lr(warmup_steps), exactly


def test_warmup_start_lr():
    # from 0.01: 0.01 + (0.1 - 0.01) * step / 4 -> step 2: 0.055
    got = lr_at("constant", [0, 2, 4], warmup_steps=4, warmup_start_lr=0.01)
    assert got == pytest.approx([0.01, 0.055, 0.1], rel=1e-15)


def test_warmup_epochs_become_steps_with_steps_per_epoch():
    # 1.5 epochs * 10 steps = 15 steps: step 14 -> 0.1 * 14/15, step 15 -> 0.1
    got = lr_at("constant", [14, 15], warmup_epochs=1.5)
    assert got == pytest.approx([0.1 * 14 / 15, 0.1], rel=1e-15) and got[1] == 0.1
    # 0.25 epochs * 10 = 2.5 steps, rounded half up to 3: step 2 -> 0.1 * 2/3
    got = lr_at("constant", [2, 3], warmup_epochs=0.25)
    assert got == pytest.approx([0.1 * 2 / 3, 0.1], rel=1e-15)
    # with 7 steps per epoch, 1 epoch = 7 steps
    got = lr_at("constant", [6, 7], spe=7, total=70, warmup_epochs=1)
    assert got == pytest.approx([0.1 * 6 / 7, 0.1], rel=1e-15)


def test_the_inner_schedule_starts_at_the_hand_over():
    # warmup 1 epoch (10 steps), then step decay every 2 epochs counted from step 10:
    # steps 10-29 -> inner epochs 0-1 -> 0.1; step 30 -> inner epoch 2 -> 0.01
    got = lr_at("step", [9, 10, 29, 30], warmup_epochs=1, step_size=2)
    assert got == pytest.approx([0.09, 0.1, 0.1, 0.01], rel=1e-15)


def test_warmup_then_cosine_by_epoch():
    # 1 epoch of warmup (10 steps), then cosine over the remaining 9 epochs: t = floor((step - 10) / 10)
    got = lr_at("cosine", [9, 10, 19, 20, 99, 100], warmup_epochs=1, min_lr=0.001)
    assert got == pytest.approx([0.1 * 9 / 10, 0.1, 0.1,
                                 0.001 + 0.099 * (1 + math.cos(math.pi / 9)) / 2,
                                 0.001 + 0.099 * (1 + math.cos(8 * math.pi / 9)) / 2,   # last update: t = 8
                                 0.001], rel=1e-12)                                      # lr(total_steps) = min_lr
    assert got[1] == 0.1


def test_warmup_then_cosine_by_step():
    # 20 warmup steps, then cosine over the remaining 80 steps: step 60 -> t = 40 = t_max/2 -> 0.05
    got = lr_at("cosine", [19, 20, 60, 99, 100], warmup_steps=20, interval="step")
    assert got == pytest.approx([0.1 * 19 / 20, 0.1, 0.05, 0.1 * (1 + math.cos(79 * math.pi / 80)) / 2, 0.0],
                                rel=1e-12, abs=1e-17)
    assert got[1] == 0.1 and got[3] < 1e-4


def test_warmup_cosine_is_cosine_with_one_epoch_of_warmup_by_default():
    steps = range(101)
    alias = lr_at("warmup_cosine", steps)
    assert alias == lr_at("cosine", steps, warmup_epochs=1)
    assert alias[9] == pytest.approx(0.09) and alias[10] == 0.1 and alias[100] == 0.0
    # warmup_steps replaces the default epoch; warmup_epochs 0 turns the warmup off
    assert lr_at("warmup_cosine", [4, 5], warmup_steps=5) == pytest.approx([0.08, 0.1], rel=1e-15)
    assert lr_at("warmup_cosine", [0], warmup_epochs=0) == [0.1]


def test_warmup_wraps_any_step_callable():
    # inner(s) = 1 - 0.01 s; from 0.2 over 4 steps: step 2 -> 0.2 + 0.8 * 2/4 = 0.6; step 5 -> inner(1) = 0.99
    warm = Warmup(lambda s: 1 - 0.01 * s, 4, 0.2)
    assert [warm(0), warm(2), warm(4), warm(5)] == pytest.approx([0.2, 0.6, 1.0, 0.99], rel=1e-15)


def test_momentum_ramp_by_epoch():
    # 0.5 -> 0.99 over 5 epochs: epoch e < 5 -> 0.5 + 0.49 * e / 5; from epoch 5 on -> 0.99
    momentum = build_momentum_schedule({"name": "linear", "start": 0.5, "end": 0.99, "duration": 5,
                                        "interval": "epoch"}, 10, 100)
    got = [momentum(s) for s in [0, 9, 10, 49, 50, 99]]
    assert got == pytest.approx([0.5, 0.5, 0.598, 0.892, 0.99, 0.99], rel=1e-15)
    assert got[-1] == 0.99


def test_momentum_ramp_by_step_and_other_schedules():
    # by step over 50 steps: step 25 -> 0.5 + 0.49 / 2 = 0.745
    momentum = build_momentum_schedule({"name": "linear", "start": 0.5, "end": 0.99, "duration": 50,
                                        "interval": "step"}, 10, 100)
    assert [momentum(0), momentum(25), momentum(50)] == pytest.approx([0.5, 0.745, 0.99], rel=1e-15)
    # cosine from the optimizer's momentum 0.95 down to 0.85 over the run: epoch 5 -> 0.9
    momentum = build_momentum_schedule({"name": "cosine", "min_lr": 0.85}, 10, 100, momentum=0.95)
    assert [momentum(0), momentum(50)] == pytest.approx([0.95, 0.9], rel=1e-15)


@pytest.mark.parametrize("options,match", [
    ({"name": "linear", "start": 0.5, "end": 1.0, "duration": 5},
     r"^momentum_schedule\.end: a momentum must be in \[0, 1\), got 1\.0$"),
    ({"name": "constant"}, r"^momentum_schedule\.lr: the base momentum is required"),
    ({"name": "step", "lr": 0.6, "step_size": 1, "gamma": 2},
     r"^momentum_schedule: momentum must stay in \[0, 1\), but it is 1\.2 at step 10$"),
    ({"name": "linear", "start": 0.5, "end": 0.9, "durations": 5},
     r"^momentum_schedule\.durations: unknown option for schedule 'linear' \(did you mean 'duration'\?\)"),
])
def test_bad_momentum_schedules_are_rejected(options, match):
    with pytest.raises(ConfigError, match=match):
        build_momentum_schedule(options, 10, 100)


@pytest.mark.parametrize("name,options,match", [
    ("step", {}, r"^schedule\.step_size: required, an integer >= 1$"),
    ("step", {"step_size": 0}, r"^schedule\.step_size: must be an integer >= 1, got 0$"),
    ("step", {"step_size": 2.5}, r"^schedule\.step_size: must be an integer >= 1, got 2\.5$"),
    ("step", {"step_size": 2, "gamma": 0}, r"^schedule\.gamma: must be a number in \(0, inf\), got 0$"),
    ("step", {"step_size": 2, "gamm": 0.5},
     r"^schedule\.gamm: unknown option for schedule 'step' \(did you mean 'gamma'\?\)"),
    ("multistep", {}, r"^schedule\.milestones: required, a list of strictly increasing integers >= 1"),
    ("multistep", {"milestones": [30, 20]},
     r"^schedule\.milestones: must be a list of strictly increasing .*, got \[30, 20\]$"),
    ("multistep", {"milestones": [0, 20]}, r"^schedule\.milestones: must be .*, got \[0, 20\]$"),
    ("multistep", {"milestones": []}, r"^schedule\.milestones: must be .*, got \[\]$"),
    ("exponential", {}, r"^schedule\.k: required, a number > 0$"),
    ("inverse_time", {"k": -1}, r"^schedule\.k: must be a number in \(0, inf\), got -1$"),
    ("cosine", {"t_max": 0}, r"^schedule\.t_max: must be a number in \(0, inf\), got 0$"),
    ("cosine", {"min_lr": -0.1}, r"^schedule\.min_lr: must be a number in \[0, inf\), got -0\.1$"),
    ("linear", {"duration": 0}, r"^schedule\.duration: must be a number in \(0, inf\), got 0$"),
    ("constant", {"interval": "epochs"},
     r"^schedule\.interval: must be 'epoch' or 'step', got 'epochs' \(did you mean 'epoch'\?\)$"),
    ("constant", {"warmup_epochs": 1, "warmup_steps": 5},
     r"^schedule\.warmup_epochs: give warmup_epochs or warmup_steps, not both"),
    ("constant", {"warmup_steps": -1}, r"^schedule\.warmup_steps: must be an integer >= 0, got -1$"),
    ("constant", {"warmup_epochs": -1}, r"^schedule\.warmup_epochs: must be a number in \[0, inf\), got -1$"),
    ("warmup_cosine", {"warmup_epochs": 10},
     r"^schedule\.warmup_epochs: the warmup \(10 epochs = 100 steps\) must be shorter than training \(100 steps\)$"),
    ("constant", {"warmup_steps": 150},
     r"^schedule\.warmup_steps: the warmup \(150 steps\) must be shorter than training \(100 steps\)$"),
    ("cosin", {}, r"^schedule: unknown schedule 'cosin' \(did you mean 'cosine'\?\)"),
])
def test_bad_options_are_rejected_with_the_option_name(name, options, match):
    with pytest.raises(ConfigError, match=match):
        build_schedule(name, options, 0.1, 10, 100)
