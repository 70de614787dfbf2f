"""Optimizers: step(params, grads, lr) updates arrays in place by their stable names.

State is {param_name: {slot: array}} plus the step count t; state_dict() flattens
it to npz keys `optim/<param_name>/<slot>` and `optim/t`.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..flat import FlatDict, flat
from ..registry import OPTIMIZERS
from ..threads import thread_pool


def check_number(value, name: str, low: float, high: float = math.inf, low_open=False, high_open=True) -> float:
    """value as a float, or ValueError "name: must be a number in [low, high), got value"."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        x = float(value)
        ok = (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        hi = "inf" if high == math.inf else f"{high:g}"
        raise ValueError(f"{name}: must be a number in {left}{low:g}, {hi}{right}, got {value!r}")
    return x


def decays(name: str) -> bool:
    """Weight decay applies to weights (`*.W`), not to biases or normalisation parameters."""
    return name.endswith(".W")


# A large parameter is updated BLOCK elements at a time: each state array's block then stays in cache
# through the rule's dozen passes, where a whole parameter's state is read from memory at every pass.
# Adam in real data parallel steps (2026-12-03, a busy host), blocks on one thread against whole
# parameters on two: keras_mnist (1.2M parameters) 13.8 -> 8.4 ms, mnist_bn_dropout 1.85 -> 1.52,
# cifar10_cnn 1.43 -> 1.33; whole steps of keras_mnist 5.7% faster. Two threads, blocks or not, were
# no faster than one in those steps; on one 5M-20M-element parameter alone they were 25% faster.
BLOCK = 1 << 16
THREADED_MIN = 1 << 22  # elements of a parameter worth updating on several threads
_slots_lock = threading.Lock()


def _offset(like: np.ndarray, base: np.ndarray) -> int | None:
    """Where `like` starts in `base`, in elements, or None when it is not a span of base's memory."""
    start = (like.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // like.itemsize
    return start if like.dtype == base.dtype and 0 <= start and start + like.size <= base.size else None


class _FlatState:
    """An optimizer's state for packed parameters (flat.py): one flat array per slot, laid out as
    the parameter buffer, and the buffer's runs of decayed and other parameters (start, stop, the
    name of the run's first parameter, which decays() answers for the whole run)."""

    def __init__(self, params: FlatDict):
        self.data, self.layout, self.slots = params.data, params.layout, {}
        names = {a: name for name, (a, _) in params.layout.spans.items()}
        self.runs = [(a, b, names[a]) for a, b, _ in params.layout.runs(decays)]


class Optimizer:
    """Base: holds lr, weight_decay (L2 added to the gradient: g + wd * p) and per-parameter slots.

    Every rule is elementwise, so a large parameter is updated in blocks of BLOCK elements, and
    with `threads` > 1 (the run's BLAS thread count, set by the thread policy) one of THREADED_MIN
    or more in pieces on that many threads (NumPy releases the GIL inside each pass): the values
    are the same bit for bit.
    """

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0):
        self.lr = check_number(lr, "lr", 0.0, low_open=True)
        self.weight_decay = check_number(weight_decay, "weight_decay", 0.0)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.t = 0
        self._scratch: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._whole: dict[str, np.ndarray] = {}  # parameters being updated in pieces
        self._flat: _FlatState | None = None  # for packed parameters, from their first step
        self.threads = 1

    def slot(self, name: str, slot: str, like: np.ndarray) -> np.ndarray:
        """The named state array of a parameter (or of the piece of it `like` is), created as zeros on first use.

        For packed parameters (flat.py) every slot is one flat array too, laid out as the parameters:
        `like` may then be any span of the buffer, and state[name][slot] are views into it.
        """
        start = _offset(like, self._flat.data) if self._flat is not None else None
        if start is not None:
            flat_slot = self._flat.slots.get(slot)
            if flat_slot is None:
                flat_slot = self._flat_slot(slot)
            return flat_slot[start : start + like.size].reshape(like.shape)
        whole = self._whole.get(name)
        slots = self.state.setdefault(name, {})
        if slot not in slots:
            with _slots_lock:
                if slot not in slots:
                    slots[slot] = np.zeros_like(like if whole is None else whole)
        if whole is None or like.size == whole.size:
            return slots[slot]
        start = _offset(like, whole)
        return slots[slot].reshape(-1)[start : start + like.size]

    def _flat_slot(self, slot: str) -> np.ndarray:
        """A flat slot, holding the per-parameter state there is (a checkpoint's, or of steps before packing)."""
        packed = self._flat
        with _slots_lock:
            if slot not in packed.slots:
                flat_slot = np.zeros_like(packed.data)
                for name, view in packed.layout.views(flat_slot).items():
                    old = self.state.get(name, {}).get(slot)
                    if old is not None:
                        view[...] = old
                    self.state.setdefault(name, {})[slot] = view
                packed.slots[slot] = flat_slot
        return packed.slots[slot]

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        """One update of every parameter, in place; t counts updates from 1.

        Packed parameters with packed gradients (flat.py) take one update per run of weights and of
        the rest: the same values, with a dozen NumPy calls per step instead of a dozen per array.
        """
        lr = self.lr if lr is None else lr
        self.t += 1
        packed = flat(params)
        if packed is not None and (self._flat is None or self._flat.data is not packed.data):
            self._flat = _FlatState(packed)  # its slots are made, from any per-parameter state, when first used
        packed_grads = flat(grads)
        if packed is not None and packed_grads is not None and packed_grads.layout is packed.layout:
            for a, b, name in self._flat.runs:
                self._update(name, packed.data[a:b], packed_grads.data[a:b], lr)
            return
        for name, p in params.items():
            self._update(name, p, grads[name], lr)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        g = self.gradient(name, p, g)
        if p.size <= BLOCK or not (p.flags.c_contiguous and g.flags.c_contiguous):
            self.update(name, p, g, lr)
            return
        threads = self.threads if p.size >= THREADED_MIN else 1
        flat_p, flat_g = p.reshape(-1), g.reshape(-1)
        step = -(-p.size // threads)  # a piece per thread

        def piece(start: int) -> None:
            self._update_blocks(name, flat_p, flat_g, start, min(start + step, p.size), lr)

        self._whole[name] = p
        try:
            if threads == 1:
                piece(0)  # here: handing it to a pool thread would only add a hand-off
            else:
                list(thread_pool("optim", threads).map(piece, range(0, p.size, step)))
        finally:
            del self._whole[name]

    def _update_blocks(self, name: str, p: np.ndarray, g: np.ndarray, start: int, stop: int, lr: float) -> None:
        """update() over p[start:stop] (flat), BLOCK elements at a time."""
        for a in range(start, stop, BLOCK):
            b = min(a + BLOCK, stop)
            self.update(name, p[a:b], g[a:b], lr)

    def gradient(self, name: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The gradient the rule sees: coupled L2, g + weight_decay * p, on weights only."""
        if self.weight_decay and decays(name):
            return g + self.weight_decay * p
        return g

    def scratch(self, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two work arrays shaped like a parameter, reused by every update of this thread (never saved)."""
        key = (like.shape, like.dtype.str, threading.get_ident())
        buffers = self._scratch.get(key)
        if buffers is None:
            buffers = self._scratch[key] = (np.empty_like(like), np.empty_like(like))
        return buffers

    def update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"optim/t": np.array(self.t, dtype=np.int64)}
        for name, slots in self.state.items():
            for slot, value in slots.items():
                out[f"optim/{name}/{slot}"] = value
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["optim/t"])
        self.state = {}
        self._flat = None  # flat slots are rebuilt from this state at the next step
        for key, value in state.items():
            if key != "optim/t" and key.startswith("optim/"):
                name, slot = key[len("optim/"):].rsplit("/", 1)
                self.state.setdefault(name, {})[slot] = np.array(value)


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """p <- p - lr * g."""

    def update(self, name, p, g, lr):
        p -= lr * g


@OPTIMIZERS.register("momentum")
class Momentum(Optimizer):
    """v <- mu*v - lr*g;  p <- p + v   (the course form; v starts at 0; mu = the `momentum` option).

    Differs from PyTorch's v <- mu*v + g; p <- p - lr*v once lr changes. self.mu is read at every
    step, so a momentum schedule may set it between steps.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.mu = check_number(momentum, "momentum", 0.0, 1.0)

    def update(self, name, p, g, lr):
        v = self.slot(name, "v", like=p)
        v *= self.mu
        v -= lr * g
        p += v


@OPTIMIZERS.register("nesterov")
class Nesterov(Momentum):
    """v_prev <- v;  v <- mu*v - lr*g;  p <- p - mu*v_prev + (1+mu)*v   (CS231n form; v starts at 0).

    The look-ahead of Nesterov momentum rewritten in terms of p itself; mu = the `momentum` option.
    """

    def update(self, name, p, g, lr):
        v = self.slot(name, "v", like=p)
        step = v * -self.mu                  # -mu * v_prev, before v changes
        v *= self.mu
        v -= lr * g
        step += (1 + self.mu) * v
        p += step


@OPTIMIZERS.register("adagrad")
class Adagrad(Optimizer):
    """cache <- cache + g^2;  p <- p - lr * g / (sqrt(cache) + eps)   (Duchi et al.; cache starts at 0)."""

    def __init__(self, lr: float = 0.01, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.eps = check_number(eps, "eps", 0.0, low_open=True)

    def update(self, name, p, g, lr):
        cache = self.slot(name, "cache", like=p)
        cache += g * g
        denom = np.sqrt(cache)
        denom += self.eps
        p -= lr * g / denom


@OPTIMIZERS.register("rmsprop")
class RMSprop(Optimizer):
    """cache <- rho*cache + (1-rho)*g^2;  p <- p - lr * g / (sqrt(cache) + eps)   (Hinton; cache starts at 0)."""

    def __init__(self, lr: float = 0.001, rho: float = 0.9, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.rho = check_number(rho, "rho", 0.0, 1.0)
        self.eps = check_number(eps, "eps", 0.0, low_open=True)

    def update(self, name, p, g, lr):
        cache = self.slot(name, "cache", like=p)
        cache *= self.rho
        cache += (1 - self.rho) * (g * g)
        denom = np.sqrt(cache)
        denom += self.eps
        p -= lr * g / denom


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  t starts at 1.

    Bias-corrected (Kingma and Ba, 2015): p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
    With bias_correction: false, p <- p - lr * m / (sqrt(v) + eps). weight_decay is coupled L2
    (g + wd*p enters m and v); adamw decouples it.
    """

    def __init__(self, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True):
        super().__init__(lr, weight_decay)
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
            raise ValueError(f"betas: must be a pair [beta1, beta2], got {betas!r}")
        self.b1 = check_number(betas[0], "betas[0]", 0.0, 1.0)
        self.b2 = check_number(betas[1], "betas[1]", 0.0, 1.0)
        self.eps = check_number(eps, "eps", 0.0, low_open=True)
        self.bias_correction = bool(bias_correction)

    def update(self, name, p, g, lr):
        m = self.slot(name, "m", like=p)
        v = self.slot(name, "v", like=p)
        a, b = self.scratch(p)  # every product goes to reused buffers: a step allocates nothing
        m *= self.b1
        m += np.multiply(g, 1 - self.b1, out=a)
        v *= self.b2
        v += np.multiply(np.multiply(g, g, out=a), 1 - self.b2, out=a)
        c1, c2 = (1 - self.b1 ** self.t, 1 - self.b2 ** self.t) if self.bias_correction else (1.0, 1.0)
        # lr * (m/c1) / (sqrt(v/c2) + eps)
        denom = np.sqrt(v, out=a)
        denom /= math.sqrt(c2)
        denom += self.eps
        p -= np.divide(np.multiply(m, lr / c1, out=b), denom, out=b)


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """p <- p - lr*weight_decay*p (weights only, p before the step), then the Adam update of g without L2.

    Decoupled weight decay (Loshchilov and Hutter, 2019), scaled by the scheduled lr as in PyTorch;
    the gradient is not changed, unlike adam's weight_decay (coupled L2, g + wd*p).
    """

    def __init__(self, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, bias_correction: bool = True):
        super().__init__(lr, betas, eps, weight_decay, bias_correction)

    def gradient(self, name, p, g):
        return g

    def update(self, name, p, g, lr):
        if self.weight_decay and decays(name):
            p *= 1 - lr * self.weight_decay  # Adam's step below does not read p, so this uses p before the step
        super().update(name, p, g, lr)
