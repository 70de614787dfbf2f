"""Optimizers against numbers worked by hand from their update rules; state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnntrain.registry import OPTIMIZERS, SCHEDULES


def run_steps(name, kwargs, grads, p0=1.0, lr=None):
    opt = OPTIMIZERS.create(name, kwargs)
    params = {"layers.0.W": np.array([p0])}
    out = []
    for g in grads:
        opt.step(params, {"layers.0.W": np.array([g])}, lr)
        out.append(float(params["layers.0.W"][0]))
    return out


def test_sgd_by_hand():
    # p -= lr * g: 1 - 0.1*2 = 0.8; 0.8 - 0.1*(-1) = 0.9; 0.9 - 0.1*0.5 = 0.85
    assert run_steps("sgd", {"lr": 0.1}, [2.0, -1.0, 0.5]) == pytest.approx([0.8, 0.9, 0.85], abs=1e-15)


def test_sgd_weight_decay_is_added_to_the_gradient_of_weights_only():
    opt = OPTIMIZERS.create("sgd", {"lr": 0.1, "weight_decay": 0.5})
    params = {"layers.0.W": np.array([2.0]), "layers.0.b": np.array([2.0])}
    opt.step(params, {"layers.0.W": np.array([1.0]), "layers.0.b": np.array([1.0])})
    # W: g = 1 + 0.5*2 = 2 -> 2 - 0.1*2 = 1.8; b: no decay -> 2 - 0.1*1 = 1.9
    assert params["layers.0.W"][0] == pytest.approx(1.8) and params["layers.0.b"][0] == pytest.approx(1.9)


def test_adam_by_hand_with_bias_correction():
    # lr 0.1, b1 0.9, b2 0.999, eps 1e-8, p0 = 1, g = 2, 1
    # t=1: m = 0.2, v = 0.004; mhat = 0.2/0.1 = 2, vhat = 0.004/0.001 = 4 -> p = 1 - 0.1*2/(2+1e-8)
    p1 = 1 - 0.1 * 2 / (2 + 1e-8)
    # t=2: m = 0.18 + 0.1 = 0.28, v = 0.003996 + 0.001 = 0.004996
    #      mhat = 0.28/0.19, vhat = 0.004996/0.001999
    p2 = p1 - 0.1 * (0.28 / 0.19) / (math.sqrt(0.004996 / 0.001999) + 1e-8)
    got = run_steps("adam", {"lr": 0.1}, [2.0, 1.0])
    assert got == pytest.approx([p1, p2], rel=1e-12)


def test_adam_without_bias_correction():
    # t=1: m = 0.2, v = 0.004 -> p = 1 - 0.1 * 0.2 / (sqrt(0.004) + 1e-8)
    got = run_steps("adam", {"lr": 0.1, "bias_correction": False}, [2.0])
    assert got == pytest.approx([1 - 0.1 * 0.2 / (math.sqrt(0.004) + 1e-8)], rel=1e-12)


def test_lr_argument_overrides_the_base_lr():
    assert run_steps("sgd", {"lr": 0.1}, [1.0], lr=0.5) == pytest.approx([0.5])


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_state_round_trip_gives_identical_next_steps(name):
    rng = np.random.default_rng(0)
    params = {"layers.0.W": rng.standard_normal((3, 2)), "layers.0.b": rng.standard_normal(2)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(4)]
    a = OPTIMIZERS.create(name, {"lr": 0.01})
    for g in grads[:2]:
        a.step(params, g)
    b = OPTIMIZERS.create(name, {"lr": 0.01})
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    pa = {k: v.copy() for k, v in params.items()}
    pb = {k: v.copy() for k, v in params.items()}
    for g in grads[2:]:
        a.step(pa, g)
        b.step(pb, g)
    for key in pa:
        np.testing.assert_array_equal(pa[key], pb[key])


@pytest.mark.parametrize("kwargs,match", [({"lr": 0}, r"optimizer\.lr: must be a number in \(0, inf\), got 0"),
                                          ({"lr": -1}, r"optimizer\.lr: must be"),
                                          ({"lr": 0.1, "betas": [0.9, 1.0]}, r"optimizer\.betas\[1\]: must be a number in \[0, 1\)"),
                                          ({"lr": 0.1, "eps": 0}, r"optimizer\.eps: must be")])
def test_bad_hyperparameters_are_rejected(kwargs, match):
    from cnntrain.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        OPTIMIZERS.create("adam", kwargs, where="optimizer")


def test_constant_schedule():
    s = SCHEDULES.create("constant", {"lr": 0.01})
    assert [s(0), s(1), s(10_000)] == [0.01, 0.01, 0.01]
