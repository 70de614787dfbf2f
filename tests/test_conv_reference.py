"""The vectorised conv and pool kernels agree with loops written from the definition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import reference
from cnntrain.layers import geometry as k
from cnntrain.registry import LAYERS

CONV_CASES = [
    # (C, H, W, F, kernel, stride, padding, dilation)
    (3, 5, 5, 2, 3, 2, 1, 1),
    (1, 7, 6, 3, (3, 2), (2, 1), "same", 1),
    (2, 8, 8, 2, 2, 2, "same", 1),
    (2, 9, 9, 4, 3, 1, "same", 2),
    (3, 6, 7, 2, 3, 3, "valid", 1),
    (2, 5, 5, 1, 5, 1, ((1, 2), (0, 1)), 1),
    # more channels than FEW_CHANNELS: the strided-copy im2col path
    (6, 7, 6, 3, 3, 2, "same", 1),
    (5, 9, 9, 2, (2, 3), 1, 1, 2),
]


def test_both_im2col_paths_are_covered():
    from cnntrain.layers.channels_last import FEW_CHANNELS

    channels = {case[0] for case in CONV_CASES}
    assert min(channels) <= FEW_CHANNELS < max(channels)


@pytest.mark.parametrize("C,H,W,F,kernel,stride,padding,dilation", CONV_CASES)
def test_conv_forward_matches_loops(C, H, W, F, kernel, stride, padding, dilation):
    rng = np.random.default_rng(0)
    layer = LAYERS.create("conv2d", {"filters": F, "kernel_size": kernel, "stride": stride,
                                     "padding": padding, "dilation": dilation})
    out_shape = layer.build((C, H, W), rng)
    layer.params["W"] = rng.standard_normal(layer.params["W"].shape)
    layer.params["b"] = rng.standard_normal(F)
    x = rng.standard_normal((2, C, H, W))
    expected = reference.conv2d(x, layer.params["W"], layer.params["b"], layer.stride, layer.pads, layer.dilation)
    y = layer.forward(x, training=False)
    assert y.shape == (2, *out_shape) == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size,stride,padding,H", [(2, None, "valid", 6), (2, None, "valid", 7), (3, 2, "valid", 7),
                                                    (3, 1, 1, 5), (2, None, "same", 5)])
def test_maxpool_forward_matches_loops(size, stride, padding, H):
    rng = np.random.default_rng(0)
    layer = LAYERS.create("maxpool2d", {"size": size, "stride": stride, "padding": padding})
    layer.build((2, H, H), rng)
    x = rng.standard_normal((3, 2, H, H))
    np.testing.assert_array_equal(layer.forward(x, training=False),
                                  reference.maxpool2d(x, layer.size, layer.stride, layer.pads))


def test_output_size_formula_over_a_grid():
    """out = floor((n + p_lo + p_hi - d*(k-1) - 1) / s) + 1, checked against counting window positions."""
    for n, kk, s, p, d in itertools.product(range(1, 12), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2)):
        span = d * (kk - 1) + 1
        count = len(range(0, n + 2 * p - span + 1, s))
        assert max(k.out_size(n, kk, s, (p, p), d), 0) == count, (n, kk, s, p, d)


def test_same_padding_gives_ceil_of_size_over_stride():
    for n, kk, s, d in itertools.product(range(1, 12), (1, 2, 3, 4, 5), (1, 2, 3), (1, 2)):
        pads = k.same_pad(n, kk, s, d)
        assert k.out_size(n, kk, s, pads, d) == -(-n // s), (n, kk, s, d, pads)


@pytest.mark.parametrize("size,stride,padding,H,W", [
    (2, None, "valid", 6, 6), (2, None, "valid", 7, 5), (3, 2, "valid", 7, 7), (3, 1, 1, 5, 5),
    (2, None, "same", 5, 5), (3, 2, "same", 6, 7), ((3, 2), (1, 2), ((1, 0), (0, 1)), 5, 6),
])
def test_avgpool_forward_matches_loops(size, stride, padding, H, W):
    rng = np.random.default_rng(0)
    layer = LAYERS.create("avgpool2d", {"size": size, "stride": stride, "padding": padding})
    out_shape = layer.build((2, H, W), rng)
    x = rng.standard_normal((3, 2, H, W))
    expected = reference.avgpool2d(x, layer.size, layer.stride, layer.pads)
    y = layer.forward(x, training=False)
    assert y.shape == (3, *out_shape) == expected.shape, f"{y.shape} vs {expected.shape}"
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("H,W", [(7, 5), (9, 12)])
def test_spp_forward_matches_loops(mode, H, W):
    rng = np.random.default_rng(0)
    layer = LAYERS.create("spp", {"levels": [1, 2, 3], "mode": mode})
    assert layer.build((3, 7, 5), rng) == (3 * (1 + 4 + 9),)
    x = rng.standard_normal((2, 3, H, W))  # (9, 12): a size other than the built one
    expected = reference.spp(x, [1, 2, 3], mode)
    y = layer.forward(x, training=False)
    assert y.shape == expected.shape == (2, 42), f"{y.shape} vs {expected.shape}"
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_conv_in_cache_sized_blocks_equals_one_block(monkeypatch):
    """Forward and gradients are the same whether im2col runs per image or for the whole batch."""
    from cnntrain.layers import channels_last as _im2col
    from gradcheck import check_layer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 7, 7))
    results = []
    for chunk_bytes in (_im2col.CHUNK_BYTES, 1):  # 1 byte: one image per block
        monkeypatch.setattr(_im2col, "CHUNK_BYTES", chunk_bytes)
        layer = LAYERS.create("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same"})
        layer.build((6, 7, 7), np.random.default_rng(1))
        layer.params = {key: value.astype(np.float64) for key, value in layer.params.items()}
        y = layer.forward(x, training=True)
        dx = layer.backward(np.ones_like(y))
        results.append((y, dx, layer.grads["W"]))
        check_layer(layer, x, rng)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
