"""Initialisers: the distribution each promises, with its fan-in/fan-out convention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnntrain.init import make_init
from cnntrain.registry import INITS, LAYERS

SHAPE, FAN_IN, FAN_OUT = (400, 300), 400, 300

# name -> (expected std, expected bound or None): std from the formula, bound for uniform ones
EXPECTED = {
    "normal": (0.01, None),
    "uniform": (0.05 / math.sqrt(3), 0.05),
    "lecun_normal": (math.sqrt(1 / FAN_IN), None),
    "lecun": (math.sqrt(1 / FAN_IN), None),
    "lecun_uniform": (math.sqrt(1 / FAN_IN), math.sqrt(3 / FAN_IN)),
    "xavier_normal": (math.sqrt(2 / (FAN_IN + FAN_OUT)), None),
    "glorot_normal": (math.sqrt(2 / (FAN_IN + FAN_OUT)), None),
    "xavier_uniform": (math.sqrt(2 / (FAN_IN + FAN_OUT)), math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "glorot_uniform": (math.sqrt(2 / (FAN_IN + FAN_OUT)), math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "he_normal": (math.sqrt(2 / FAN_IN), None),
    "kaiming_normal": (math.sqrt(2 / FAN_IN), None),
    "he_uniform": (math.sqrt(2 / FAN_IN), math.sqrt(6 / FAN_IN)),
    "kaiming_uniform": (math.sqrt(2 / FAN_IN), math.sqrt(6 / FAN_IN)),
    "zeros": (0.0, 0.0),
    "constant": (0.0, 0.0),
}


@pytest.mark.parametrize("name", INITS.names())
def test_initialiser_statistics(name):
    assert name in EXPECTED, f"initialiser '{name}' is registered but has no expected statistics"
    w = INITS.create(name)(SHAPE, FAN_IN, FAN_OUT, np.random.default_rng(0))
    assert w.shape == SHAPE and w.dtype == np.float32
    std, bound = EXPECTED[name]
    assert abs(w.mean()) < 0.01 * max(std, 1e-3) + 1e-6
    assert w.std() == pytest.approx(std, rel=0.02, abs=1e-7)
    if bound is not None:
        assert np.abs(w).max() <= bound + 1e-7
        if bound > 0:
            assert np.abs(w).max() > 0.99 * bound


def test_constant_value_and_options():
    assert np.all(make_init({"constant": {"value": 0.5}})((3, 2), 3, 2, np.random.default_rng(0)) == 0.5)
    w = make_init({"normal": {"std": 0.1}})((500, 400), 500, 400, np.random.default_rng(0))
    assert w.std() == pytest.approx(0.1, rel=0.02)
    with pytest.raises(ValueError, match="std: must be > 0"):
        make_init({"normal": {"std": -1}})
    with pytest.raises(ValueError, match="unknown initializer 'he'"):
        make_init("he")


def test_conv_fans_are_channels_times_kernel_area():
    """A conv with C=8, 3x3 kernels and F=16 filters: fan_in = 8*9 = 72, fan_out = 16*9 = 144."""
    layer = LAYERS.create("conv2d", {"filters": 16, "kernel_size": 3, "init": "he_normal"})
    layer.build((8, 30, 30), np.random.default_rng(0))
    assert layer.params["W"].std() == pytest.approx(math.sqrt(2 / 72), rel=0.05)
    layer = LAYERS.create("conv2d", {"filters": 16, "kernel_size": 3, "init": "xavier_uniform"})
    layer.build((8, 30, 30), np.random.default_rng(0))
    assert np.abs(layer.params["W"]).max() <= math.sqrt(6 / (72 + 144)) + 1e-7


def test_zero_init_makes_every_unit_identical():
    """Why zeros fail: with every W = 0 the hidden activations and all weight gradients are 0, so
    only the output bias learns, and the network stays a constant predictor."""
    from cnntrain.build import build_model
    from cnntrain.registry import LOSSES, OPTIMIZERS

    specs = [("dense", {"units": 4, "init": "zeros"}), ("tanh", {}), ("dense", {"units": 3, "init": "zeros"})]
    model = build_model(specs, (5,), np.random.default_rng(0)).astype(np.float64)
    loss, opt = LOSSES.create("softmax_cross_entropy"), OPTIMIZERS.create("sgd", {"lr": 0.5})
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    for _ in range(10):
        loss.forward(model.forward(x, training=True), y)
        model.backward(loss.backward())
        opt.step(model.named_params(), model.named_grads())
    params = model.named_params()
    assert np.all(params["layers.0.W"] == 0) and np.all(params["layers.2.W"] == 0)
    assert np.any(params["layers.2.b"] != 0), "the output bias did learn"
