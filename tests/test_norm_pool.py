"""Average and global pooling, spatial pyramid pooling and batch normalisation: hand-worked behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from cnntrain.layers.pool import adaptive_bins
from cnntrain.build import build_model
from cnntrain.model import Sequential
from cnntrain.registry import LAYERS
from gradcheck import check_layer


def make(name, kwargs, in_shape, rng=None):
    layer = LAYERS.create(name, kwargs)
    out_shape = layer.build(in_shape, rng if rng is not None else np.random.default_rng(0))
    return layer, out_shape


def test_avgpool_same_padding_does_not_count_the_padding():
    # 3x3 input, 2x2 windows, 'same': out 2x2, pads (0, 1) on each axis. Windows: [[1,2],[4,5]] -> 3,
    # [[3],[6]] -> 4.5, [[7,8]] -> 7.5, [[9]] -> 9 (divided by 4, 2, 2, 1 elements, never by 4 for all).
    layer, out_shape = make("avgpool2d", {"size": 2, "padding": "same"}, (1, 3, 3))
    assert out_shape == (1, 2, 2)
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    assert y.tolist() == [[[[3.0, 4.5], [7.5, 9.0]]]]
    # backward: each output spreads dy / count over its inside elements
    dx = layer.backward(np.array([[[[4.0, 2.0], [2.0, 1.0]]]], dtype=np.float32))
    assert dx.tolist() == [[[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]]


@pytest.mark.parametrize("name", ["avgpool2d", "maxpool2d"])
def test_pooling_rejects_a_window_made_only_of_padding(name):
    # padding 2 around 4x4 with 2x2 windows: the corner windows see only padding (max -inf, mean 0/0)
    with pytest.raises(ValueError, match=r"^padding: 2 leaves a 2x2 window with no input element"):
        make(name, {"size": 2, "padding": 2}, (1, 4, 4))
    make(name, {"size": 3, "stride": 2, "padding": 1}, (1, 4, 4))  # partly padded windows are fine


def test_avgpool_default_stride_drops_trailing_rows_and_columns():
    # 5x5 with 2x2 windows: out 2x2; row 4 and column 4 are outside every window, so their gradient is 0.
    rng = np.random.default_rng(0)
    layer, out_shape = make("avgpool2d", {"size": 2}, (2, 5, 5))
    assert out_shape == (2, 2, 2)
    x = rng.standard_normal((3, 2, 5, 5))
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, x[:, :, :4, :4].reshape(3, 2, 2, 2, 2, 2).mean(axis=(3, 5)), rtol=1e-12)
    dx = layer.backward(rng.standard_normal(y.shape))
    assert not dx[:, :, 4, :].any() and not dx[:, :, :, 4].any()


def test_global_avgpool_is_the_mean_over_height_and_width():
    rng = np.random.default_rng(0)
    layer, out_shape = make("global_avgpool", {}, (4, 5, 3))
    assert out_shape == (4,)
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)), rtol=1e-6)
    dy = rng.standard_normal((2, 4)).astype(np.float32)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, np.broadcast_to(dy[:, :, None, None] / 15, x.shape), rtol=1e-6)


def test_adaptive_bins_follow_pytorch_boundaries():
    # bin i covers floor(i*H/n) .. ceil((i+1)*H/n) - 1; for H=5, n=2 both bins hold row 2
    assert adaptive_bins(5, 2) == [(0, 3), (2, 5)]
    assert adaptive_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]
    assert adaptive_bins(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert adaptive_bins(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_spp_output_length_does_not_depend_on_the_input_size(mode):
    rng = np.random.default_rng(0)
    a, shape_a = make("spp", {"mode": mode}, (3, 8, 8))
    b, shape_b = make("spp", {"mode": mode}, (3, 13, 11))
    assert shape_a == shape_b == (3 * (1 + 4 + 16),)
    for H, W in ((8, 8), (13, 11), (4, 4)):  # the layer built for 8x8 takes any H, W >= 4
        x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
        y = a.forward(x, training=True)
        assert y.shape == (2, 63) and y.dtype == np.float32, f"{H}x{W}: {y.shape} {y.dtype}"
        dx = a.backward(rng.standard_normal(y.shape).astype(np.float32))
        assert dx.shape == x.shape and dx.dtype == np.float32


def test_spp_gradients_at_a_size_other_than_the_built_one():
    rng = np.random.default_rng(0)
    for mode in ("max", "avg"):
        layer, _ = make("spp", {"levels": [1, 2, 3], "mode": mode}, (2, 7, 5))
        check_layer(layer, rng.standard_normal((2, 2, 11, 6)), rng)


def test_spp_level_one_is_global_pooling_and_comes_first():
    rng = np.random.default_rng(0)
    layer, _ = make("spp", {"levels": [1, 2]}, (3, 6, 6))
    x = rng.standard_normal((2, 3, 6, 6))
    y = layer.forward(x, training=False)
    np.testing.assert_array_equal(y[:, :3], x.max(axis=(2, 3)))
    # level 2, channel-major: channel 1's four bins follow channel 0's; bin (1, 0) = rows 3..5, columns 0..2
    np.testing.assert_array_equal(y[:, 3 + 4 + 2], x[:, 1, 3:, :3].max(axis=(1, 2)))


def test_spp_max_gradient_goes_to_the_first_maximum_of_each_bin():
    # all-equal 3x3 input, levels [1, 2]: bins of level 2 are rows/cols (0..1) and (1..2), so the first
    # maxima are (0,0), (0,1), (1,0), (1,1); the level-1 bin's first maximum is (0,0).
    layer, _ = make("spp", {"levels": [1, 2]}, (1, 3, 3))
    layer.forward(np.zeros((1, 1, 3, 3)), training=True)
    dx = layer.backward(np.array([[10.0, 1.0, 2.0, 3.0, 4.0]]))
    assert dx.tolist() == [[[[11.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]]]


def test_spp_errors():
    with pytest.raises(ValueError, match=r"^levels: input 3x3 is smaller than the finest level 4$"):
        make("spp", {}, (2, 3, 3))
    layer, _ = make("spp", {}, (2, 8, 8))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 2, H, W\), got \(1, 3, 8, 8\)"):
        layer.forward(np.zeros((1, 3, 8, 8)), training=False)
    with pytest.raises(ValueError, match=r"^levels: input 8x3 is smaller than the finest level 4$"):
        layer.forward(np.zeros((1, 2, 8, 3)), training=False)
    with pytest.raises(ValueError, match=r"^levels: must be a non-empty list"):
        type(layer)(levels=[])
    with pytest.raises(ValueError, match=r"^mode: must be 'max' or 'avg', got 'mean'"):
        type(layer)(mode="mean")


@pytest.mark.parametrize("in_shape,n", [((3, 4, 5), 2), ((3, 4, 5), 1), ((6,), 8)])
def test_batchnorm_training_output_has_zero_mean_and_unit_variance(in_shape, n):
    rng = np.random.default_rng(0)
    layer, _ = make("batchnorm", {}, in_shape)
    x = (3 + 2 * rng.standard_normal((n, *in_shape))).astype(np.float32)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    axes = (0,) if len(in_shape) == 1 else (0, 2, 3)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)
    # biased variance of y is var / (var + eps), a hair under 1
    np.testing.assert_allclose(y.var(axis=axes), 1, atol=1e-3)


def test_batchnorm_running_statistics_after_one_step():
    # one feature, x = [1, 2, 3, 6]: mean 3, unbiased var (4 + 1 + 0 + 9) / 3 = 14/3.
    # running_mean = 0.9 * 0 + 0.1 * 3 = 0.3; running_var = 0.9 * 1 + 0.1 * 14/3 = 1.3666...
    layer, _ = make("batchnorm", {}, (1,))
    layer.forward(np.array([[1.0], [2.0], [3.0], [6.0]], dtype=np.float32), training=True)
    assert layer.buffers["running_mean"].dtype == layer.buffers["running_var"].dtype == np.float32
    np.testing.assert_allclose(layer.buffers["running_mean"], [0.3], rtol=1e-6)
    np.testing.assert_allclose(layer.buffers["running_var"], [0.9 + 0.1 * 14 / 3], rtol=1e-6)
    # momentum 0.5 on a conv input: statistics over N, H, W per channel
    rng = np.random.default_rng(0)
    conv_bn, _ = make("batchnorm", {"momentum": 0.5}, (2, 3, 3))
    x = rng.standard_normal((4, 2, 3, 3))
    conv_bn.forward(x, training=True)
    np.testing.assert_allclose(conv_bn.buffers["running_mean"], 0.5 * x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(conv_bn.buffers["running_var"], 0.5 + 0.5 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-6)
    # evaluation leaves the running statistics alone
    before = {k: v.copy() for k, v in conv_bn.buffers.items()}
    conv_bn.forward(x, training=False)
    for key in before:
        np.testing.assert_array_equal(conv_bn.buffers[key], before[key])


def test_batchnorm_evaluation_uses_the_running_statistics():
    rng = np.random.default_rng(0)
    layer, _ = make("batchnorm", {"eps": 1e-3}, (2, 3, 3))
    layer.params["gamma"] = np.array([2.0, 0.5], dtype=np.float32)
    layer.params["beta"] = np.array([1.0, -1.0], dtype=np.float32)
    layer.buffers["running_mean"] = np.array([0.5, -2.0], dtype=np.float32)
    layer.buffers["running_var"] = np.array([4.0, 0.25], dtype=np.float32)
    x = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y = layer.forward(x, training=False)
    assert y.dtype == np.float32
    # y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta, per channel
    expected = np.stack([2.0 * (x[:, 0] - 0.5) / np.sqrt(4.001) + 1.0,
                         0.5 * (x[:, 1] + 2.0) / np.sqrt(0.251) - 1.0], axis=1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    train = layer.forward(x, training=True)
    assert np.abs(train - y).max() > 0.1
    # a single sample is fine at evaluation, even for a dense input
    dense, _ = make("batchnorm", {}, (4,))
    assert dense.forward(np.ones((1, 4), dtype=np.float32), training=False).shape == (1, 4)
    with pytest.raises(RuntimeError, match="without a forward pass in training mode"):
        dense.backward(np.ones((1, 4), dtype=np.float32))


def test_batchnorm_needs_more_than_one_value_per_feature_in_training():
    dense, _ = make("batchnorm", {}, (4,))
    with pytest.raises(ValueError, match=r"^batchnorm: training needs more than one value per feature, "
                                         r"got input shape \(1, 4\)$"):
        dense.forward(np.ones((1, 4), dtype=np.float32), training=True)
    conv, _ = make("batchnorm", {}, (2, 3, 3))  # N = 1 is fine: 9 values per channel
    assert np.all(np.isfinite(conv.forward(np.arange(18.0).reshape(1, 2, 3, 3), training=True)))


def test_batchnorm_backward_matches_the_graph_of_small_ops():
    # dx from the closed form equals the textbook chain rule through mean, variance and normalisation
    rng = np.random.default_rng(0)
    layer, _ = make("batchnorm", {}, (3,))
    gamma = rng.standard_normal(3)
    layer.params["gamma"], layer.params["beta"] = gamma, rng.standard_normal(3)
    x, dy = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    layer.forward(x, training=True)
    dx = layer.backward(dy)
    m, mu, var = 5, x.mean(0), x.var(0)
    xhat = (x - mu) / np.sqrt(var + 1e-5)
    dxhat = dy * gamma
    dvar = np.sum(dxhat * (x - mu), 0) * -0.5 * (var + 1e-5) ** -1.5
    dmu = np.sum(-dxhat / np.sqrt(var + 1e-5), 0) + dvar * np.mean(-2 * (x - mu), 0)
    expected = dxhat / np.sqrt(var + 1e-5) + dvar * 2 * (x - mu) / m + dmu / m
    np.testing.assert_allclose(dx, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["gamma"], np.sum(dy * xhat, 0), rtol=1e-10)
    np.testing.assert_allclose(layer.grads["beta"], dy.sum(0), rtol=1e-10)


def test_batchnorm_buffers_follow_the_model_dtype_and_options_are_checked():
    model = build_model([("conv2d", {"filters": 2}), ("batchnorm", {}), ("flatten", {}),
                         ("dense", {"units": 3}), ("batchnorm", {"momentum": 0.2})], (1, 5, 5),
                        np.random.default_rng(0))
    assert sorted(model.named_buffers()) == ["layers.1.running_mean", "layers.1.running_var",
                                             "layers.4.running_mean", "layers.4.running_var"]
    assert {k: v.shape for k, v in model.named_params().items() if "gamma" in k} == {
        "layers.1.gamma": (2,), "layers.4.gamma": (3,)}
    x = np.random.default_rng(0).standard_normal((4, 1, 5, 5))
    model.forward(x.astype(np.float32), training=True)
    assert all(v.dtype == np.float32 for v in model.state_dict().values())
    model.astype(np.float64)
    model.forward(x, training=True)
    assert all(v.dtype == np.float64 for v in model.state_dict().values())
    assert [row["macs"] for row in model.summary_rows()][1] == 2 * 2 * 3 * 3
    for bad, match in (({"momentum": 1.5}, r"^momentum: must be a number in \[0, 1\], got 1.5"),
                       ({"eps": 0}, r"^eps: must be a number > 0, got 0")):
        with pytest.raises(ValueError, match=match):
            LAYERS.get("batchnorm")(**bad)
    with pytest.raises(ValueError, match=r"expects input \(channels, height, width\) or \(features,\)"):
        Sequential([LAYERS.create("batchnorm", {})]).build((3, 4), np.random.default_rng(0))


@pytest.mark.parametrize("specs,in_shape", [
    ([("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {})], (3, 7, 6)),
    # Winograd convs (32 channels): F(4x4, 3x3) at 8x8, F(2x2, 3x3) at 6x6
    ([("conv2d", {"filters": 16, "kernel_size": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {})], (32, 8, 8)),
    ([("conv2d", {"filters": 16, "kernel_size": 3, "padding": "same", "use_bias": False}), ("batchnorm", {})],
     (32, 6, 6)),
    ([("conv2d", {"filters": 5, "kernel_size": 3, "stride": 2, "use_bias": False}), ("batchnorm", {}),
      ("tanh", {}), ("relu", {})], (2, 9, 9)),
    ([("flatten", {}), ("dense", {"units": 5}), ("batchnorm", {}), ("relu", {}),
      ("dense", {"units": 3, "use_bias": False}), ("batchnorm", {})], (2, 3, 3)),
])
def test_evaluation_folds_batchnorm_into_the_layer_before_it(specs, in_shape, monkeypatch):
    """conv/dense then batchnorm, in evaluation: the model folds the affine map into the weights and gets
    what the layers give one after the other, with the activation after it applied in place (an in-place
    write into the caller's input would change x, checked below); training is untouched."""
    rng = np.random.default_rng(0)
    model = build_model(specs, in_shape, rng).astype(np.float64)
    for layer in model.layers:
        for store in (layer.params, layer.buffers):
            for key, value in store.items():
                store[key] = rng.uniform(0.5, 2.0, value.shape) if key == "running_var" else rng.standard_normal(value.shape)
    x = rng.standard_normal((4, *in_shape))
    x_before = x.copy()
    expected = x
    for layer in model.layers:
        expected = layer.forward(expected, training=False)
    from cnntrain.layers.norm import BatchNorm

    calls, original = [], BatchNorm.forward
    monkeypatch.setattr(BatchNorm, "forward", lambda self, x, training, **kw: calls.append(training) or original(self, x, training, **kw))
    np.testing.assert_allclose(model.forward(x, training=False), expected, rtol=1e-12, atol=1e-12)
    assert calls == [], "evaluation folded every batchnorm instead of running it"
    np.testing.assert_array_equal(x, x_before)
    y32 = model.astype(np.float32).forward(x.astype(np.float32), training=False)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, expected, rtol=1e-4, atol=1e-4)
    model.forward(x.astype(np.float32), training=True)
    assert calls and all(calls), "training runs every batchnorm with batch statistics"


def test_evaluation_applies_an_activation_in_place_only_on_a_new_array():
    rng = np.random.default_rng(1)
    specs = [("relu", {}), ("conv2d", {"filters": 3, "kernel_size": 3}), ("relu", {}), ("dropout", {"rate": 0.5}),
             ("relu", {}), ("flatten", {}), ("dense", {"units": 4}), ("sigmoid", {})]
    model = build_model(specs, (2, 6, 6), rng).astype(np.float64)
    x = rng.standard_normal((3, 2, 6, 6))
    x_before = x.copy()
    expected = x
    for layer in model.layers:
        expected = layer.forward(expected, training=False)
    np.testing.assert_array_equal(model.forward(x, training=False), expected)
    np.testing.assert_array_equal(x, x_before)  # the first relu gets the caller's array: never in place


def run_layer_by_layer(model, x, dy):
    """Training forward and backward of model's layers one after another, in their order: (output, grads, buffers)."""
    h = x
    for layer in model.layers:
        h = layer.forward(h, True)
    d = dy
    for layer in reversed(model.layers[1:]):
        d = layer.backward(d)
    model.layers[0].backward_params(d)
    return h, model.named_grads(), model.named_buffers()


@pytest.mark.parametrize("pool", [{"size": 2}, {"size": 3, "stride": 2, "padding": 1}], ids=["tiling", "overlapping"])
def test_relu_run_after_its_max_pool_changes_no_bit_forward_or_backward(pool):
    """Sequential runs conv-relu-maxpool as conv-maxpool-relu in training; ties, zeros and negatives included."""
    from cnntrain.build import build_model

    specs = [("conv2d", {"filters": 3, "kernel_size": 3, "padding": "same"}), ("relu", {}), ("maxpool2d", pool),
             ("flatten", {}), ("dense", {"units": 4})]
    model = build_model(specs, (2, 8, 8), np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal((5, 2, 8, 8)), 1).astype(np.float32)  # coarse values: many exact ties
    x[0] = 0.0  # whole windows of zeros after the ReLU
    dy = rng.standard_normal((5, 4)).astype(np.float32)
    out = model.forward(x, training=True)
    assert model._swapped == {1}
    model.backward(dy)
    got = {k: g.copy() for k, g in model.named_grads().items()}
    h, grads, _ = run_layer_by_layer(model, x, dy)  # the same layers, one after another in their order
    np.testing.assert_array_equal(out, h)
    for key, g in grads.items():
        np.testing.assert_array_equal(got[key], g, err_msg=key)


BN_POOL_SPECS = [("conv2d", {"filters": 3, "kernel_size": 3, "padding": "same", "use_bias": False}), ("batchnorm", {}),
                 ("relu", {}), ("maxpool2d", {"size": 2}), ("flatten", {}), ("dense", {"units": 4})]


@pytest.mark.parametrize("pool", [{"size": 2}, {"size": 3, "stride": 2, "padding": 1}], ids=["tiling", "overlapping"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
def test_batchnorm_scale_and_shift_after_the_max_pool_change_no_value_forward_or_backward(pool, relu):
    """Sequential runs conv-batchnorm-[relu]-maxpool as statistics, pool, scale and shift, relu (float64)."""
    specs = [spec for spec in BN_POOL_SPECS if relu or spec[0] != "relu"]
    specs[2 + relu] = ("maxpool2d", pool)
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((5, 2, 8, 8)), rng.standard_normal((5, 4))
    fused, plain = (build_model(specs, (2, 8, 8), np.random.default_rng(0)).astype(np.float64) for _ in range(2))
    for model in fused, plain:  # a scale per channel of 0.5 to 2 and a shift that moves the ReLU's threshold
        model.layers[1].params["gamma"][:] = [0.5, 1.0, 2.0]
        model.layers[1].params["beta"][:] = [0.3, -0.2, 0.0]
    out = fused.forward(x, training=True)
    assert fused._pooled == {2 + relu: 1}
    fused.backward(dy)
    want_out, want_grads, want_buffers = run_layer_by_layer(plain, x, dy)
    np.testing.assert_allclose(out, want_out, rtol=1e-13, atol=1e-13)
    for key, g in fused.named_grads().items():
        np.testing.assert_allclose(g, want_grads[key], rtol=1e-10, atol=1e-12, err_msg=key)
    for key, b in fused.named_buffers().items():
        np.testing.assert_array_equal(b, want_buffers[key], err_msg=key)


@pytest.mark.parametrize("filters,use_bias,path", [(8, False, "weight_grad"), (8, True, "weight_grad"),
                                                    (3, False, "dense")], ids=["im2col", "im2col-bias", "banded"])
def test_a_first_conv_takes_its_pooled_batchnorms_gradient_in_parts(monkeypatch, filters, use_bias, path):
    """conv-batchnorm-relu-maxpool first: the conv's weight gradient comes from the pool's parts and the
    batchnorm's affine term (im2col), or from dx built from them (other kernels); values as layer by layer."""
    from cnntrain.layers import maxpool_kernels

    specs = [("conv2d", {"filters": filters, "kernel_size": 3, "padding": "same", "use_bias": use_bias})]
    specs += BN_POOL_SPECS[1:]
    rng = np.random.default_rng(1)
    x, dy = np.round(rng.standard_normal((5, 1, 8, 8)), 1), rng.standard_normal((5, 4))  # coarse: ties
    x[0] = 0.0  # whole windows of equal values
    fused, plain = (build_model(specs, (1, 8, 8), np.random.default_rng(0)).astype(np.float64) for _ in range(2))
    used = []
    for method in ("weight_grad", "dense"):
        original = getattr(maxpool_kernels.PooledGrad, method)
        monkeypatch.setattr(maxpool_kernels.PooledGrad, method,
                            lambda self, *a, _m=method, _f=original: used.append(_m) or _f(self, *a))
    fused.forward(x, training=True)
    fused.backward(dy)
    assert used == [path]
    _, want_grads, _ = run_layer_by_layer(plain, x, dy)
    for key, g in fused.named_grads().items():
        np.testing.assert_allclose(g, want_grads[key], rtol=1e-10, atol=1e-12, err_msg=key)
    used.clear()
    fused.forward(x, training=True)
    assert fused.backward(dy, input_grad=True).shape == x.shape and used == []  # dx wanted: no parts


@pytest.mark.parametrize("gamma", [-0.5, 0.0])
def test_a_batchnorm_with_a_scale_not_above_zero_runs_before_its_max_pool(gamma):
    """A decreasing or flat channel would pool its minimum or a constant: the layers then run in order."""
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((5, 2, 8, 8)), rng.standard_normal((5, 4))
    fused, plain = (build_model(BN_POOL_SPECS, (2, 8, 8), np.random.default_rng(0)).astype(np.float64)
                    for _ in range(2))
    for model in fused, plain:
        model.layers[1].params["gamma"][1] = gamma
    out = fused.forward(x, training=True)
    assert fused._pooled == {}
    fused.backward(dy)
    want_out, want_grads, _ = run_layer_by_layer(plain, x, dy)
    np.testing.assert_array_equal(out, want_out)
    for key, g in fused.named_grads().items():
        np.testing.assert_array_equal(g, want_grads[key], err_msg=key)


def test_a_large_evaluation_batch_is_split_over_the_blas_threads_with_the_same_rows(monkeypatch):
    import threading

    import cnntrain.model as model_module
    from cnntrain.threads import blas_threads, set_blas_threads

    specs = [("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {}),
             ("maxpool2d", {"size": 2}), ("dropout", {"rate": 0.3}), ("flatten", {}), ("dense", {"units": 5})]
    model = build_model(specs, (2, 8, 8), np.random.default_rng(0))
    model.forward(np.random.default_rng(1).standard_normal((16, 2, 8, 8)).astype(np.float32), training=True)
    x = np.random.default_rng(2).standard_normal((300, 2, 8, 8)).astype(np.float32)
    monkeypatch.setattr(model_module, "EVAL_MIN_ROWS", 10**9)
    whole = model.forward(x, training=False)
    monkeypatch.setattr(model_module, "EVAL_MIN_ROWS", 100)
    seen, original = [], model.layers[3].forward  # the max pool (the conv's forward is folded with batchnorm)
    monkeypatch.setattr(model.layers[3], "forward", lambda *a, **k: seen.append(
        (threading.current_thread().name, len(a[0]), blas_threads())) or original(*a, **k))
    own = blas_threads()
    try:
        set_blas_threads(3)
        split = model.forward(x, training=False)
        assert blas_threads() == 3, "the thread count comes back"
    finally:
        set_blas_threads(own)
    np.testing.assert_allclose(split, whole, rtol=1e-6, atol=1e-6)
    assert sorted(rows for _, rows, _ in seen) == [100, 100, 100]  # min(3 threads, 300 // 100) parts
    assert all(name.startswith("cnntrain-eval") and threads == 1 for name, _, threads in seen)
    seen.clear()
    model.forward(x, training=True)  # training is never split: backward needs one cache
    assert [rows for _, rows, _ in seen] == [300]
