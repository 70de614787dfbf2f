"""Every registered layer: gradients against finite differences (float64), shapes, config round trip."""

from __future__ import annotations

import numpy as np
import pytest

from cnntrain.build import build_model
from cnntrain.layers.norm import BatchNorm
from cnntrain.model import Sequential
from cnntrain.registry import LAYERS
from gradcheck import check_layer

# name -> [(kwargs, input shape without batch, batch size)]; small odd shapes, stride 2, same padding.
CASES = {
    "conv2d": [
        ({"filters": 2, "kernel_size": 3}, (3, 5, 5), 2),
        ({"filters": 2, "kernel_size": 3, "stride": 2, "padding": "same"}, (3, 5, 5), 2),
        ({"filters": 3, "kernel_size": 2, "padding": "same"}, (2, 5, 6), 1),
        ({"filters": 2, "kernel_size": [3, 2], "stride": [2, 1], "padding": 1}, (1, 7, 5), 2),
        ({"filters": 2, "kernel_size": 3, "dilation": 2, "padding": "same"}, (2, 7, 7), 2),
        ({"filters": 2, "kernel_size": 3, "use_bias": False, "stride": 2}, (3, 7, 7), 2),
        ({"filters": 3, "kernel_size": 3, "stride": 2, "padding": "same", "dilation": [1, 2]}, (6, 7, 8), 2),
    ],
    "maxpool2d": [
        ({"size": 2}, (3, 6, 6), 2),
        ({"size": 2}, (2, 5, 5), 2),
        ({"size": 3, "stride": 2}, (2, 7, 7), 2),
        ({"size": 2, "padding": "same"}, (2, 5, 5), 1),
    ],
    "avgpool2d": [
        ({"size": 2}, (3, 6, 6), 2),
        ({"size": 2}, (2, 5, 5), 1),
        ({"size": 3, "stride": 2}, (2, 7, 7), 2),
        ({"size": 2, "padding": "same"}, (2, 5, 5), 1),
        ({"size": 3, "stride": 2, "padding": "same"}, (3, 5, 5), 2),
        ({"size": [3, 2], "stride": [1, 2], "padding": 1}, (1, 5, 6), 2),
    ],
    "global_avgpool": [({}, (3, 5, 5), 2), ({}, (2, 3, 4), 1)],
    "spp": [
        ({}, (2, 5, 5), 2),
        ({"levels": [1, 2, 3], "mode": "avg"}, (3, 7, 5), 2),
        ({"levels": [2, 3]}, (2, 7, 5), 1),
        ({"levels": [1, 2, 4], "mode": "avg"}, (1, 8, 8), 1),
    ],
    "batchnorm": [
        ({}, (3, 5, 5), 2),
        ({"momentum": 0.3}, (2, 3, 3), 1),
        ({}, (6,), 4),
        ({"eps": 1e-3}, (5,), 3),
    ],
    "dense": [({"units": 4}, (5,), 3), ({"units": 3, "use_bias": False}, (7,), 1)],
    "flatten": [({}, (3, 4, 5), 2)],
    "relu": [({}, (3, 4, 5), 2)],
    "leaky_relu": [({"alpha": 0.1}, (2, 3, 3), 2)],
    "sigmoid": [({}, (7,), 3)],
    "tanh": [({}, (2, 3, 3), 2)],
    "softmax": [({}, (6,), 3)],
    "dropout": [({"rate": 0.3}, (4, 5), 3)],
}


def all_cases():
    for name in LAYERS.names():
        for i, (kwargs, shape, n) in enumerate(CASES.get(name, [(None, None, None)])):
            yield pytest.param(name, kwargs, shape, n, id=f"{name}-{i}")


@pytest.mark.parametrize("name,kwargs,shape,n", list(all_cases()))
def test_gradients_match_finite_differences(name, kwargs, shape, n):
    assert kwargs is not None, f"layer '{name}' is registered but has no gradient-check case in CASES"
    rng = np.random.default_rng(0)
    layer = LAYERS.create(name, kwargs)
    model = Sequential([layer])
    model.build(shape, np.random.default_rng(1)).__len__()
    model.astype(np.float64)
    for key in layer.params:  # non-zero biases so a wrong db cannot hide
        layer.params[key] = rng.standard_normal(layer.params[key].shape)
    x = rng.standard_normal((n, *shape))
    reset = None
    if hasattr(layer, "rng"):  # hold random masks fixed across the finite-difference evaluations
        state = layer.rng.bit_generator.state
        reset = lambda: setattr(layer.rng.bit_generator, "state", state)  # noqa: E731
    check_layer(layer, x, rng, before_forward=reset)


@pytest.mark.parametrize("name", LAYERS.names())
def test_config_round_trip_and_dtype(name):
    for kwargs, shape, n in CASES.get(name, []):
        layer = LAYERS.create(name, kwargs)
        out_shape = layer.build(shape, np.random.default_rng(0))
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        x = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
        y = layer.forward(x, training=True)
        assert y.shape == (n, *out_shape), f"{name}{kwargs}: forward gave {y.shape}, build said {out_shape}"
        assert y.dtype == np.float32, f"{name}{kwargs}: float32 input gave {y.dtype}"
        assert all(p.dtype == np.float32 for p in layer.params.values())
        dx = layer.backward(np.ones_like(y))
        assert dx.shape == x.shape and dx.dtype == np.float32


def test_conv_worked_example_from_course_notes():
    """5x5x3 input, padding 1 (7x7 padded), two 3x3x3 filters with bias, stride 2 -> 3x3x2."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(1, 3, 5, 5)).astype(np.float64)
    layer = LAYERS.create("conv2d", {"filters": 2, "kernel_size": 3, "stride": 2, "padding": 1})
    layer.build((3, 5, 5), rng)
    W = rng.integers(-1, 2, size=(2, 3, 3, 3)).astype(np.float64)
    layer.params["W"], layer.params["b"] = W, np.array([1.0, 0.0])
    y = layer.forward(x, training=False)
    assert y.shape == (1, 2, 3, 3)
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    # first value: sum over the three channels of the top-left 3x3 window times the kernel, plus b0
    first = sum(float((xp[c, 0:3, 0:3] * W[0, c]).sum()) for c in range(3)) + 1.0
    assert y[0, 0, 0, 0] == first
    # window (1, 2) of filter 1 starts at row 2, column 4 of the padded input
    assert y[0, 1, 1, 2] == sum(float((xp[c, 2:5, 4:7] * W[1, c]).sum()) for c in range(3))
    layer1 = LAYERS.create("conv2d", {"filters": 2, "kernel_size": 3, "stride": 1, "padding": 1})
    assert layer1.build((3, 5, 5), rng) == (2, 5, 5)


def test_maxpool_gradient_goes_to_first_maximum_on_ties():
    layer = LAYERS.create("maxpool2d", {"size": 2})
    layer.build((1, 2, 2), None)
    x = np.zeros((1, 1, 2, 2), dtype=np.float32)
    layer.forward(x, training=True)
    dx = layer.backward(np.full((1, 1, 1, 1), 5.0, dtype=np.float32))
    assert dx.tolist() == [[[[5.0, 0.0], [0.0, 0.0]]]]


def test_dropout_is_inverted_and_identity_at_evaluation():
    layer = LAYERS.create("dropout", {"rate": 0.25})
    layer.build((1000,), np.random.default_rng(0))
    x = np.ones((20, 1000), dtype=np.float32)
    assert layer.forward(x, training=False) is x
    y = layer.forward(x, training=True)
    kept = y != 0
    assert np.allclose(y[kept], 1 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.01, f"kept fraction {kept.mean()}"


def test_sigmoid_and_softmax_stay_finite_for_huge_inputs():
    x = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], dtype=np.float32)
    for name in ("sigmoid", "softmax", "tanh"):
        y = LAYERS.create(name, {}).forward(x, training=False)
        assert np.all(np.isfinite(y)), f"{name}: {y}"


def test_model_param_names_and_build_errors():
    specs = [("conv2d", {"filters": 4, "kernel_size": 3}), ("relu", {}), ("flatten", {}), ("dense", {"units": 10})]
    model = build_model(specs, (1, 8, 8), np.random.default_rng(0))
    shapes = {k: v.shape for k, v in model.named_params().items()}
    assert shapes == {"layers.0.W": (4, 1, 3, 3), "layers.0.b": (4,), "layers.3.W": (144, 10), "layers.3.b": (10,)}
    from cnntrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"layer 1 \(dense\) with input shape \(4, 6, 6\).*add 'flatten'"):
        build_model([specs[0], ("dense", {"units": 3})], (1, 8, 8), np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"layer 0 \(conv2d\).*does not fit the padded input 3x3"):
        build_model([("conv2d", {"filters": 1, "kernel_size": 5})], (1, 3, 3), np.random.default_rng(0))


def test_conv_gives_the_same_result_for_channels_last_and_contiguous_inputs():
    rng = np.random.default_rng(0)
    layer = LAYERS.create("conv2d", {"filters": 4, "kernel_size": 3, "stride": 2, "padding": "same"})
    layer.build((3, 7, 7), rng)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y1 = layer.forward(x, training=True)
    dx1 = layer.backward(np.ones_like(y1))
    y2 = layer.forward(channels_last, training=True)
    dx2 = layer.backward(np.ones_like(y2))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)


def test_sequential_skips_the_input_gradient_unless_asked():
    specs = [("conv2d", {"filters": 2, "kernel_size": 3}), ("relu", {}), ("flatten", {}), ("dense", {"units": 3})]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 5, 5))
    model = build_model(specs, (1, 5, 5), rng).astype(np.float64)
    dy = rng.standard_normal((2, 3))
    model.forward(x, training=True)
    assert model.backward(dy) is None
    grads = {k: v.copy() for k, v in model.named_grads().items()}
    model.forward(x, training=True)
    dx = model.backward(dy, input_grad=True)
    assert dx.shape == x.shape
    for key, value in model.named_grads().items():
        np.testing.assert_array_equal(value, grads[key])


def test_dropout_masks_are_counter_based_so_any_rows_can_be_drawn_alone():
    from cnntrain.layers.dropout import dropout_mask

    whole = dropout_mask(12345, 0, (40, 3, 7), 0.3)  # 21 values a row: not a multiple of the 16 per block
    assert whole.shape == (40, 3, 7) and whole.dtype == np.bool_
    for first, last in ((0, 13), (13, 14), (14, 40)):
        np.testing.assert_array_equal(dropout_mask(12345, first, (last - first, 3, 7), 0.3), whole[first:last])
    assert not np.array_equal(dropout_mask(12346, 0, (40, 3, 7), 0.3), whole)
    big = dropout_mask(7, 0, (200, 1000), 0.3)
    assert abs(big.mean() - 0.7) < 0.005, big.mean()
    assert dropout_mask(7, 0, (10, 10), 0.0).all()


def test_dropout_draws_one_seed_per_forward_from_the_run_generator():
    layer = LAYERS.create("dropout", {"rate": 0.5})
    layer.build((30,), np.random.default_rng(3))
    x = np.ones((4, 30), dtype=np.float32)
    first, second = layer.forward(x, training=True), layer.forward(x, training=True)
    assert not np.array_equal(first, second)
    again = LAYERS.create("dropout", {"rate": 0.5})
    again.build((30,), np.random.default_rng(3))
    np.testing.assert_array_equal(again.forward(x, training=True), first)


def arrays_in(value):
    """Every ndarray inside a layer's cache (tuples, lists, dicts, nested)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from arrays_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from arrays_in(item)


@pytest.mark.parametrize("name", LAYERS.names())
def test_new_output_and_new_grad_hold_their_promise(name):
    # Sequential lets a batchnorm write over an array these flags call new: the forward output
    # or the input gradient must share memory with nothing (input, cache, parameters, dy)
    for kwargs, shape, n in CASES.get(name, []):
        layer = LAYERS.create(name, kwargs)
        layer.build(shape, np.random.default_rng(0))
        x = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
        y = layer.forward(x, training=True)
        held = [x, *layer.params.values(), *arrays_in(layer._cache)]
        if layer.new_output:
            assert not any(np.shares_memory(y, a) for a in held), f"{name}{kwargs}: forward output is shared"
        dy = np.ones_like(y)
        dx = layer.backward(dy)
        if layer.new_grad:
            assert not any(np.shares_memory(dx, a) for a in held + [dy, y]), f"{name}{kwargs}: input gradient is shared"


def check_in_place(monkeypatch, cls, specs, want_calls):
    """Training forward and backward of specs with cls.overwrites off, then on: the same values to the bit
    (buffers too), the caller's x and dy untouched, and cls.forward told to overwrite where want_calls says."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((6, 5)).astype(np.float32)
    results = []
    for overwrites in (False, True):
        monkeypatch.setattr(cls, "overwrites", overwrites)
        model = build_model(specs, (2, 8, 8), np.random.default_rng(1))
        x_before, dy_before = x.copy(), dy.copy()
        calls = []  # overwrite as passed to each forward (or forward_pooled, BatchNorm's before a max pool)
        for method in ("forward", "forward_pooled"):
            if hasattr(cls, method):
                monkeypatch.setattr(cls, method, lambda self, *args, overwrite=False, original=getattr(cls, method):
                                    calls.append(overwrite) or original(self, *args, overwrite=overwrite))
        out = model.forward(x, training=True)
        dx = model.backward(dy, input_grad=True)
        monkeypatch.undo()
        np.testing.assert_array_equal(x, x_before)  # the first layer's input is the caller's
        np.testing.assert_array_equal(dy, dy_before)  # the last layer's dy is the caller's
        assert calls == (want_calls if overwrites else [False] * len(want_calls))
        results.append((out, dx, model.named_grads(), model.named_buffers()))
    (out0, dx0, g0, b0), (out1, dx1, g1, b1) = results
    np.testing.assert_array_equal(out1, out0)
    np.testing.assert_array_equal(dx1, dx0)
    for key in g0:
        np.testing.assert_array_equal(g1[key], g0[key], err_msg=key)
    for key in b0:
        np.testing.assert_array_equal(b1[key], b0[key], err_msg=key)


def test_batchnorm_overwriting_new_arrays_changes_no_value_and_nothing_the_caller_holds(monkeypatch):
    specs = [("batchnorm", {}), ("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False}),
             ("batchnorm", {}), ("relu", {}), ("maxpool2d", {"size": 2}), ("conv2d", {"filters": 6, "kernel_size": 3}),
             ("batchnorm", {}), ("relu", {}), ("flatten", {}), ("dense", {"units": 8}), ("batchnorm", {}),
             ("tanh", {}), ("dense", {"units": 5}), ("batchnorm", {})]
    # only the batchnorms after a conv or dense layer overwrite (the first and the last get arrays
    # that are not theirs to write)
    check_in_place(monkeypatch, BatchNorm, specs, [False, True, True, True, True])


def test_relu_in_place_on_new_arrays_changes_no_value_and_nothing_the_caller_holds(monkeypatch):
    from cnntrain.layers.activations import ReLU

    conv = ("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same"})
    specs = [("relu", {}), conv, ("relu", {}), conv, ("batchnorm", {}), ("relu", {}), conv, ("relu", {}),
             ("maxpool2d", {"size": 2}), ("relu", {}), ("flatten", {}), ("dense", {"units": 5}), ("relu", {})]
    # in place after a conv, the batchnorm and the dense layer; not on the caller's input, nor where
    # Sequential runs a ReLU on a max pool's output (which the pool keeps), nor on another ReLU's
    check_in_place(monkeypatch, ReLU, specs, [False, True, True, False, False, True])
