"""2-D convolution (cross-correlation, as in every framework) over NCHW batches."""

from __future__ import annotations

import math

import numpy as np

from ..init import make_init
from ..registry import LAYERS
from .channels_last import (FEW_CHANNELS, banded_weight_grad, column_sums, conv_forward_banded_nhwc,
                             conv_forward_nhwc, conv_input_grad_flipped_nhwc, conv_input_grad_nhwc,
                             conv_input_grad_shifts_nhwc, nchw, nhwc, pad_nhwc)
from .maxpool_kernels import PooledGrad
from .winograd import F2x2, F4x4, conv_forward_winograd_nhwc, tiles_for, winograd_backward
from .geometry import out_size, resolve_padding
from .base import Layer, check_shape, pair


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    return int(value)


# A padded stride-1 conv with at least this many input channels takes its input gradient as one
# convolution of dy (conv_input_grad_flipped_nhwc): its product is then wide enough to win.
# Whole training steps of one 32-image share, alternating: cifar10_cnn 1-10% faster in six
# runs; mnist_bn_dropout (16 channels) 3.5% slower with it. Stride-1 convs with fewer than
# SHIFTS_BELOW_CHANNELS shift whole channel rows instead (conv_input_grad_shifts_nhwc): lenet5's
# shares 6% faster (6 channels), small's 2.5% (8); mnist_bn_dropout's (16) 1-2% slower.
FLIPPED_MIN_CHANNELS = 32
SHIFTS_BELOW_CHANNELS = 16


def input_grad_method(layer) -> str:
    """Which kernel computes a conv's input gradient; each is tested against the reference loops.

    "winograd" (winograd.winograd_backward, with dW) where the forward is Winograd's and there are
    WINOGRAD_MIN_FILTERS or more filters; "flipped" (padded, stride 1, 32+ channels), "shifts"
    (stride 1, under 16 channels), else "offsets" (conv_input_grad_nhwc: any stride; also unpadded
    convs with many channels, where the other two do needless work on dy's zero border).
    """
    (t, b), (l, r) = layer.pads
    channels = layer.in_shape[0]
    if forward_method(layer) == "winograd" and layer.filters >= WINOGRAD_MIN_FILTERS:
        return "winograd"
    if layer.stride != (1, 1):
        return "offsets"
    if channels < SHIFTS_BELOW_CHANNELS:
        return "shifts"
    return "flipped" if (t or b or l or r) and channels >= FLIPPED_MIN_CHANNELS else "offsets"


# Input channels from which Winograd won, one thread, 32 images, forward and both gradients, with
# its transforms as products: 32 or more at any size (cifar10_cnn's convs 1.3-1.9x im2col, a
# 14x14x32 -> 64 conv 1.2x); 16 or more on outputs of WINOGRAD_LARGE_OUTPUT pixels or more
# (16x16x16 -> 32 1.29x, 28x28x16 -> 32 1.57x, 28x28x24 -> 32 1.82x), but not at 14x14, where F(4x4,
# 3x3)'s blocks overhang the output by a third (16 channels 0.90x, 24 0.93x: mnist_bn_dropout's
# second conv keeps im2col); 8 channels at 28x28 tied. Its input gradient (dM U^T per tile
# position, folded back onto the input) needs WINOGRAD_MIN_FILTERS: a 16x16x32 conv's forward and
# backward with 8 filters took 2.4-3.5 ms against 1.9-2.1 for "flipped"; with 16 they tied, with 24
# Winograd won.
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_CHANNELS_LARGE = 16
WINOGRAD_LARGE_OUTPUT = 16 * 16
WINOGRAD_MIN_FILTERS = 16


def winograd_fits(layer) -> bool:
    """Whether Winograd (winograd_scheme's) computes a conv's forward and weight gradient: 3x3, stride 1,
    no dilation, and WINOGRAD_MIN_CHANNELS input channels (WINOGRAD_MIN_CHANNELS_LARGE on large
    outputs). Any padding and output size: the transform pads as it goes."""
    if layer.kernel_size != (3, 3) or layer.stride != (1, 1) or layer.dilation != (1, 1):
        return False
    _, OH, OW = layer.out_shape
    least = WINOGRAD_MIN_CHANNELS_LARGE if OH * OW >= WINOGRAD_LARGE_OUTPUT else WINOGRAD_MIN_CHANNELS
    return layer.in_shape[0] >= least


def winograd_scheme(layer):
    """The scheme with the fewest products for the layer's output, counting the blocks that overhang
    it: winograd.F4x4 (36 per 4x4 block) for cifar10_cnn's 32x32 and fashion_mnist's 14x14 (16 blocks
    against F(2x2, 3x3)'s 49 of 16), winograd.F2x2 on a tie (its float32 error is ten times smaller)."""
    _, OH, OW = layer.out_shape
    return min((F2x2, F4x4), key=lambda s: math.prod(tiles_for((OH, OW), s)) * s.a**2)


def forward_method(layer) -> str:
    """Which kernel computes a conv's forward (and so its weight gradient); each is tested against
    the reference loops.

    "winograd" (winograd.conv_forward_winograd_nhwc) where winograd_fits; "banded"
    (conv_forward_banded_nhwc) for stride 1, dilation 1, at most FEW_CHANNELS input channels and
    under 8 filters, where im2col's product is too narrow: a first layer like LeNet-5's (6 filters,
    5x5) 28% faster, forward and weight gradient, and 1-3 channel inputs with 4-6 filters 10-50%;
    with 8 or more filters im2col was as fast or faster. Else "im2col" (conv_forward_nhwc).
    """
    if winograd_fits(layer):
        return "winograd"
    if (layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.in_shape[0] <= FEW_CHANNELS
            and layer.filters < 8):
        return "banded"
    return "im2col"


@LAYERS.register("conv2d")
class Conv2D(Layer):
    """y[n, f] = b[f] + sum over c of the window inner products of x[n, c] with W[f, c].

    x: (N, C, H, W) -> y: (N, F, OH, OW); W: (F, C, KH, KW), b: (F,).
    OH = floor((H + pad_top + pad_bottom - dilation*(KH-1) - 1) / stride) + 1.
    The plain loops: reference.conv2d_forward / conv2d_backward; this is matrix products on
    channels-last memory, over im2col columns, bands or Winograd tiles as forward_method and
    input_grad_method choose for the layer's shape (channels_last.py, winograd.py), tested equal to them.
    """

    new_output = True  # forward returns an array of its own (Sequential may apply the next activation in place)
    new_grad = True
    takes_pooled_grad = True  # backward_params accepts a max pool's maxpool_kernels.PooledGrad

    def __init__(self, filters: int, kernel_size=3, stride=1, padding="valid", dilation=1,
                 use_bias: bool = True, init="he_normal"):
        super().__init__()
        self.filters = positive_int(filters, "filters")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        for name, value in (("kernel_size", self.kernel_size), ("stride", self.stride), ("dilation", self.dilation)):
            if min(value) < 1:
                raise ValueError(f"{name}: must be >= 1, got {list(value)}")
        resolve_padding(padding, (1, 1), (1, 1), (1, 1))  # validates the spelling early
        self.padding, self.use_bias, self.init = padding, bool(use_bias), init
        self._init = make_init(init)

    def build(self, in_shape, rng):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (channels, height, width), got {tuple(in_shape)}; "
                             "add a reshape or remove the flatten before it")
        C, H, W = in_shape
        self.pads = resolve_padding(self.padding, (H, W), self.kernel_size, self.stride, self.dilation)
        OH, OW = (out_size(s, kk, st, p, d) for s, kk, st, p, d in
                  zip((H, W), self.kernel_size, self.stride, self.pads, self.dilation))
        if OH < 1 or OW < 1:
            (t, b), (l, r) = self.pads
            raise ValueError(f"kernel {self.kernel_size[0]}x{self.kernel_size[1]} with dilation "
                             f"{self.dilation[0]}x{self.dilation[1]} does not fit the padded input "
                             f"{H + t + b}x{W + l + r} (input {C}x{H}x{W})")
        KH, KW = self.kernel_size
        fan_in, fan_out = C * KH * KW, self.filters * KH * KW
        self.params["W"] = self._init((self.filters, C, KH, KW), fan_in, fan_out, rng)
        if self.use_bias:
            self.params["b"] = np.zeros(self.filters, dtype=np.float32)
        self.in_shape, self.out_shape = (C, H, W), (self.filters, OH, OW)
        return self.out_shape

    def forward(self, x, training):
        return self._forward(x, self.params["W"], self.params.get("b"), training)

    def forward_scaled(self, x, scale, shift):
        """Evaluation forward, then y * scale + shift per filter, folded into W and b (a batchnorm after it)."""
        b = shift if "b" not in self.params else self.params["b"] * scale + shift
        return self._forward(x, self.params["W"] * scale[:, None, None, None], b, training=False)

    def _forward(self, x, W, b, training):
        check_shape(x, self.in_shape, self)
        N = x.shape[0]
        F, OH, OW = self.out_shape
        W = W.transpose(2, 3, 1, 0).reshape(-1, F)  # (KH*KW*C, F), matching im2col's columns
        method = forward_method(self)
        if method == "winograd":  # pads on the way into its transform
            xh = nhwc(x)
            y, blocks = conv_forward_winograd_nhwc(xh, W, self.pads, (OH, OW), training, winograd_scheme(self))
            padded_shape = (N, OH + 2, OW + 2, xh.shape[3])
        else:
            xp = pad_nhwc(nhwc(x), self.pads)
            padded_shape = xp.shape
            if method == "banded":
                y, blocks = conv_forward_banded_nhwc(xp, W, self.kernel_size, (OH, OW), training)
            else:
                y, blocks = conv_forward_nhwc(xp, W, self.kernel_size, self.stride, self.dilation, (OH, OW),
                                              training)
        if b is not None:  # added row by row of the image, (OW*F,) at a time: a (F,) row per pixel is
            # too short for a ufunc to amortise its per-row overhead when F is small
            rows = y.reshape(N * OH, OW * F)
            rows += np.tile(b, OW)
        if training:
            self._cache = (blocks, W, padded_shape)
        return nchw(y.reshape(N, OH, OW, F))

    def backward(self, dy):
        dym, W, padded_shape, dx = self._backward(dy, input_grad=True)
        if dx is not None:  # Winograd's, made with dW from the same transformed dy
            return nchw(dx)
        F, OH, OW = self.out_shape
        (t, _), (l, _) = self.pads
        C, H, Wd = self.in_shape
        args = (self.kernel_size, self.dilation, (OH, OW))
        method = input_grad_method(self)
        if method == "flipped":
            return nchw(conv_input_grad_flipped_nhwc(dym, W, (padded_shape[0], H, Wd, C), self.pads, *args))
        if method == "shifts":
            return nchw(conv_input_grad_shifts_nhwc(dym, W, padded_shape, self.pads, *args))
        dxp = conv_input_grad_nhwc(dym, W, padded_shape, self.kernel_size, self.stride, self.dilation, (OH, OW))
        return nchw(dxp[:, t : t + H, l : l + Wd])

    def backward_params(self, dy):
        """Parameter gradients only, for a first layer, whose input needs none. dy may be a max pool's
        maxpool_kernels.PooledGrad: im2col's column blocks then take the weight gradient from its parts."""
        if isinstance(dy, PooledGrad):
            if forward_method(self) != "im2col":
                dy = nchw(dy.dense())
            else:
                blocks, _, _ = self._pop_cache()
                KH, KW = self.kernel_size
                dW, sums = dy.weight_grad(blocks, KH * KW * self.in_shape[0])
                self.grads["W"] = np.ascontiguousarray(dW.reshape(KH, KW, self.in_shape[0], -1).transpose(3, 2, 0, 1))
                if self.use_bias:
                    self.grads["b"] = sums
                return
        self._backward(dy, input_grad=False)

    def _backward(self, dy, input_grad: bool):
        """Parameter gradients; returns what the input gradient needs, and that gradient (N, H, W, C)
        itself where the Winograd backward made it alongside dW (else None)."""
        blocks, W, padded_shape = self._pop_cache()
        F, OH, OW = self.out_shape
        KH, KW = self.kernel_size
        C, H, Wd = self.in_shape
        dym = nhwc(dy).reshape(-1, F)  # (N*OH*OW, F)
        method, dx = forward_method(self), None
        if method == "winograd":
            dW, dx = winograd_backward(blocks, dym, W, self.pads, (padded_shape[0], H, Wd, C), (OH, OW),
                                       input_grad and input_grad_method(self) == "winograd", winograd_scheme(self))
        elif method == "banded":
            dW = banded_weight_grad(blocks, dym, self.kernel_size, C, (OH, OW))
        else:
            dW, start = None, 0
            for cols in blocks:  # the column blocks of forward, (rows, KH*KW*C) each
                part = cols.T @ dym[start : start + len(cols)]
                dW = part if dW is None else dW + part
                start += len(cols)
        self.grads["W"] = np.ascontiguousarray(dW.reshape(KH, KW, C, F).transpose(3, 2, 0, 1))
        if self.use_bias:
            self.grads["b"] = column_sums(dym)
        return dym, W, padded_shape, dx

    def macs(self):
        F, OH, OW = self.out_shape
        return F * OH * OW * self.in_shape[0] * self.kernel_size[0] * self.kernel_size[1]

    def get_config(self):
        return {"filters": self.filters, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding, "dilation": list(self.dilation), "use_bias": self.use_bias,
                "init": self.init}
