"""Sequential: a list of layers with stable parameter names `layers.<i>.<param>`."""

from __future__ import annotations

import numpy as np

from .flat import FlatDict, Layout
from .layers.base import Layer
from .optim.optimizers import decays

EVAL_MIN_ROWS = 128  # rows per thread below which an evaluation forward stays on one thread


class Sequential:
    """Runs layers in order; backward runs them in reverse and leaves grads on each layer."""

    def __init__(self, layers: list[Layer]):
        self.layers = list(layers)
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self._swapped: set[int] = set()  # ReLUs the last training forward ran after their max pool
        self._pooled: dict[int, int] = {}  # max pool -> the batchnorm whose scale and shift ran after it
        self._packed: tuple[FlatDict, FlatDict] | None = None  # parameter and gradient views (pack)

    def build(self, in_shape, rng: np.random.Generator) -> tuple[int, ...]:
        """Create every parameter; ValueError naming the layer index, type and shapes on a misfit."""
        self.in_shape = shape = tuple(int(s) for s in in_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.build(shape, rng))
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer.registry_name}) with input shape {shape}: {exc}") from None
        self.out_shape = shape
        self.pack()
        return shape

    def pack(self) -> None:
        """Move every parameter into one contiguous buffer, weights (decayed) first, and keep a
        gradient buffer of the same layout (flat.py: the optimizer, the L2 penalty and the norm
        then make one pass over all of them). Nothing is packed when the dtypes differ."""
        params = self._named("params")
        self._packed = None
        if not params or len({p.dtype for p in params.values()}) != 1:
            return
        order = sorted(params, key=lambda name: not decays(name))  # stable: layer order within each group
        layout = Layout({name: params[name].shape for name in order})
        dtype = next(iter(params.values())).dtype
        views = layout.views(np.empty(layout.size, dtype=dtype))
        for name, view in views.items():
            view[...] = params[name]
        for i, layer in enumerate(self.layers):
            for key in layer.params:
                layer.params[key] = views[f"layers.{i}.{key}"]
        self._packed = (views, layout.views(np.zeros(layout.size, dtype=dtype)))

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """The network's output for a batch x (training: caches for backward).

        An evaluation batch of 2 * EVAL_MIN_ROWS rows or more is split over the process's BLAS
        threads: each Python thread runs its rows with one BLAS thread (NumPy releases the GIL in
        every pass), so the copies, pooling and activations between the products use the cores
        too, not only the GEMMs: 24-40% faster at batch 1000 on 2 cores for the five benchmark
        networks. The rows' values are the same either way.
        """
        if not training:
            from .threads import blas_threads, set_blas_threads, thread_pool

            own = blas_threads() or 1
            parts = min(own, len(x) // EVAL_MIN_ROWS)
            if parts > 1:
                bounds = [k * len(x) // parts for k in range(parts + 1)]
                set_blas_threads(1)
                try:
                    outs = thread_pool("eval", parts).map(lambda k: self._forward(x[bounds[k]:bounds[k + 1]], False),
                                                          range(parts))
                    return np.concatenate(list(outs))
                finally:
                    set_blas_threads(own)
        return self._forward(x, training)

    def _forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """In evaluation, a batchnorm right after a layer with forward_scaled (conv2d, dense) is folded into
        that layer's weights, and an activation right after a layer whose output is a new array
        (`new_output`) is applied in place: each saves passes over the activations (equal up to rounding).
        In training, a layer that `overwrites` may work in place on a new array it is given (the same values)."""
        layers, i = self.layers, 0
        owned = False  # x is an array nobody else holds (never the caller's input)
        if training:
            self._swapped, self._pooled = set(), {}
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            i += 1
            if training:
                run = self._max_pool_run(i - 1, x)
                if run:
                    # batchnorm, [ReLU,] max pool: the statistics from the whole input, then the pool,
                    # then the scale and shift and the ReLU on a quarter of the values (BatchNorm.forward_pooled)
                    x = layer.forward_pooled(x, run[-1], overwrite=owned and getattr(layer, "overwrites", False))
                    if len(run) == 2:  # on the batchnorm's new output
                        x = self._maybe_in_place(run[0], "forward", True, x, training)
                    owned = True
                    i += len(run)
                    self._pooled[i - 1] = i - 1 - len(run)
                    continue
                if i > 1 and getattr(layer, "commutes_with_max", False) and getattr(following, "takes_max", False):
                    # relu then max pool == max pool then relu, to the bit, gradient included (a window's
                    # first maximum is the same where it is positive; where it is not, its gradient is 0),
                    # and the ReLU then touches a quarter of the values, forward and backward
                    x = layer.forward(following.forward(x, training), training)
                    self._swapped.add(i - 1)
                    i += 1
                else:
                    x = self._maybe_in_place(layer, "forward", owned, x, training)
                owned = getattr(layer, "new_output", False)
                continue
            if hasattr(layer, "forward_scaled") and hasattr(following, "inference_affine"):
                x = layer.forward_scaled(x, *following.inference_affine(x.dtype))
                i += 1
            else:
                x = layer.forward(x, training)
            if getattr(layer, "new_output", False) and i < len(layers) and hasattr(layers[i], "apply_inplace"):
                layers[i].apply_inplace(x)  # x was made just above: nothing else holds it
                i += 1
        return x

    def _max_pool_run(self, k: int, x: np.ndarray) -> tuple | None:
        """(max pool,) or (activation, max pool) when layer k is a batchnorm that may run its scale and
        shift after that pool (BatchNorm.pools_first), the activation commuting with max; else None."""
        layers = self.layers
        if k == 0 or not hasattr(layers[k], "forward_pooled") or not layers[k].pools_first(x):
            return None
        run = layers[k + 1 : k + 3]
        if run and getattr(run[0], "takes_max", False):
            return (run[0],)
        if len(run) == 2 and getattr(run[0], "commutes_with_max", False) and getattr(run[1], "takes_max", False):
            return tuple(run)
        return None

    @staticmethod
    def _maybe_in_place(layer, method: str, owned: bool, *args):
        """layer.forward or layer.backward, with overwrite=True when the array is owned and the layer `overwrites`."""
        if owned and getattr(layer, "overwrites", False):
            return getattr(layer, method)(*args, overwrite=True)
        return getattr(layer, method)(*args)

    def backward(self, dy: np.ndarray, input_grad: bool = False) -> np.ndarray | None:
        """Gradients of every layer; d loss / d input too only when input_grad (training never needs it)."""
        i = len(self.layers) - 1
        owned = False  # dy is an array nobody else holds (not the loss's)
        # a first layer that takes a pooled batchnorm's gradient unassembled (maxpool_kernels.PooledGrad) gets it
        # so: mnist_bn_dropout's backward (32 images, one thread) 0.2-1.8 ms faster of 14-19 on a busy host,
        # 0.0-0.4 of 9-12 on a calm one; without a batchnorm between (small's conv-relu-pool) the parts saved
        # nothing over routing into dx, so the pool makes dx there
        parts = not input_grad and getattr(self.layers[0], "takes_pooled_grad", False)
        while i >= 1:
            layer = self.layers[i]
            if i in self._pooled:  # a max pool, [a ReLU,] and the batchnorm that ran its scale and shift after them
                k = self._pooled[i]
                if i - k == 2:
                    dy = self._maybe_in_place(self.layers[k + 1], "backward", owned, dy)
                    owned = getattr(self.layers[k + 1], "new_grad", False) or owned
                layer = self.layers[k]
                dy = layer.backward_pooled(dy, self.layers[i], overwrite=owned and getattr(layer, "overwrites", False),
                                           parts=parts and k == 1)
                i = k - 1
            elif i - 1 in self._swapped:  # a ReLU that ran after the max pool at i: its backward comes first
                dy = layer.backward(self.layers[i - 1].backward(dy))
                i -= 2
            else:
                dy = self._maybe_in_place(layer, "backward", owned, dy)
                i -= 1
            owned = getattr(layer, "new_grad", False)
        first = self.layers[0]
        if not input_grad and hasattr(first, "backward_params"):
            first.backward_params(dy)
            return None
        return first.backward(dy)

    def _named(self, attr: str) -> dict[str, np.ndarray]:
        return {f"layers.{i}.{key}": value
                for i, layer in enumerate(self.layers) for key, value in getattr(layer, attr).items()}

    def named_params(self) -> dict[str, np.ndarray]:
        """{stable name: parameter}; a FlatDict (flat.py) while every parameter is still its packed view."""
        params = self._named("params")
        if self._packed is not None:
            views = self._packed[0]
            if len(params) == len(views) and all(views.get(k) is v for k, v in params.items()):
                return views
        return params

    def named_grads(self) -> dict[str, np.ndarray]:
        return self._named("grads")

    def packed_grads(self, grads: dict[str, np.ndarray], *more: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """grads plus any `more` (named alike: other ranks' gradients), summed in that order into the
        gradient buffer and returned as its FlatDict, the layers' grads rebound to those views (so an
        in-place change, such as the L2 term, is theirs too). While the parameters are not packed,
        `more` is added to grads in place and grads is returned."""
        views = self._packed[1] if self._packed is not None else None
        if views is None or not isinstance(self.named_params(), FlatDict) or grads.keys() != views.keys():
            for other in more:
                for name, g in grads.items():
                    g += other[name]
            return grads
        for name, view in views.items():
            g = grads[name]
            if more:
                np.add(g, more[0][name], out=view)
                for other in more[1:]:
                    view += other[name]
            elif g is not view:
                np.copyto(view, g)
        for i, layer in enumerate(self.layers):
            for key in layer.params:  # grads share the parameters' keys
                layer.grads[key] = views[f"layers.{i}.{key}"]
        return views

    def named_buffers(self) -> dict[str, np.ndarray]:
        return self._named("buffers")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by stable name (what a checkpoint stores)."""
        return {**self.named_params(), **self.named_buffers()}

    def load_state_dict(self, state: dict[str, np.ndarray], source: str = "checkpoint") -> None:
        """Copy arrays in by name; ValueError naming any missing, extra or misshapen entry."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(f"{source} does not fit this network: missing {missing or 'nothing'}, "
                             f"unexpected {extra or 'nothing'}")
        for name, target in own.items():
            if state[name].shape != target.shape:
                raise ValueError(f"{source}: {name} has shape {state[name].shape}, the network needs {target.shape}")
        for i, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for key in store:
                    # into the arrays themselves: packed parameters stay packed
                    np.copyto(store[key], state[f"layers.{i}.{key}"], casting="unsafe")

    def astype(self, dtype) -> "Sequential":
        """Cast every parameter and buffer in place (float64 for gradient checks)."""
        for layer in self.layers:
            for store in (layer.params, layer.buffers):
                for key in store:
                    store[key] = store[key].astype(dtype)
        self.pack()
        return self

    def summary_rows(self) -> list[dict]:
        """One row per layer: name, type, output_shape, params, macs (per sample)."""
        return [{"name": f"layers.{i}", "type": layer.registry_name, "output_shape": list(layer.out_shape),
                 "params": int(sum(p.size for p in layer.params.values())), "macs": int(layer.macs())}
                for i, layer in enumerate(self.layers)]

    def macs(self) -> int:
        """Multiply-adds of one forward pass for one sample."""
        return int(sum(layer.macs() for layer in self.layers))

    def num_params(self) -> int:
        return int(sum(p.size for p in self.named_params().values()))

