"""Optimizers against numbers worked by hand from their update rules; state round trip."""

from __future__ import annotations

import inspect
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


def test_every_optimizer_is_registered():
    assert set(OPTIMIZERS.names()) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"}


@pytest.mark.parametrize("name,defaults", [
    ("sgd", {"lr": 0.01, "weight_decay": 0.0}),
    ("momentum", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}),
    ("nesterov", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}),
    ("adagrad", {"lr": 0.01, "eps": 1e-8, "weight_decay": 0.0}),
    ("rmsprop", {"lr": 0.001, "rho": 0.9, "eps": 1e-8, "weight_decay": 0.0}),
    ("adam", {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "bias_correction": True}),
    ("adamw", {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "bias_correction": True}),
])
def test_defaults_in_the_signature(name, defaults):
    # config.py reads these to show the resolved config; the README lists the same numbers
    params = inspect.signature(OPTIMIZERS.get(name)).parameters
    assert {k: p.default for k, p in params.items()} == defaults


def test_sgd_weight_decay_three_steps():
    # lr 0.1, wd 0.5, p0 = 1, g = 2, -1, 0.5; g' = g + 0.5*p
    # 1: g' = 2 + 0.5 = 2.5           -> p = 1 - 0.25 = 0.75
    # 2: g' = -1 + 0.375 = -0.625     -> p = 0.75 + 0.0625 = 0.8125
    # 3: g' = 0.5 + 0.40625 = 0.90625 -> p = 0.8125 - 0.090625 = 0.721875
    got = run_steps("sgd", {"lr": 0.1, "weight_decay": 0.5}, [2.0, -1.0, 0.5])
    assert got == pytest.approx([0.75, 0.8125, 0.721875], abs=1e-15)


def test_momentum_by_hand():
    # lr 0.1, mu 0.9, p0 = 1, g = 2, -1, 0.5; v = mu*v - lr*g; p += v
    # 1: v = -0.2                     -> p = 0.8
    # 2: v = -0.18 + 0.1 = -0.08      -> p = 0.72
    # 3: v = -0.072 - 0.05 = -0.122   -> p = 0.598
    got = run_steps("momentum", {"lr": 0.1, "momentum": 0.9}, [2.0, -1.0, 0.5])
    assert got == pytest.approx([0.8, 0.72, 0.598], abs=1e-15)


def test_momentum_weight_decay_by_hand():
    # lr 0.1, mu 0.9, wd 0.5, p0 = 1, g = 2, -1, 0.5; g' = g + 0.5*p
    # 1: g' = 2.5;      v = -0.25                          -> p = 0.75
    # 2: g' = -0.625;   v = -0.225 + 0.0625 = -0.1625      -> p = 0.5875
    # 3: g' = 0.79375;  v = -0.14625 - 0.079375 = -0.225625 -> p = 0.361875
    got = run_steps("momentum", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.5}, [2.0, -1.0, 0.5])
    assert got == pytest.approx([0.75, 0.5875, 0.361875], abs=1e-15)


def test_nesterov_by_hand():
    # lr 0.1, mu 0.9, p0 = 1, g = 2, -1, 0.5
    # v_prev = v; v = mu*v - lr*g; p += -mu*v_prev + (1+mu)*v
    # 1: v_prev = 0;      v = -0.2;   p += 0 + 1.9*(-0.2) = -0.38           -> 0.62
    # 2: v_prev = -0.2;   v = -0.08;  p += 0.18 + 1.9*(-0.08) = 0.028       -> 0.648
    # 3: v_prev = -0.08;  v = -0.122; p += 0.072 + 1.9*(-0.122) = -0.1598   -> 0.4882
    got = run_steps("nesterov", {"lr": 0.1, "momentum": 0.9}, [2.0, -1.0, 0.5])
    assert got == pytest.approx([0.62, 0.648, 0.4882], abs=1e-14)


def test_nesterov_tracks_the_look_ahead_point_of_classical_nesterov():
    # Classical Nesterov on f(x) = a*x^2/2: v = mu*v - lr*f'(x + mu*v); x += v. The stored parameter of
    # the nesterov rule is the look-ahead point x + mu*v, and its gradient is taken there.
    a, lr, mu = 3.0, 0.05, 0.9
    x, v = 1.0, 0.0
    opt = OPTIMIZERS.create("nesterov", {"lr": lr, "momentum": mu})
    params = {"w": np.array([x + mu * v])}
    for _ in range(5):
        v = mu * v - lr * a * (x + mu * v)
        x = x + v
        opt.step(params, {"w": a * params["w"]})
        assert params["w"][0] == pytest.approx(x + mu * v, rel=1e-12)


@pytest.mark.parametrize("name,expected", [
    # lr 0.1, p0 = 1, g = 2 with mu 0.9, then g = -1 with mu 0.5 (set between the steps)
    # momentum: v = -0.2, p = 0.8; v = 0.5*(-0.2) + 0.1 = 0.0 -> p = 0.8
    ("momentum", [0.8, 0.8]),
    # nesterov: p = 0.62; v_prev = -0.2, v = 0.0, p += 0.5*0.2 + 1.5*0 = 0.1 -> 0.72
    ("nesterov", [0.62, 0.72]),
])
def test_changing_mu_between_steps_takes_effect(name, expected):
    opt = OPTIMIZERS.create(name, {"lr": 0.1, "momentum": 0.9})
    params = {"layers.0.W": np.array([1.0])}
    got = []
    for g, mu in [(2.0, 0.9), (-1.0, 0.5)]:
        opt.mu = mu
        opt.step(params, {"layers.0.W": np.array([g])})
        got.append(float(params["layers.0.W"][0]))
    assert got == pytest.approx(expected, abs=1e-15)


def test_adagrad_by_hand():
    # lr 0.1, eps 1e-8, p0 = 1, g = 2, -1, 0.5; cache += g^2; p -= lr*g/(sqrt(cache) + eps)
    p1 = 1 - 0.1 * 2 / (2 + 1e-8)                      # cache = 4
    p2 = p1 + 0.1 * 1 / (math.sqrt(5) + 1e-8)          # cache = 5
    p3 = p2 - 0.1 * 0.5 / (math.sqrt(5.25) + 1e-8)     # cache = 5.25
    got = run_steps("adagrad", {"lr": 0.1}, [2.0, -1.0, 0.5])
    assert got == pytest.approx([p1, p2, p3], rel=1e-12)


def test_rmsprop_by_hand():
    # lr 0.1, rho 0.9, eps 1e-8, p0 = 1, g = 2, -1, 0.5
    # cache = rho*cache + (1-rho)*g^2; p -= lr*g/(sqrt(cache) + eps)
    p1 = 1 - 0.1 * 2 / (math.sqrt(0.4) + 1e-8)         # cache = 0.1*4 = 0.4
    p2 = p1 + 0.1 * 1 / (math.sqrt(0.46) + 1e-8)       # cache = 0.36 + 0.1 = 0.46
    p3 = p2 - 0.1 * 0.5 / (math.sqrt(0.439) + 1e-8)    # cache = 0.414 + 0.025 = 0.439
    got = run_steps("rmsprop", {"lr": 0.1, "rho": 0.9}, [2.0, -1.0, 0.5])
    assert got == pytest.approx([p1, p2, p3], rel=1e-12)


# Adam on p0 = 1, g = 2, 1, -1 with lr 0.1, b1 0.9, b2 0.999, eps 1e-8 (t starts at 1):
# t=1: m = 0.2,   v = 0.004;     1-b1^t = 0.1,   1-b2^t = 0.001
# t=2: m = 0.28,  v = 0.004996;  1-b1^t = 0.19,  1-b2^t = 0.001999
# t=3: m = 0.152, v = 0.005991004; 1-b1^t = 0.271, 1-b2^t = 0.002997001
ADAM_DELTAS = [0.1 * (0.2 / 0.1) / (math.sqrt(0.004 / 0.001) + 1e-8),
               0.1 * (0.28 / 0.19) / (math.sqrt(0.004996 / 0.001999) + 1e-8),
               0.1 * (0.152 / 0.271) / (math.sqrt(0.005991004 / 0.002997001) + 1e-8)]


def test_adam_three_steps():
    p1 = 1 - ADAM_DELTAS[0]
    p2 = p1 - ADAM_DELTAS[1]
    p3 = p2 - ADAM_DELTAS[2]
    assert run_steps("adam", {"lr": 0.1}, [2.0, 1.0, -1.0]) == pytest.approx([p1, p2, p3], rel=1e-12)


def test_adamw_decays_weights_before_the_adam_step_and_leaves_biases():
    # lr 0.1, weight_decay 0.5: W <- W*(1 - 0.1*0.5) - adam_delta; the Adam deltas are those of the raw g
    opt = OPTIMIZERS.create("adamw", {"lr": 0.1, "weight_decay": 0.5})
    params = {"layers.0.W": np.array([1.0]), "layers.0.b": np.array([1.0])}
    got_w, got_b = [], []
    for g in [2.0, 1.0, -1.0]:
        opt.step(params, {"layers.0.W": np.array([g]), "layers.0.b": np.array([g])})
        got_w.append(float(params["layers.0.W"][0]))
        got_b.append(float(params["layers.0.b"][0]))
    w1 = 1 * 0.95 - ADAM_DELTAS[0]   # ~ 0.85
    w2 = w1 * 0.95 - ADAM_DELTAS[1]
    w3 = w2 * 0.95 - ADAM_DELTAS[2]
    b1 = 1 - ADAM_DELTAS[0]          # no decay on biases: plain Adam
    b2 = b1 - ADAM_DELTAS[1]
    b3 = b2 - ADAM_DELTAS[2]
    assert got_w == pytest.approx([w1, w2, w3], rel=1e-12)
    assert got_b == pytest.approx([b1, b2, b3], rel=1e-12)


def test_adam_weight_decay_is_coupled_l2_and_differs_from_adamw():
    # adam, lr 0.1, wd 0.5, p0 = 1, g = 2, 1: the L2 term enters m and v
    # t=1: g' = 2 + 0.5*1 = 2.5; m = 0.25, v = 0.00625 -> p1 = 1 - 0.1*(0.25/0.1)/(sqrt(0.00625/0.001) + eps) ~ 0.9
    p1 = 1 - 0.1 * 2.5 / (2.5 + 1e-8)
    # t=2: g' = 1 + 0.5*p1; m = 0.9*0.25 + 0.1*g'; v = 0.999*0.00625 + 0.001*g'^2
    g2 = 1 + 0.5 * p1
    m2, v2 = 0.9 * 0.25 + 0.1 * g2, 0.999 * 0.00625 + 0.001 * g2 ** 2
    p2 = p1 - 0.1 * (m2 / 0.19) / (math.sqrt(v2 / 0.001999) + 1e-8)
    adam = run_steps("adam", {"lr": 0.1, "weight_decay": 0.5}, [2.0, 1.0])
    adamw = run_steps("adamw", {"lr": 0.1, "weight_decay": 0.5}, [2.0, 1.0])
    assert adam == pytest.approx([p1, p2], rel=1e-12)
    # adamw after one step: 1*0.95 - 0.1*2/(2 + 1e-8) ~ 0.85, not ~0.9
    assert adamw[0] == pytest.approx(0.95 - 0.1 * 2 / (2 + 1e-8), rel=1e-12)
    assert abs(adamw[0] - adam[0]) > 0.04


@pytest.mark.parametrize("lr", [0.01, np.float64(0.01)])
@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_float32_parameters_and_slots_stay_float32(name, lr):
    rng = np.random.default_rng(0)
    params = {"layers.0.W": rng.standard_normal((3, 2)).astype(np.float32),
              "layers.0.b": rng.standard_normal(2).astype(np.float32)}
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    before = {k: v.copy() for k, v in grads.items()}
    ids = {k: id(v) for k, v in params.items()}
    opt = OPTIMIZERS.create(name, {"lr": 0.01, "weight_decay": 0.1})
    for _ in range(3):
        opt.step(params, grads, lr)
    for key, p in params.items():
        assert p.dtype == np.float32, f"{name}: {key} is {p.dtype}"
        assert id(p) == ids[key], f"{name}: {key} was replaced, not updated in place"
        np.testing.assert_array_equal(grads[key], before[key], err_msg=f"{name} wrote into the gradient {key}")
    for key, value in opt.state_dict().items():
        if key != "optim/t":
            assert value.dtype == np.float32, f"{name}: slot {key} is {value.dtype}"


@pytest.mark.parametrize("name,kwargs,match", [
    ("momentum", {"momentum": 1.0}, r"optimizer\.momentum: must be a number in \[0, 1\), got 1\.0"),
    ("nesterov", {"momentum": -0.1}, r"optimizer\.momentum: must be a number in \[0, 1\), got -0\.1"),
    ("rmsprop", {"rho": 1}, r"optimizer\.rho: must be a number in \[0, 1\), got 1"),
    ("rmsprop", {"eps": 0}, r"optimizer\.eps: must be a number in \(0, inf\), got 0"),
    ("adagrad", {"eps": -1e-8}, r"optimizer\.eps: must be a number in \(0, inf\)"),
    ("adamw", {"weight_decay": -0.01}, r"optimizer\.weight_decay: must be a number in \[0, inf\), got -0\.01"),
    ("momentum", {"mu": 0.9}, r"optimizer\.mu: unknown option for optimizer 'momentum'"),
])
def test_bad_hyperparameters_of_each_rule_are_rejected(name, kwargs, match):
    from cnntrain.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        OPTIMIZERS.create(name, kwargs, where="optimizer")


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"])
def test_blocked_and_threaded_updates_of_large_parameters_are_bit_identical(monkeypatch, name):
    """Whole parameters on one thread, against blocks (one ending short) on one thread and on three."""
    from cnntrain.optim import optimizers

    rng = np.random.default_rng(0)
    shapes = {"layers.0.W": (5000 + 7,), "layers.0.b": (5,), "layers.1.W": (40, 30)}
    results = []
    for threads, block in ((1, 10**9), (1, 1000), (3, 1000)):
        monkeypatch.setattr(optimizers, "BLOCK", block)
        monkeypatch.setattr(optimizers, "THREADED_MIN", 2000)  # layers.0.W in pieces, layers.1.W in blocks
        opt = OPTIMIZERS.create(name, {"lr": 0.01, "weight_decay": 0.01})
        opt.threads = threads
        params = {k: np.random.default_rng(1).standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        for _ in range(3):
            opt.step(params, {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}, 0.01)
        results.append((params, opt.state_dict()))
        rng = np.random.default_rng(0)
    (p1, s1), *others = results
    for p3, s3 in others:
        for key in p1:
            np.testing.assert_array_equal(p3[key], p1[key], err_msg=key)
        assert set(s1) == set(s3)
        for key in s1:
            np.testing.assert_array_equal(s3[key], s1[key], err_msg=key)
