"""The fast layers agree with the textbook loops of cnntrain.layers.reference, in float64.

The loops are checked on their own against central finite differences, so the oracle does not
rest on the code it judges. Every layer goes through the registry, forward and backward, with a
random dy.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnntrain.layers import channels_last, geometry, maxpool_kernels, winograd
from cnntrain.layers import reference as ref
from cnntrain.registry import LAYERS
from gradcheck import numeric_grad, rel_error

TOL = 1e-10  # float64: the fast kernels only sum in another order


def assert_close(actual, expected, what, tol=TOL):
    """Max absolute error within tol, relative to the expected magnitude when it exceeds 1."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    err = float(np.abs(actual - expected).max(initial=0))
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    assert err <= tol * scale, f"{what} {actual.shape}: max error {err:.3g} (scale {scale:.3g})"


def make(name, kwargs, in_shape, rng):
    """A built layer with random float64 parameters (random, so b and beta are not zero)."""
    layer = LAYERS.create(name, kwargs)
    out_shape = layer.build(in_shape, rng)
    layer.params = {key: rng.standard_normal(value.shape) for key, value in layer.params.items()}
    return layer, out_shape


def forward_backward(layer, x, rng):
    """y, the random dy and dx of one training step."""
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    return y, dy, layer.backward(dy)


def sample(rng, shape, ties):
    """Random normal values, or small integers so that max-pool windows hold ties."""
    return rng.integers(0, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)


def finite_difference_grads(f, arrays, dy):
    """d sum(f() * dy) / d a for each array a that f reads, by central differences in place."""
    return [numeric_grad(lambda: float(np.sum(f() * dy)), a) for a in arrays]


# Window geometry.
def test_output_size_formula_over_a_grid():
    """out = floor((n + p_lo + p_hi - d*(k-1) - 1) / s) + 1, checked against counting window positions."""
    pads = ((0, 0), (1, 1), (2, 2), (1, 2))
    for n, kk, s, p, d in itertools.product(range(1, 12), (1, 2, 3, 5), (1, 2, 3), pads, (1, 2)):
        span = d * (kk - 1) + 1
        count = len(range(0, n + sum(p) - span + 1, s))
        assert max(geometry.out_size(n, kk, s, p, d), 0) == count, (n, kk, s, p, d)
        assert max(ref.output_size(n, kk, s, p, d), 0) == count, (n, kk, s, p, d)


def test_same_padding_gives_ceil_of_size_over_stride():
    for n, kk, s, d in itertools.product(range(1, 12), (1, 2, 3, 4, 5), (1, 2, 3), (1, 2)):
        pads = geometry.same_pad(n, kk, s, d)
        assert geometry.out_size(n, kk, s, pads, d) == -(-n // s), (n, kk, s, d, pads)


# The reference backward functions against central finite differences, on tiny shapes.
@pytest.mark.parametrize("stride,pads,dilation", [
    ((2, 1), ((1, 2), (0, 1)), (1, 2)),
    ((1, 1), ((0, 0), (0, 0)), (2, 2)),
])
def test_reference_conv_backward_matches_finite_differences(stride, pads, dilation):
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((2, 2, 6, 5)), rng.standard_normal((2, 2, 3, 2)), rng.standard_normal(2)

    def f():
        return ref.conv2d_forward(x, W, b, stride, pads, dilation)

    dy = rng.standard_normal(f().shape)
    analytic = ref.conv2d_backward(dy, x, W, stride, pads, dilation)
    numeric = finite_difference_grads(f, (x, W, b), dy)
    for name, a, n in zip(("dx", "dW", "db"), analytic, numeric):
        assert rel_error(a, n) < 1e-8, f"{name} {a.shape}: relative error {rel_error(a, n):.3g}"


POOL_GRAD_CASES = [((2, 2), (2, 2), ((0, 0), (0, 0))), ((3, 2), (2, 1), ((1, 2), (0, 1)))]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("size,stride,pads", POOL_GRAD_CASES)
def test_reference_pool_backward_matches_finite_differences(kind, size, stride, pads):
    rng = np.random.default_rng(0)
    forward, backward = {"max": (ref.maxpool2d_forward, ref.maxpool2d_backward),
                         "avg": (ref.avgpool2d_forward, ref.avgpool2d_backward)}[kind]
    x = rng.standard_normal((2, 2, 5, 4))  # no ties: the maximum is differentiable

    def f():
        return forward(x, size, stride, pads)

    dy = rng.standard_normal(f().shape)
    (numeric,) = finite_difference_grads(f, (x,), dy)
    dx = backward(dy, x, size, stride, pads)
    assert rel_error(dx, numeric) < 1e-8, f"{kind} pool dx {dx.shape}: relative error {rel_error(dx, numeric):.3g}"


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 3, 2)])
def test_reference_batchnorm_backward_matches_finite_differences(shape):
    rng = np.random.default_rng(0)
    x = 2 + 3 * rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])

    def f():
        return ref.batchnorm_forward(x, gamma, beta, 1e-5)[0]

    y, cache = ref.batchnorm_forward(x, gamma, beta, 1e-5)
    dy = rng.standard_normal(y.shape)
    analytic = ref.batchnorm_backward(dy, cache)
    numeric = finite_difference_grads(f, (x, gamma, beta), dy)
    for name, a, n in zip(("dx", "dgamma", "dbeta"), analytic, numeric):
        assert rel_error(a, n) < 1e-7, f"{name} {a.shape}: relative error {rel_error(a, n):.3g}"


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_reference_spp_backward_matches_finite_differences(mode):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 4))  # 5 rows in 2 or 3 bins: neighbouring bins share a row

    def f():
        return ref.spp_forward(x, [1, 2, 3], mode)

    dy = rng.standard_normal(f().shape)
    (numeric,) = finite_difference_grads(f, (x,), dy)
    dx = ref.spp_backward(dy, x, [1, 2, 3], mode)
    assert rel_error(dx, numeric) < 1e-8, f"spp {mode} dx {dx.shape}: relative error {rel_error(dx, numeric):.3g}"


def test_reference_maxpool_sends_ties_to_the_first_maximum():
    # a constant input: every entry of a 2x2 window is a maximum; the top-left one is first in row-major order
    x = np.zeros((1, 1, 4, 4))
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dx = ref.maxpool2d_backward(dy, x, (2, 2), (2, 2), ((0, 0), (0, 0)))
    assert dx[0, 0].tolist() == [[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]]


# The fast layers against the reference.
CONV_CASES = [
    # (C, H, W, F, kernel_size, stride, padding, dilation)
    (3, 5, 5, 2, 3, 2, 1, 1),
    (1, 7, 6, 3, (3, 2), (2, 1), "same", 1),
    (2, 8, 8, 2, 2, 2, "same", 1),
    (2, 9, 9, 4, 3, 1, "same", 2),
    (3, 6, 7, 2, 3, 3, "valid", 1),
    (2, 5, 5, 1, 5, 1, ((1, 2), (0, 1)), 1),
    (3, 5, 6, 2, (2, 3), (3, 2), ((1, 2), (0, 1)), (2, 1)),
    (4, 5, 7, 3, 1, 1, "valid", 1),
    # more channels than FEW_CHANNELS: the strided-copy im2col path
    (6, 7, 6, 3, 3, 2, "same", 1),
    (5, 9, 9, 2, (2, 3), 1, 1, 2),
    (7, 5, 5, 3, 1, 2, "same", 1),
    (6, 7, 8, 2, 3, 3, ((1, 2), (0, 1)), 2),
    # stride 1 with padding: dx as the convolution of dy with the flipped kernel, also where the
    # padding outgrows the kernel (3 > 2) or is uneven, one-sided and dilated
    (3, 6, 5, 2, 3, 1, 3, 1),
    (6, 6, 7, 3, (3, 2), 1, ((0, 2), (3, 0)), (1, 2)),
]



def test_both_im2col_paths_and_both_input_gradients_are_covered():
    channels = {case[0] for case in CONV_CASES}
    assert min(channels) <= channels_last.FEW_CHANNELS < max(channels)
    stride_one = [case for case in CONV_CASES if case[5] == 1]
    assert any(case[6] not in ("valid", 0) for case in stride_one) and any(case[6] == "valid" for case in stride_one)


def test_each_conv_takes_the_input_gradient_kernel_measured_fastest_for_it():
    from cnntrain.layers.conv import input_grad_method

    rng = np.random.default_rng(0)
    for kwargs, shape, want in [({"kernel_size": 3, "padding": "same"}, (32, 8, 8), "flipped"),
                                ({"kernel_size": 3}, (32, 8, 8), "offsets"),
                                ({"kernel_size": 5}, (6, 14, 14), "shifts"),
                                ({"kernel_size": 3, "padding": "same"}, (8, 8, 8), "shifts"),
                                ({"kernel_size": 3, "padding": "same"}, (16, 8, 8), "offsets"),
                                ({"kernel_size": 3, "stride": 2, "padding": "same"}, (8, 8, 8), "offsets")]:
        layer, _ = make("conv2d", {"filters": 4, **kwargs}, shape, rng)
        assert input_grad_method(layer) == want, (kwargs, shape)


def test_each_conv_takes_the_forward_kernel_measured_fastest_for_it():
    from cnntrain.layers.conv import forward_method

    rng = np.random.default_rng(0)
    for kwargs, shape, want in [({"filters": 6, "kernel_size": 5, "padding": 2}, (1, 28, 28), "banded"),  # LeNet-5
                                ({"filters": 4, "kernel_size": 3}, (3, 8, 8), "banded"),
                                ({"filters": 8, "kernel_size": 3}, (1, 8, 8), "im2col"),
                                ({"filters": 6, "kernel_size": 3}, (5, 8, 8), "im2col"),
                                ({"filters": 6, "kernel_size": 3, "stride": 2}, (1, 8, 8), "im2col"),
                                ({"filters": 6, "kernel_size": 3, "dilation": 2}, (1, 8, 8), "im2col")]:
        layer, _ = make("conv2d", kwargs, shape, rng)
        assert forward_method(layer) == want, (kwargs, shape)


# stride 1, dilation 1: every such case also through the banded forward, whatever the layer would choose
BANDED_CASES = [case for case in CONV_CASES if case[5] == 1 and case[7] == 1] + [
    # (C, H, W, F, kernel, stride, padding, dilation): output widths 28 (whole bands), 5 and 1 (cropped)
    (1, 28, 28, 6, 5, 1, 2, 1),
    (2, 6, 7, 3, (2, 3), 1, "valid", 1),
    (3, 4, 3, 5, 3, 1, "valid", 1),
    (4, 5, 9, 9, (1, 4), 1, ((1, 0), (2, 1)), 1),
]


@pytest.mark.parametrize("chunk_bytes", [channels_last.CHUNK_BYTES, 1])  # 1 byte: one image per block
@pytest.mark.parametrize("C,H,W,F,kernel,stride,padding,dilation", BANDED_CASES)
def test_banded_conv_matches_reference(monkeypatch, C, H, W, F, kernel, stride, padding, dilation, chunk_bytes):
    monkeypatch.setattr("cnntrain.layers.conv.forward_method", lambda layer: "banded")
    monkeypatch.setattr(channels_last, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    layer, out_shape = make("conv2d", {"filters": F, "kernel_size": kernel, "padding": padding}, (C, H, W), rng)
    x = rng.standard_normal((3, C, H, W))
    layer.forward(x, training=True)
    blocks = layer._pop_cache()[0]
    assert blocks[0].shape[1] == layer.kernel_size[0] * (channels_last.BAND + layer.kernel_size[1] - 1) * C
    assert len(blocks) == (3 if chunk_bytes == 1 else 1)
    check_conv(layer, x, rng, f"banded conv2d x{x.shape} k{kernel} p{padding!r} F={F}")


@pytest.mark.parametrize("chunk_bytes", [winograd.WINOGRAD_CHUNK_BYTES, 1])  # 1 byte: one image per block
@pytest.mark.parametrize("C,H,W,F,padding", [
    (3, 6, 8, 2, "same"), (1, 2, 2, 1, "same"), (5, 4, 10, 7, "same"), (16, 8, 6, 16, "same"),
    (2, 6, 8, 3, ((1, 1), (2, 2))), (2, 6, 8, 3, ((2, 0), (0, 2))),  # padding of 2, and on one side only
    (2, 6, 8, 3, "valid"), (2, 5, 7, 3, ((0, 1), (1, 0))),  # odd input sides
    (2, 7, 9, 3, ((1, 0), (0, 1))), (3, 4, 4, 2, ((2, 2), (1, 1))),  # a tile row or column all padding
    # output sides multiples of 4: F(4x4, 3x3)
    (3, 8, 8, 2, "same"), (4, 12, 8, 5, "same"), (2, 6, 10, 3, "valid"), (2, 5, 9, 3, ((1, 0), (0, 1))),
    (3, 2, 4, 2, ((2, 2), (1, 1))), (1, 2, 2, 1, ((2, 2), (2, 2))),
    # other output sides: the last blocks overhang the output (F(4x4, 3x3) where it takes fewer products)
    (3, 14, 14, 2, "same"), (2, 5, 7, 3, "same"), (2, 7, 7, 3, "valid"), (2, 3, 9, 2, "valid"),
    (2, 9, 6, 3, ((0, 1), (2, 0))),
])
def test_winograd_conv_matches_reference(monkeypatch, C, H, W, F, padding, chunk_bytes):
    from cnntrain.layers import conv

    # every 3x3 stride-1 conv, whatever its width and output size, forward and both gradients
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS_LARGE", 1)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_FILTERS", 1)
    monkeypatch.setattr(winograd, "WINOGRAD_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    layer, (_, OH, OW) = make("conv2d", {"filters": F, "kernel_size": 3, "padding": padding}, (C, H, W), rng)
    assert (conv.forward_method(layer), conv.input_grad_method(layer)) == ("winograd", "winograd")
    blocks_of = lambda m: -(-OH // m) * -(-OW // m)  # noqa: E731
    m = 4 if blocks_of(4) * 36 < blocks_of(2) * 16 else 2  # the fewer products; F(2x2, 3x3) on a tie
    assert conv.winograd_scheme(layer).m == m
    x = rng.standard_normal((3, C, H, W))
    layer.forward(x, training=True)
    blocks = layer._pop_cache()[0]  # the transformed input tiles kept for dW
    tiles = (1 if chunk_bytes == 1 else 3) * blocks_of(m)
    assert [b.shape for b in blocks] == [((m + 2) ** 2, tiles, C)] * len(blocks)
    check_conv(layer, x, rng, f"winograd conv2d x{x.shape} F={F} padding {padding}")
    y_ref = ref.conv2d_forward(x, layer.params["W"], layer.params.get("b"), layer.stride, layer.pads, layer.dilation)
    assert_close(layer.forward(x, training=False), y_ref, f"winograd conv2d x{x.shape} y in evaluation")


def test_winograd_first_layer_makes_only_the_weight_gradient(monkeypatch):
    from cnntrain.layers import conv

    seen = []
    real = conv.winograd_backward
    monkeypatch.setattr(conv, "winograd_backward", lambda *a: seen.append(a[6]) or real(*a))
    rng = np.random.default_rng(0)
    layer, _ = make("conv2d", {"filters": 16, "kernel_size": 3, "padding": "same"}, (32, 4, 4), rng)
    x = rng.standard_normal((2, 32, 4, 4))
    dy = rng.standard_normal(layer.forward(x, training=True).shape)
    layer.backward_params(dy)
    dW_ref = ref.conv2d_backward(dy, x, layer.params["W"], layer.stride, layer.pads, layer.dilation)[1]
    assert_close(layer.grads["W"], dW_ref, "winograd dW without dx")
    assert seen == [False]  # no input gradient asked of the kernel


@pytest.mark.parametrize("padding,dx_method", [("same", "flipped"), ("valid", "offsets")])
def test_winograd_forward_with_another_input_gradient_matches_reference(padding, dx_method):
    from cnntrain.layers import conv

    rng = np.random.default_rng(0)  # under WINOGRAD_MIN_FILTERS filters: Winograd's forward and dW, not its dx
    layer, _ = make("conv2d", {"filters": 4, "kernel_size": 3, "padding": padding}, (32, 6, 6), rng)
    assert (conv.forward_method(layer), conv.input_grad_method(layer)) == ("winograd", dx_method)
    check_conv(layer, rng.standard_normal((2, 32, 6, 6)), rng, f"winograd forward, {dx_method} dx, {padding}")


def test_winograd_takes_only_the_convs_it_computes():
    from cnntrain.layers.conv import forward_method, input_grad_method

    rng = np.random.default_rng(0)
    for kwargs, shape, want in [({"filters": 32, "padding": "same"}, (32, 8, 8), ("winograd", "winograd")),
                                ({"filters": 16, "padding": "same"}, (32, 8, 8), ("winograd", "winograd")),
                                ({"filters": 8, "padding": "same"}, (32, 8, 8), ("winograd", "flipped")),
                                ({"filters": 32, "padding": "same"}, (16, 8, 8), ("im2col", "offsets")),
                                # 16 channels from 16x16 outputs (256 pixels), not at mnist_bn_dropout's 14x14
                                ({"filters": 32, "padding": "same"}, (16, 16, 16), ("winograd", "winograd")),
                                ({"filters": 32, "padding": "same"}, (16, 14, 14), ("im2col", "offsets")),
                                ({"filters": 32, "padding": "same"}, (8, 28, 28), ("im2col", "shifts")),
                                ({"filters": 32, "padding": "same"}, (8, 8, 8), ("im2col", "shifts")),
                                ({"filters": 32, "padding": "same"}, (32, 7, 8), ("winograd", "winograd")),  # odd sides
                                ({"filters": 64}, (32, 8, 8), ("winograd", "winograd")),  # keras_mnist's second conv
                                ({"filters": 8}, (32, 8, 8), ("winograd", "offsets")),
                                ({"filters": 32}, (32, 7, 7), ("winograd", "winograd")),
                                ({"filters": 32, "padding": 1, "stride": 2}, (32, 8, 8), ("im2col", "offsets")),
                                ({"filters": 32, "padding": "same", "dilation": 2}, (32, 8, 8), ("im2col", "flipped")),
                                ({"filters": 32, "kernel_size": 5, "padding": "same"}, (32, 8, 8), ("im2col", "flipped"))]:
        layer, _ = make("conv2d", {"kernel_size": 3, **kwargs}, shape, rng)
        assert (forward_method(layer), input_grad_method(layer)) == want, (kwargs, shape)


@pytest.mark.parametrize("side,m", [(32, 4), (24, 4), (26, 4), (14, 4), (7, 4), (3, 4),
                                     (6, 2), (5, 2), (2, 2), (1, 2)])
def test_winograd_scheme_takes_the_fewer_products(side, m):
    from cnntrain.layers.conv import winograd_scheme

    # F(2x2, 3x3): 16 per 2x2 block, F(4x4, 3x3): 36 per 4x4 block, blocks overhanging the output counted;
    # 6x6: 9 * 16 = 4 * 36, a tie, goes to F(2x2, 3x3)
    layer, _ = make("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same"}, (32, side, side),
                    np.random.default_rng(0))
    assert winograd_scheme(layer).m == m


def check_conv(layer, x, rng, what):
    """Forward, dx, dW and db of a conv2d layer against the reference loops."""
    y, dy, dx = forward_backward(layer, x, rng)
    b = layer.params.get("b")
    args = (layer.stride, layer.pads, layer.dilation)
    assert_close(y, ref.conv2d_forward(x, layer.params["W"], b, *args), f"{what} y")
    dx_ref, dW_ref, db_ref = ref.conv2d_backward(dy, x, layer.params["W"], *args)
    assert_close(dx, dx_ref, f"{what} dx")
    assert_close(layer.grads["W"], dW_ref, f"{what} dW")
    if b is not None:
        assert_close(layer.grads["b"], db_ref, f"{what} db")


@pytest.mark.parametrize("method", ["flipped", "shifts", "offsets"])
@pytest.mark.parametrize("C,H,W,F,kernel,stride,padding,dilation", CONV_CASES)
def test_conv_matches_reference(monkeypatch, C, H, W, F, kernel, stride, padding, dilation, method):
    # every stride-1 case through each input-gradient kernel, whichever one the layer would choose
    monkeypatch.setattr("cnntrain.layers.conv.input_grad_method",
                        lambda layer: method if layer.stride == (1, 1) else "offsets")
    rng = np.random.default_rng(0)
    layer, out_shape = make("conv2d", {"filters": F, "kernel_size": kernel, "stride": stride,
                                       "padding": padding, "dilation": dilation}, (C, H, W), rng)
    x = rng.standard_normal((2, C, H, W))
    assert layer.forward(x, training=False).shape == (2, *out_shape)
    check_conv(layer, x, rng, f"conv2d x{x.shape} k{kernel} s{stride} p{padding!r} d{dilation}")


@pytest.mark.parametrize("C", [3, 6])
def test_conv_without_bias_matches_reference(C):
    rng = np.random.default_rng(0)
    layer, _ = make("conv2d", {"filters": 2, "kernel_size": 3, "stride": 2, "use_bias": False}, (C, 7, 7), rng)
    assert "b" not in layer.params
    check_conv(layer, rng.standard_normal((2, C, 7, 7)), rng, f"conv2d C={C} use_bias=False")


@pytest.mark.parametrize("C", [3, 6])
@pytest.mark.parametrize("chunk_bytes", [channels_last.CHUNK_BYTES, 1])  # 1 byte: one image per block
def test_conv_in_cache_sized_blocks_matches_reference(monkeypatch, C, chunk_bytes):
    """Forward and gradients are right whether im2col runs per image or for the whole batch."""
    monkeypatch.setattr(channels_last, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    layer, _ = make("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same"}, (C, 7, 7), rng)
    x = rng.standard_normal((3, C, 7, 7))
    layer.forward(x, training=True)
    blocks = layer._pop_cache()[0]  # the column blocks kept for dW: proves which way it ran
    assert len(blocks) == (3 if chunk_bytes == 1 else 1), f"{len(blocks)} blocks with CHUNK_BYTES={chunk_bytes}"
    check_conv(layer, x, rng, f"conv2d C={C} CHUNK_BYTES={chunk_bytes}")


MAXPOOL_CASES = [
    # (C, H, W, size, stride, padding)
    (3, 6, 8, 2, None, "valid"),  # windows tile, C <= 16: the row-reduction fast path
    (2, 6, 6, 3, None, "valid"),
    (2, 6, 4, (3, 2), None, "valid"),
    (2, 5, 5, 2, None, "same"),  # tiles once padded with -inf
    (17, 4, 6, 2, None, "valid"),  # tiles, but C > 16
    (2, 7, 5, 2, None, "valid"),  # stride == size, but the last row is left out
    (3, 7, 7, 3, 2, "valid"),  # overlapping windows
    (2, 5, 5, 3, 1, 1),
    (2, 6, 7, 3, 2, "same"),
    (17, 5, 5, 3, 2, 1),
    (2, 7, 8, 2, 3, "valid"),  # gaps between windows
    (3, 5, 6, (3, 2), (1, 2), ((1, 2), (0, 1))),
    (3, 5, 5, 1, 1, "valid"),
]


def takes_tiled_maxpool_path(layer):
    """The condition of maxpool_kernels.maxpool_nhwc's fast path, for this built layer."""
    C, OH, OW = layer.out_shape
    (t, b), (l, r) = layer.pads
    H, W = layer.in_shape[1] + t + b, layer.in_shape[2] + l + r
    return C <= 16 and layer.stride == layer.size and (H, W) == (layer.size[0] * OH, layer.size[1] * OW)


def test_maxpool_cases_cover_both_paths():
    paths = {takes_tiled_maxpool_path(make("maxpool2d", {"size": size, "stride": stride, "padding": padding},
                                           (C, H, W), np.random.default_rng(0))[0])
             for C, H, W, size, stride, padding in MAXPOOL_CASES}
    assert paths == {True, False}


def test_tiling_maxpool_backward_runs_over_rows_without_ties_and_hands_ties_to_the_loop():
    rng = np.random.default_rng(0)
    xp = rng.standard_normal((2, 6, 8, 3))
    y = maxpool_kernels.maxpool_nhwc(xp, (2, 2), (2, 2), (3, 4))
    dy = rng.standard_normal(y.shape)
    fast = maxpool_kernels.tiling_maxpool_backward_nhwc(xp, y, dy, (2, 2))
    assert fast is not None
    np.testing.assert_array_equal(fast, maxpool_kernels.maxpool_backward_nhwc(xp, y, dy, (2, 2), (2, 2)))
    xp[0, :2, :2, 0] = 1.5  # one window of four equal maxima: only the first may get dy
    y = maxpool_kernels.maxpool_nhwc(xp, (2, 2), (2, 2), (3, 4))
    assert maxpool_kernels.tiling_maxpool_backward_nhwc(xp, y, dy, (2, 2)) is None
    dx = maxpool_kernels.maxpool_backward_nhwc(xp, y, dy, (2, 2), (2, 2))
    assert dx[0, :2, :2, 0].tolist() == [[dy[0, 0, 0, 0], 0], [0, 0]]
    # a tie under a zero dy (a ReLU after the pool that is off there) routes nothing either way
    dy[0, 0, 0, 0] = 0.0
    fast = maxpool_kernels.tiling_maxpool_backward_nhwc(xp, y, dy, (2, 2))
    assert fast is not None
    np.testing.assert_array_equal(fast, maxpool_kernels.maxpool_backward_nhwc(xp, y, dy, (2, 2), (2, 2)))
    # a window without a hit (NaN) must not hide another's tie of two from the counts
    xp[0, :2, :2, 0] = [[1.5, 1.5], [-9.0, -9.0]]
    xp[1, :2, :2, 1] = np.nan
    dy[0, 0, 0, 0] = 1.0
    y = maxpool_kernels.maxpool_nhwc(xp, (2, 2), (2, 2), (3, 4))
    assert maxpool_kernels.tiling_maxpool_backward_nhwc(xp, y, dy, (2, 2)) is None


@pytest.mark.parametrize("channels", [1, 5], ids=["transposed-columns", "columns"])
@pytest.mark.parametrize("affine", [False, True], ids=["routed", "routed-less-affine"])
def test_pooled_grad_parts_give_the_pools_gradient_and_the_convs_weight_gradient(channels, affine):
    """A conv's (im2col) output max-pooled: PooledGrad's dx is the pool's, with ties, and its weight
    gradient the reference loops', over several column blocks, also less a batchnorm's affine term."""
    rng = np.random.default_rng(0)
    conv, (F, H, W) = make("conv2d", {"filters": 4, "kernel_size": 3, "padding": 1}, (channels, 6, 8), rng)
    x = sample(rng, (3, channels, 6, 8), ties=True)
    xp = channels_last.pad_nhwc(channels_last.nhwc(x), conv.pads)
    Wm = conv.params["W"].transpose(2, 3, 1, 0).reshape(-1, F)
    ym, blocks = channels_last.conv_forward_nhwc(xp, Wm, (3, 3), (1, 1), (1, 1), (H, W), keep=True)
    assert len(blocks) == 1
    # three blocks of one image each, as CHUNK_BYTES makes them for large images
    blocks = [blocks[0][k * H * W : (k + 1) * H * W] for k in range(3)]
    y = ym.reshape(3, H, W, F)
    y[0, :2, :2] = 0.5  # a window of four equal maxima in every channel
    pooled = maxpool_kernels.maxpool_nhwc(y, (2, 2), (2, 2), (H // 2, W // 2))
    dy = rng.standard_normal(pooled.shape)
    grad = maxpool_kernels.maxpool_backward_parts_nhwc(y, pooled, dy, (2, 2))
    routed = maxpool_kernels.maxpool_backward_nhwc(y, pooled, dy, (2, 2), (2, 2))
    if affine:
        other, scale, shift = rng.standard_normal(y.shape), rng.standard_normal(F), rng.standard_normal(F)
        grad.affine = (other, scale, shift)
        routed = routed - other * scale - shift
    np.testing.assert_array_equal(grad.dense(), routed)
    dW, sums = grad.weight_grad(blocks, 9 * channels)
    _, want_dW, want_db = ref.conv2d_backward(channels_last.nchw(routed), x, conv.params["W"], (1, 1), conv.pads, (1, 1))
    assert_close(dW.reshape(3, 3, channels, F).transpose(3, 2, 0, 1), want_dW, "dW")
    assert_close(sums, want_db, "db")


def test_maxpool_tries_the_row_wise_gradient_again_a_while_after_a_tie(monkeypatch):
    from cnntrain.layers import pool

    monkeypatch.setattr(pool, "ROWS_RETRY", 2)
    tried = []
    original = pool.tiling_maxpool_backward_nhwc
    monkeypatch.setattr(pool, "tiling_maxpool_backward_nhwc", lambda *a: tried.append(1) or original(*a))
    rng = np.random.default_rng(0)
    layer, _ = make("maxpool2d", {"size": 2}, (3, 4, 4), rng)
    tied = np.zeros((2, 3, 4, 4))  # every window ties
    for step, x in enumerate([tied, tied, tied, tied, rng.standard_normal((2, 3, 4, 4))]):
        y, dy, dx = forward_backward(layer, x, rng)
        assert_close(dx, ref.maxpool2d_backward(dy, x, layer.size, layer.stride, layer.pads), f"step {step}")
    assert len(tried) == 2  # steps 0 and 3; steps 1 and 2 wait, step 4 waits after step 3's tie


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("C,H,W,size,stride,padding", MAXPOOL_CASES)
def test_maxpool_matches_reference(C, H, W, size, stride, padding, ties):
    rng = np.random.default_rng(0)
    layer, out_shape = make("maxpool2d", {"size": size, "stride": stride, "padding": padding}, (C, H, W), rng)
    x = sample(rng, (2, C, H, W), ties)
    what = f"maxpool2d x{x.shape} size {size} stride {stride} padding {padding!r} ties={ties}"
    y, dy, dx = forward_backward(layer, x, rng)
    args = (layer.size, layer.stride, layer.pads)
    assert_close(y, ref.maxpool2d_forward(x, *args), f"{what} y")
    assert_close(layer.forward(x, training=False), y, f"{what} y in evaluation")
    assert_close(dx, ref.maxpool2d_backward(dy, x, *args), f"{what} dx")


AVGPOOL_CASES = [
    # (C, H, W, size, stride, padding)
    (3, 6, 6, 2, None, "valid"),
    (2, 7, 5, 2, None, "valid"),
    (3, 7, 7, 3, 2, "valid"),
    (2, 5, 5, 3, 1, 1),
    (2, 5, 5, 2, None, "same"),
    (2, 6, 7, 3, 2, "same"),
    (2, 5, 6, (3, 2), (1, 2), ((1, 0), (0, 1))),
    (3, 5, 6, 3, 3, ((1, 2), (0, 1))),
    (2, 7, 8, 2, 3, "valid"),
    (5, 4, 4, 1, 1, "valid"),
]


@pytest.mark.parametrize("C,H,W,size,stride,padding", AVGPOOL_CASES)
def test_avgpool_matches_reference(C, H, W, size, stride, padding):
    rng = np.random.default_rng(0)
    layer, out_shape = make("avgpool2d", {"size": size, "stride": stride, "padding": padding}, (C, H, W), rng)
    x = rng.standard_normal((2, C, H, W))
    what = f"avgpool2d x{x.shape} size {size} stride {stride} padding {padding!r}"
    y, dy, dx = forward_backward(layer, x, rng)
    args = (layer.size, layer.stride, layer.pads)
    assert y.shape == (2, *out_shape), what
    assert_close(y, ref.avgpool2d_forward(x, *args), f"{what} y")
    assert_close(dx, ref.avgpool2d_backward(dy, x, *args), f"{what} dx")


@pytest.mark.parametrize("C,H,W", [(3, 5, 5), (2, 3, 4), (4, 1, 7)])
def test_global_avgpool_is_avgpool_with_a_window_the_size_of_the_input(C, H, W):
    rng = np.random.default_rng(0)
    layer, _ = make("global_avgpool", {}, (C, H, W), rng)
    x = rng.standard_normal((2, C, H, W))
    y, dy, dx = forward_backward(layer, x, rng)
    args = ((H, W), (1, 1), ((0, 0), (0, 0)))
    assert_close(y, ref.avgpool2d_forward(x, *args)[:, :, 0, 0], f"global_avgpool x{x.shape} y")
    assert_close(dx, ref.avgpool2d_backward(dy[:, :, None, None], x, *args), f"global_avgpool x{x.shape} dx")


BATCHNORM_CASES = [
    # (kwargs, input shape without batch, batch size): (C, H, W) after a conv, (D,) after a dense layer
    ({}, (3, 5, 5), 2),
    ({"momentum": 0.3}, (2, 3, 3), 2),
    ({"eps": 1e-3}, (6, 4, 3), 2),
    ({}, (6,), 4),
    ({"momentum": 0.5, "eps": 1e-3}, (5,), 3),
    ({}, (4,), 2),
]


@pytest.mark.parametrize("kwargs,in_shape,N", BATCHNORM_CASES)
def test_batchnorm_matches_reference(kwargs, in_shape, N):
    rng = np.random.default_rng(0)
    layer, _ = make("batchnorm", kwargs, in_shape, rng)
    C = in_shape[0]
    running_mean, running_var = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    layer.buffers = {"running_mean": running_mean.copy(), "running_var": running_var.copy()}
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    x = 2 + 3 * rng.standard_normal((N, *in_shape))
    what = f"batchnorm {kwargs} x{x.shape}"

    y, dy, dx = forward_backward(layer, x, rng)
    y_ref, cache = ref.batchnorm_forward(x, gamma, beta, layer.eps)
    assert_close(y, y_ref, f"{what} y")
    dx_ref, dgamma_ref, dbeta_ref = ref.batchnorm_backward(dy, cache)
    assert_close(dx, dx_ref, f"{what} dx")
    assert_close(layer.grads["gamma"], dgamma_ref, f"{what} dgamma")
    assert_close(layer.grads["beta"], dbeta_ref, f"{what} dbeta")

    # running = (1 - momentum) * running + momentum * batch statistic, the variance unbiased
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    momentum = layer.momentum
    assert_close(layer.buffers["running_mean"], (1 - momentum) * running_mean + momentum * x.mean(axis=axes),
                 f"{what} running_mean")
    assert_close(layer.buffers["running_var"], (1 - momentum) * running_var + momentum * x.var(axis=axes, ddof=1),
                 f"{what} running_var")

    buffers = {key: value.copy() for key, value in layer.buffers.items()}
    x_eval = rng.standard_normal(x.shape)
    y_eval = layer.forward(x_eval, training=False)
    expected = ref.batchnorm_inference(x_eval, gamma, beta, buffers["running_mean"], buffers["running_var"],
                                       layer.eps)
    assert_close(y_eval, expected, f"{what} y in evaluation")
    for key, value in buffers.items():
        assert_close(layer.buffers[key], value, f"{what} {key} after evaluation (must not move)", tol=0)


SPP_CASES = [
    # (levels, built (C, H, W), forward (H, W))
    ([1, 2, 3], (3, 7, 5), (7, 5)),
    ([1, 2, 3], (3, 7, 5), (9, 12)),  # a size other than the built one
    ([1, 2, 4], (2, 8, 8), (8, 8)),  # bins tile
    ([2, 3], (2, 5, 5), (5, 5)),  # neighbouring bins share rows and columns
]


@pytest.mark.parametrize("mode,ties", [("max", False), ("max", True), ("avg", False)])
@pytest.mark.parametrize("levels,in_shape,hw", SPP_CASES)
def test_spp_matches_reference(levels, in_shape, hw, mode, ties):
    rng = np.random.default_rng(0)
    layer, out_shape = make("spp", {"levels": levels, "mode": mode}, in_shape, rng)
    assert out_shape == (in_shape[0] * sum(n * n for n in levels),)
    x = sample(rng, (2, in_shape[0], *hw), ties)
    what = f"spp {levels} {mode} x{x.shape} ties={ties}"
    y, dy, dx = forward_backward(layer, x, rng)
    assert_close(y, ref.spp_forward(x, levels, mode), f"{what} y")
    assert_close(layer.forward(x, training=False), y, f"{what} y in evaluation")
    assert_close(dx, ref.spp_backward(dy, x, levels, mode), f"{what} dx")
