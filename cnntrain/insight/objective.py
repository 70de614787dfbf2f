"""A network's loss as a function of one flat float64 parameter vector, on a fixed batch, in evaluation mode.

What the curvature commands differentiate: `cnntrain hessian` and `train.track_sharpness` take
Hessian-vector products of it, by central differences of the network's own backward pass.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from ..layers.activations import LeakyReLU, ReLU
from ..layers.dropout import Dropout
from ..layers.channels_last import nchw, nhwc, pad_nhwc
from ..layers.norm import BatchNorm
from ..layers.pool import MaxPool2D

HESSIAN_STREAM = 4  # spawn_key component: 0 model, 1 shuffling, 2 augmentation, 3 image-folder test split
CHUNK_SIZE = 250    # images per forward/backward pass: float64 im2col blocks of a batch of 1000 would take ~0.5 GB


def fixed_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` of n images drawn without replacement, a function of seed alone (all when size >= n)."""
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(HESSIAN_STREAM,)))
    return np.sort(rng.choice(n, size, replace=False))


def probe_rng(seed: int, purpose: int) -> np.random.Generator:
    """The generator of one use of random vectors (1 Lanczos start, 2 trace probes, 3 density probes)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(HESSIAN_STREAM, purpose)))


def rademacher(rng: np.random.Generator, n: int) -> np.ndarray:
    """n independent signs +-1 (float64)."""
    return rng.integers(0, 2, n).astype(np.float64) * 2 - 1


class _Layer:
    """A layer as it is: forward keeps its cache for backward (the output is that of evaluation)."""

    def __init__(self, layer):
        self.layer = layer

    def forward(self, x, chunk):
        return self.layer.forward(x, training=True)

    def backward(self, dy):
        return self.layer.backward(dy)

    def backward_params(self, dy) -> None:
        """Parameter gradients only, for the first layer (the input needs none)."""
        if hasattr(self.layer, "backward_params"):
            self.layer.backward_params(dy)
        else:
            self.backward(dy)


class _EvalBatchNorm(_Layer):
    """batchnorm in evaluation mode with its backward: y = gamma * (x - running_mean) / sqrt(running_var + eps)
    + beta. With the running statistics fixed it is an affine map per channel, so the loss is a function of
    the weights alone; the layer's own backward is that of training mode (batch statistics)."""

    def forward(self, x, chunk):
        L = self.layer
        shape = (1, -1) + (1,) * (x.ndim - 2)  # per channel of (N, C, H, W), per feature of (N, D)
        self._inv = 1 / np.sqrt(L.buffers["running_var"] + L.eps)
        self._xhat = (x - L.buffers["running_mean"].reshape(shape)) * self._inv.reshape(shape)
        return L.params["gamma"].reshape(shape) * self._xhat + L.params["beta"].reshape(shape)

    def backward(self, dy):
        L = self.layer
        axes = (0,) + tuple(range(2, dy.ndim))
        shape = (1, -1) + (1,) * (dy.ndim - 2)
        L.grads["gamma"] = (dy * self._xhat).sum(axis=axes)
        L.grads["beta"] = dy.sum(axis=axes)
        return dy * (L.params["gamma"] * self._inv).reshape(shape)


class _FrozenSlope(_Layer):
    """relu or leaky_relu with each unit's slope (on or off) kept from the reference point: y = x * slope."""

    def __init__(self, layer):
        super().__init__(layer)
        self.slopes = {}

    def forward(self, x, chunk):
        if chunk not in self.slopes:
            self.slopes[chunk] = self.layer.df(x, None)
        self._slope = self.slopes[chunk]
        return x * self._slope

    def backward(self, dy):
        return dy * self._slope


class _FrozenMaxPool(_Layer):
    """max pooling with the element each window takes (its first maximum) kept from the reference point:
    a gather of those elements forward, their scatter-add backward, on the channels-last padded input."""

    def __init__(self, layer: MaxPool2D):
        super().__init__(layer)
        self.winners = {}

    def _winners(self, xp: np.ndarray) -> np.ndarray:
        """The flat index into xp (N, Hp, Wp, C) of each window's first maximum (row-major), (N, OH, OW, C)."""
        (KH, KW), (sh, sw), (_, OH, OW) = self.layer.size, self.layer.stride, self.layer.out_shape
        N, Hp, Wp, C = xp.shape
        n, oh, ow, c = np.ogrid[:N, :OH, :OW, :C]
        best = index = None
        for i in range(KH):
            for j in range(KW):
                rows, cols = oh * sh + i, ow * sw + j
                value, flat = xp[n, rows, cols, c], ((n * Hp + rows) * Wp + cols) * C + c
                if best is None:
                    best, index = value, np.broadcast_to(flat, value.shape)
                else:
                    later = value > best  # strictly: a tie keeps the earlier offset, as the layer does
                    best, index = np.where(later, value, best), np.where(later, flat, index)
        return index

    def forward(self, x, chunk):
        pads = self.layer.pads
        if chunk not in self.winners:
            self.winners[chunk] = self._winners(pad_nhwc(nhwc(x), pads, -np.inf))
        xp = pad_nhwc(nhwc(x), pads)
        self._index, self._padded = self.winners[chunk], xp.shape
        return nchw(xp.reshape(-1)[self._index])

    def backward(self, dy):
        dxp = np.bincount(self._index.ravel(), weights=nhwc(dy).ravel(), minlength=math.prod(self._padded))
        (t, _), (l, _) = self.layer.pads
        H, W = self.layer.in_shape[1:]
        return nchw(dxp.reshape(self._padded)[:, t : t + H, l : l + W])


def _step(layer) -> _Layer:
    if isinstance(layer, BatchNorm):
        return _EvalBatchNorm(layer)
    if isinstance(layer, (ReLU, LeakyReLU)):
        return _FrozenSlope(layer)
    if isinstance(layer, MaxPool2D):
        return _FrozenMaxPool(layer)
    return _Layer(layer)


class Objective:
    """L(w) = mean data loss over a fixed batch + (l2 / 2) sum ||W||^2, w: every parameter, flat, float64.

    Evaluation mode: dropout is the identity and batchnorm uses its running statistics. The model is
    copied and cast to float64, so the network being trained (and its dropout generator) is untouched.
    x: the preprocessed float batch (N, ...), y: its labels (N,). `w` is the point, with `value` and `grad`.

    Piecewise-linear layers (relu, leaky_relu, maxpool2d) keep the pattern they have at w: which
    units are on, which element of each window is the maximum. The loss is then smooth around w
    and its Hessian is the network's, which exists wherever no unit sits exactly on a kink (almost
    everywhere). Left free, a unit whose input crosses a kink within the difference step would switch
    gradients and make that Hessian-vector product wrong by orders of magnitude (spp's max mode is
    left free).
    """

    def __init__(self, model, loss, x: np.ndarray, y: np.ndarray, penalty=None, chunk_size: int = CHUNK_SIZE):
        self.model = copy.deepcopy(model).astype(np.float64)
        self.loss, self.penalty, self.chunk_size = loss, penalty, chunk_size
        self.x, self.y = np.asarray(x, dtype=np.float64), np.asarray(y)
        params = self.model.named_params()
        self.names = list(params)
        self.slots = []  # (layer, key, start, stop, shape) of each parameter in w
        start = 0
        for name in self.names:
            _, index, key = name.split(".")
            size = params[name].size
            self.slots.append((self.model.layers[int(index)], key, start, start + size, params[name].shape))
            start += size
        self.w = np.concatenate([params[name].ravel() for name in self.names])
        self.steps = [_step(layer) for layer in self.model.layers if not isinstance(layer, Dropout)]
        self.hvps = 0  # Hessian-vector products so far (two gradient evaluations each)
        self.value, self.grad = self.value_and_grad(self.w)  # also records the piecewise-linear patterns

    @property
    def n(self) -> int:
        return self.w.size

    def _load(self, w: np.ndarray) -> None:
        w = np.array(w, dtype=np.float64)  # a private copy: the layers hold views of it
        for layer, key, start, stop, shape in self.slots:
            layer.params[key] = w[start:stop].reshape(shape)

    def value_and_grad(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """(L(w), dL/dw) over the batch, chunk by chunk with gradients weighted by chunk length."""
        self._load(w)
        N = len(self.y)
        total, grad = 0.0, np.zeros(self.n)
        for chunk, start in enumerate(range(0, N, self.chunk_size)):
            x, y = self.x[start : start + self.chunk_size], self.y[start : start + self.chunk_size]
            for step in self.steps:
                x = step.forward(x, chunk)
            weight = len(y) / N
            total += self.loss.forward(x, y) * weight
            dy = self.loss.backward()
            for step in reversed(self.steps[1:]):
                dy = step.backward(dy)
            self.steps[0].backward_params(dy)
            grads = self.model.named_grads()
            grad += weight * np.concatenate([grads[name].ravel() for name in self.names])
        self.data_loss = total
        if self.penalty:
            views = {name: grad[s:e].reshape(shape) for name, (_, _, s, e, shape) in zip(self.names, self.slots)}
            params = {name: w[s:e].reshape(shape) for name, (_, _, s, e, shape) in zip(self.names, self.slots)}
            total += self.penalty.apply(params, views)  # adds l2 * W to grad through the views
        return total, grad

    def hvp(self, v: np.ndarray) -> np.ndarray:
        """H v at w, by central differences of the gradient: (g(w + h v) - g(w - h v)) / (2 h).

        h = eps^(1/3) * (1 + ||w||) / ||v||, eps float64's machine epsilon (2.2e-16): the step h ||v||
        is a relative change of about 6e-6 of the weights. The truncation error is O(h^2) (zero for a
        quadratic loss) and rounding in the gradient contributes O(eps / h); eps^(1/3) balances the
        two, leaving ~1e-10 of the product's size. With the piecewise-linear patterns fixed the loss
        is smooth along the step, which is what makes a step this large safe.
        """
        norm = float(np.linalg.norm(v))
        if norm == 0:
            return np.zeros(self.n)
        self.hvps += 1
        h = np.finfo(np.float64).eps ** (1 / 3) * (1 + float(np.linalg.norm(self.w))) / norm
        _, plus = self.value_and_grad(self.w + h * v)
        _, minus = self.value_and_grad(self.w - h * v)
        return (plus - minus) / (2 * h)
