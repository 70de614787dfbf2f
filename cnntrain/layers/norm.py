"""Batch normalisation."""

from __future__ import annotations

import math

import numpy as np

from ..registry import LAYERS
from .base import Layer, check_shape


@LAYERS.register("batchnorm")
class BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel of (C, H, W) or per feature of (D,).

    Training: batch mean and biased variance over N (and H, W); running = (1 - momentum) * running
    + momentum * batch_stat (PyTorch's convention, running_var from the unbiased variance).
    Evaluation: the running statistics. gamma, beta, running_mean, running_var: (C,) or (D,).
    """

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum: must be a number in [0, 1], got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps: must be a number > 0, got {eps!r}")
        self.momentum, self.eps = float(momentum), float(eps)

    def build(self, in_shape, rng):
        if len(in_shape) not in (1, 3):
            raise ValueError(f"expects input (channels, height, width) or (features,), got {tuple(in_shape)}")
        C = in_shape[0]
        self.params["gamma"] = np.ones(C, dtype=np.float32)
        self.params["beta"] = np.zeros(C, dtype=np.float32)
        self.buffers["running_mean"] = np.zeros(C, dtype=np.float32)
        self.buffers["running_var"] = np.ones(C, dtype=np.float32)
        self.in_shape = self.out_shape = tuple(in_shape)
        # statistics over the batch axis, and H, W for conv inputs; (C,) vectors broadcast as `bshape`
        self._axes = (0,) if len(in_shape) == 1 else (0, 2, 3)
        self._bshape = (1, C) if len(in_shape) == 1 else (1, C, 1, 1)
        return self.out_shape

    def forward(self, x, training):
        check_shape(x, self.in_shape, self)
        gamma = self.params["gamma"].reshape(self._bshape).astype(x.dtype, copy=False)
        beta = self.params["beta"].reshape(self._bshape).astype(x.dtype, copy=False)
        if not training:
            var = self.buffers["running_var"].reshape(self._bshape).astype(x.dtype, copy=False)
            scale = gamma / np.sqrt(var + x.dtype.type(self.eps))
            shift = beta - self.buffers["running_mean"].reshape(self._bshape).astype(x.dtype, copy=False) * scale
            return x * scale + shift
        m = x.size // x.shape[1]  # values per channel or feature
        if m < 2:
            raise ValueError(f"batchnorm: training needs more than one value per feature, got input shape {x.shape}")
        mean = x.mean(axis=self._axes, keepdims=True)
        xc = x - mean
        var = np.mean(xc * xc, axis=self._axes, keepdims=True)  # biased, as used for normalising
        inv_std = 1 / np.sqrt(var + x.dtype.type(self.eps))
        xhat = xc * inv_std
        self._update_running(mean.reshape(-1), var.reshape(-1) * (m / (m - 1)))
        self._cache = (xhat, inv_std, m)
        return gamma * xhat + beta

    def _update_running(self, batch_mean, batch_var_unbiased):
        # new arrays rather than in-place updates: a saved state_dict never aliases live buffers
        for key, stat in (("running_mean", batch_mean), ("running_var", batch_var_unbiased)):
            old = self.buffers[key]
            self.buffers[key] = ((1 - self.momentum) * old + self.momentum * stat).astype(old.dtype, copy=False)

    def backward(self, dy):
        """dx = gamma * inv_std / m * (m*dy - sum(dy) - xhat * sum(dy*xhat)), sums over a channel's m values."""
        xhat, inv_std, m = self._pop_cache()
        dbeta = dy.sum(axis=self._axes, keepdims=True)
        dgamma = np.sum(dy * xhat, axis=self._axes, keepdims=True)
        self.grads["gamma"], self.grads["beta"] = dgamma.reshape(-1), dbeta.reshape(-1)
        k = self.params["gamma"].reshape(self._bshape).astype(dy.dtype, copy=False) * inv_std / m
        return k * (m * dy - dbeta - xhat * dgamma)

    def macs(self):
        """Two per element: normalise, then scale and shift."""
        return 2 * math.prod(self.in_shape)

    def get_config(self):
        return {"momentum": self.momentum, "eps": self.eps}
