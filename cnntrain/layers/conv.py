"""2-D convolution (cross-correlation, as in every framework) over NCHW batches."""

from __future__ import annotations

import numpy as np

from ..init import make_init
from ..registry import LAYERS
from .channels_last import (FEW_CHANNELS, banded_weight_grad, column_sums, conv_forward_banded_nhwc,
                             conv_forward_nhwc, conv_input_grad_flipped_nhwc, conv_input_grad_nhwc,
                             conv_input_grad_shifts_nhwc, nchw, nhwc, pad_nhwc)
from .winograd import conv_forward_winograd_nhwc, conv_input_grad_winograd_nhwc, winograd_weight_grad
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

    "winograd" (winograd_fits(layer, gradient=True): the forward's kernel on dy),
    "flipped" (padded, stride 1, 32+ channels), "shifts" (stride 1, under 16 channels), else
    "offsets" (conv_input_grad_nhwc: any stride; also unpadded convs with many channels, where
    the other two do needless work on dy's zero border).
    """
    (t, b), (l, r) = layer.pads
    channels = layer.in_shape[0]
    if winograd_fits(layer, gradient=True):
        return "winograd"
    if layer.stride != (1, 1):
        return "offsets"
    if channels < SHIFTS_BELOW_CHANNELS:
        return "shifts"
    return "flipped" if (t or b or l or r) and channels >= FLIPPED_MIN_CHANNELS else "offsets"


# Input channels (and filters, for the input gradient) from which Winograd F(2x2, 3x3) won, one
# thread, 32 images: cifar10_cnn's 32-128 channel convs 17-37% faster forward and backward
# (32x32x32x32 27.7 -> 22.2 ms, 16x16x64x64 23.4 -> 15.2); with 16 channels at 14x14
# (mnist_bn_dropout) the forward was slower, 1.02 against 0.68 ms: too few to pay for the transforms.
WINOGRAD_MIN_CHANNELS = 32


def winograd_fits(layer, gradient: bool = False) -> bool:
    """Whether Winograd F(2x2, 3x3) computes a conv's forward: 3x3, stride 1, no dilation, even output
    sides and 32+ input channels; or, with gradient, its input gradient: even input sides, padding
    of 1 or 2 on each side and 32+ channels and filters (dy's channels are that kernel's input, the
    conv's channels its output; mnist_bn_dropout's 16 -> 32 conv: 1.19 against 0.94 ms). Unpadded, dy's
    zero border made it the slower one (keras_mnist's 26x26x32 -> 64 conv: 13.9 against 8.5 ms for
    conv_input_grad_nhwc, where its forward went 12.0 -> 9.7 ms and weight gradient 11.1 -> 9.1)."""
    F, OH, OW = layer.out_shape
    C, H, W = layer.in_shape
    if layer.kernel_size != (3, 3) or layer.stride != (1, 1) or layer.dilation != (1, 1):
        return False
    if gradient:
        return (H % 2 == 0 and W % 2 == 0 and all(1 <= p <= 2 for pair in layer.pads for p in pair)
                and min(C, F) >= WINOGRAD_MIN_CHANNELS)
    return OH % 2 == 0 and OW % 2 == 0 and C >= WINOGRAD_MIN_CHANNELS


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
        xp = pad_nhwc(nhwc(x), self.pads)
        W = W.transpose(2, 3, 1, 0).reshape(-1, F)  # (KH*KW*C, F), matching im2col's columns
        method = forward_method(self)
        if method == "winograd":
            y, blocks = conv_forward_winograd_nhwc(xp, W, (OH, OW), training)
        elif method == "banded":
            y, blocks = conv_forward_banded_nhwc(xp, W, self.kernel_size, (OH, OW), training)
        else:
            y, blocks = conv_forward_nhwc(xp, W, self.kernel_size, self.stride, self.dilation, (OH, OW), training)
        if b is not None:  # added row by row of the image, (OW*F,) at a time: a (F,) row per pixel is
            # too short for a ufunc to amortise its per-row overhead when F is small
            rows = y.reshape(N * OH, OW * F)
            rows += np.tile(b, OW)
        if training:
            self._cache = (blocks, W, xp.shape)
        return nchw(y.reshape(N, OH, OW, F))

    def backward(self, dy):
        dym, W, padded_shape = self.backward_params(dy)
        F, OH, OW = self.out_shape
        (t, _), (l, _) = self.pads
        C, H, Wd = self.in_shape
        args = (self.kernel_size, self.dilation, (OH, OW))
        method = input_grad_method(self)
        if method == "winograd":
            return nchw(conv_input_grad_winograd_nhwc(dym, W, (padded_shape[0], H, Wd, C), self.pads, (OH, OW)))
        if method == "flipped":
            return nchw(conv_input_grad_flipped_nhwc(dym, W, (padded_shape[0], H, Wd, C), self.pads, *args))
        if method == "shifts":
            return nchw(conv_input_grad_shifts_nhwc(dym, W, padded_shape, self.pads, *args))
        dxp = conv_input_grad_nhwc(dym, W, padded_shape, self.kernel_size, self.stride, self.dilation, (OH, OW))
        return nchw(dxp[:, t : t + H, l : l + Wd])

    def backward_params(self, dy):
        """Parameter gradients only (for a first layer, whose input needs none); returns what dx needs."""
        blocks, W, padded_shape = self._pop_cache()
        F, OH, OW = self.out_shape
        KH, KW = self.kernel_size
        C = self.in_shape[0]
        dym = nhwc(dy).reshape(-1, F)  # (N*OH*OW, F)
        method = forward_method(self)
        if method == "winograd":
            dW = winograd_weight_grad(blocks, dym, (OH, OW), C)
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
        return dym, W, padded_shape

    def macs(self):
        F, OH, OW = self.out_shape
        return F * OH * OW * self.in_shape[0] * self.kernel_size[0] * self.kernel_size[1]

    def get_config(self):
        return {"filters": self.filters, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding, "dilation": list(self.dilation), "use_bias": self.use_bias,
                "init": self.init}
