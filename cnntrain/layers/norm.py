"""Batch normalisation."""

from __future__ import annotations

import math

import numpy as np

from ..registry import LAYERS
from .channels_last import column_sums, nchw, nhwc
from .base import Layer, check_shape


@LAYERS.register("batchnorm")
class BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel of (C, H, W) or per feature of (D,).

    Training: batch mean and biased variance over N (and H, W); running = (1 - momentum) * running
    + momentum * batch_stat (PyTorch's convention, running_var from the unbiased variance).
    Evaluation: the running statistics. gamma, beta, running_mean, running_var: (C,) or (D,).
    The plain version, node by node: reference.batchnorm_forward / batchnorm_backward / batchnorm_inference.
    With a `reducer` (data parallel training, parallel.py and share.py) each process holds some of the batch's
    rows and the per-channel sums are taken over the whole batch, as one process would take them.
    """

    new_output = True  # forward returns an array of its own (Sequential may apply the next activation in place)
    new_grad = True
    overwrites = True  # centres x, and builds dx, in place when Sequential hands over arrays nobody else holds

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum: must be a number in [0, 1], got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps: must be a number > 0, got {eps!r}")
        self.momentum, self.eps = float(momentum), float(eps)
        self.reducer = None  # set by parallel.DataParallel for the length of one step

    def build(self, in_shape, rng):
        if len(in_shape) not in (1, 3):
            raise ValueError(f"expects input (channels, height, width) or (features,), got {tuple(in_shape)}")
        C = in_shape[0]
        self.params["gamma"] = np.ones(C, dtype=np.float32)
        self.params["beta"] = np.zeros(C, dtype=np.float32)
        self.buffers["running_mean"] = np.zeros(C, dtype=np.float32)
        self.buffers["running_var"] = np.ones(C, dtype=np.float32)
        self.in_shape = self.out_shape = tuple(in_shape)
        return self.out_shape

    @staticmethod
    def _rows(x):
        """x as a (rows, T*C) matrix whose columns cycle through the C channels, and T.

        A conv input's channels-last memory gives (N*H, W*C) with no copy: long rows keep NumPy's
        broadcasting fast (rows of only C values would each pay a ufunc's per-row overhead), and
        per-channel sums are a matrix-vector product folded T times.
        """
        if x.ndim == 2:
            return x, 1
        N, C, H, W = x.shape
        return nhwc(x).reshape(N * H, W * C), W

    @staticmethod
    def _like(rows, x):
        """The inverse of _rows: rows back in x's NCHW shape (a channels-last view for conv input)."""
        if x.ndim == 2:
            return rows
        N, C, H, W = x.shape
        return nchw(rows.reshape(N, H, W, C))

    def _channel_sums(self, rows, T):
        return column_sums(rows).reshape(T, -1).sum(axis=0)

    def _product_sums(self, a, b, T):
        """Per-channel sums of a * b, without the product as a temporary (einsum's sum-of-products loop)."""
        return np.einsum("ij,ij->j", a, b).reshape(T, -1).sum(axis=0)

    def _reduce(self, sums: np.ndarray) -> np.ndarray:
        """Per-channel sums over the whole batch: these rows' own, or every process's with a reducer."""
        return sums if self.reducer is None else self.reducer.sum(sums)

    def forward(self, x, training, overwrite=False):
        check_shape(x, self.in_shape, self)
        xm, T = self._rows(x)
        if not training:
            scale, shift = self.inference_affine(x.dtype)
            y = xm * np.tile(scale, T)
            y += np.tile(shift, T)
            return self._like(y, x)
        xc, inv_std, m = self._centre(xm, T, x, overwrite)
        self._cache = (xc, inv_std, m, T, None)
        gamma, beta = self._affine(x.dtype)
        y = xc * np.tile(gamma * inv_std, T)  # gamma * xhat + beta, with xhat never stored
        y += np.tile(beta, T)
        return self._like(y, x)

    def _affine(self, dtype):
        return tuple(self.params[k].astype(dtype, copy=False) for k in ("gamma", "beta"))

    def _centre(self, xm, T, x, overwrite):
        """(x - batch mean as rows, inv_std, values per channel) for a training pass; updates the running statistics."""
        m = len(xm) * T  # values per channel or feature
        reduce = self._reduce
        if self.reducer is not None:
            m = self.reducer.total(m)
        if m < 2:
            raise ValueError(f"batchnorm: training needs more than one value per feature, got input shape {x.shape}")
        mean = reduce(self._channel_sums(xm, T)) / x.dtype.type(m)
        if overwrite:  # the same values, without a new array: 7.5% off mnist_bn_dropout's steps with backward's
            xc = xm
            xc -= np.tile(mean, T)
        else:
            xc = xm - np.tile(mean, T)
        var = reduce(self._product_sums(xc, xc, T)) / x.dtype.type(m)  # biased, as used for normalising
        inv_std = 1 / np.sqrt(var + x.dtype.type(self.eps))
        self._update_running(mean, var * (m / (m - 1)))
        return xc, inv_std, m

    def pools_first(self, x) -> bool:
        """Whether forward_pooled may stand for a max pool of forward's output: a conv-shaped
        training batch and every gamma > 0, so that each channel's scale and shift is increasing."""
        return x.ndim == 4 and bool((self.params["gamma"] > 0).all())

    def forward_pooled(self, x, pool, overwrite=False):
        """pool.forward(self.forward(x, True)) for a max pool, with the scale and shift after the pool.

        y = a * xc + b with a > 0 per channel is increasing, so the max of a window of y is a times
        the max of its xc, plus b: the same float32 values (each rounding is monotonic), from a
        quarter of the multiplies and adds for a 2x2 pool; the gradient goes to the window's first
        maximum of xc, the same entry unless rounding made y tie where xc does not. Backward
        (backward_pooled) then takes the sums over the pooled values, where the gradient is.
        """
        check_shape(x, self.in_shape, self)
        xm, T = self._rows(x)
        xc, inv_std, m = self._centre(xm, T, x, overwrite)
        pooled = pool.forward(self._like(xc, x), True)  # (N, C, OH, OW) over channels-last memory
        self._cache = (xc, inv_std, m, T, pooled)
        gamma, beta = self._affine(x.dtype)
        pm, P = self._rows(pooled)
        y = pm * np.tile(gamma * inv_std, P)
        y += np.tile(beta, P)
        return self._like(y, pooled)

    def inference_affine(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) per channel: evaluation is y = x * scale + shift, from the running statistics."""
        gamma, beta = (self.params[k].astype(dtype, copy=False) for k in ("gamma", "beta"))
        var = self.buffers["running_var"].astype(dtype, copy=False)
        scale = gamma / np.sqrt(var + np.dtype(dtype).type(self.eps))
        return scale, beta - self.buffers["running_mean"].astype(dtype, copy=False) * scale

    def _update_running(self, batch_mean, batch_var_unbiased):
        # new arrays rather than in-place updates: a saved state_dict never aliases live buffers
        for key, stat in (("running_mean", batch_mean), ("running_var", batch_var_unbiased)):
            old = self.buffers[key]
            self.buffers[key] = ((1 - self.momentum) * old + self.momentum * stat).astype(old.dtype, copy=False)

    def backward(self, dy, overwrite=False):
        """dx = gamma * inv_std / m * (m*dy - sum(dy) - xhat * sum(dy*xhat)), sums over a channel's m values.

        With xhat = xc * inv_std this is dx = A*dy + B*xc + C per channel, three passes over the batch;
        B*xc goes into the cached xc (needed no more), and with overwrite dx into dy's own memory.
        """
        xc, inv_std, m, T, _ = self._pop_cache()
        dym, _ = self._rows(dy)
        a, b, c = self._coefficients(self._channel_sums(dym, T), self._product_sums(dym, xc, T), inv_std, m, dy.dtype)
        dx = np.multiply(dym, np.tile(a, T), out=dym if overwrite else None)
        return self._like(self._subtract_stats(dx, xc, b, c, T), dy)

    def backward_pooled(self, dy, pool, overwrite=False, parts=False):
        """The backward of forward_pooled: dy is the gradient of its (pooled) output (overwritten
        with a * dy when overwrite). With parts, where the pool's windows tile its input, dx comes
        as a maxpool_kernels.PooledGrad (the routed a * dy less b * xc + c), for a first convolution's
        weight gradient, which then never needs dx itself."""
        xc, inv_std, m, T, pooled = self._pop_cache()
        (dym, P), (pm, _) = self._rows(dy), self._rows(pooled)
        a, b, c = self._coefficients(self._channel_sums(dym, P), self._product_sums(dym, pm, P), inv_std, m, dy.dtype)
        ady = self._like(np.multiply(dym, np.tile(a, P), out=dym if overwrite else None), dy)
        routed = pool.backward_parts(ady) if parts else None
        if routed is not None:
            routed.affine = (xc, b, c)
            return routed
        dx = pool.backward(ady)  # a * dy, routed to each window's maximum
        dxm, _ = self._rows(dx)
        return self._like(self._subtract_stats(dxm, xc, b, c, T), dx)

    def _coefficients(self, dbeta, product_sums, inv_std, m, dtype):
        """Set the grads from sum(dy) and sum(dy * xc) over these rows; returns the per-channel
        (A, B, C) of dx = A*dy - B*xc - C, from the sums over the whole batch."""
        dgamma = product_sums * inv_std
        self.grads["gamma"], self.grads["beta"] = dgamma, dbeta  # this process's rows' share, when data parallel
        if self.reducer is not None:
            dgamma, dbeta = np.split(self._reduce(np.concatenate([dgamma, dbeta])), 2)
        a = self.params["gamma"].astype(dtype, copy=False) * inv_std
        return a, a * inv_std * dgamma / dtype.type(m), a * dbeta / dtype.type(m)

    @staticmethod
    def _subtract_stats(dx, xc, b, c, T):
        """dx - b*xc - c as rows, in dx's memory; xc (needed no more) holds b*xc."""
        xc *= np.tile(b, T)
        dx -= xc
        dx -= np.tile(c, T)
        return dx

    def macs(self):
        """Two per element: normalise, then scale and shift."""
        return 2 * math.prod(self.in_shape)

    def get_config(self):
        return {"momentum": self.momentum, "eps": self.eps}
