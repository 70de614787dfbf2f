"""Parameters and gradients as views into one contiguous buffer each, so per-step passes are few.

A step's optimizer update, L2 penalty and gradient norm are elementwise or sums over every
parameter. Run per parameter, each costs a dozen NumPy calls per array, and for the small nets
of a course (lenet5: 10 arrays, 62k values) those calls, not the arithmetic, are the time:
Adam took 140-200 us per step per array set against 70 us over one flat buffer. So a built
Sequential keeps its parameters as views into one buffer (Sequential.pack), weights first, and
hands out FlatDicts: plain {name: array} dicts that also know their buffer. The values are the
same bit for bit either way (every rule is elementwise); only sums (the penalty, the norm) are
added in another order.

Anything may still rebind a parameter (load a plain array into layer.params): the dict is then
no longer `intact()` and every consumer takes its per-parameter path.
"""

from __future__ import annotations

import numpy as np


class Layout:
    """Where each named array lies in a flat buffer: name -> (start, stop), in buffer order."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = dict(shapes)
        self.spans, start = {}, 0
        for name, shape in self.shapes.items():
            stop = start + int(np.prod(shape, dtype=np.int64))
            self.spans[name] = (start, stop)
            start = stop
        self.size = start

    def views(self, data: np.ndarray) -> "FlatDict":
        return FlatDict({name: data[a:b].reshape(self.shapes[name]) for name, (a, b) in self.spans.items()},
                        data, self)

    def runs(self, value) -> list[tuple[int, int, object]]:
        """(start, stop, v): maximal spans of adjacent arrays with equal value(name) = v, in buffer order."""
        out = []
        for name, (a, b) in self.spans.items():
            v = value(name)
            if out and out[-1][2] == v and out[-1][1] == a:
                out[-1] = (out[-1][0], b, v)
            else:
                out.append((a, b, v))
        return out


class FlatDict(dict):
    """{name: array} whose arrays are views into `data` laid out by `layout` (as given out)."""

    def __init__(self, items: dict, data: np.ndarray, layout: Layout):
        super().__init__(items)
        self.data, self.layout = data, layout
        self._given = dict(items)

    def intact(self) -> bool:
        """Whether every entry is still the view it was given (nothing rebound, added or removed)."""
        given = self._given
        return len(self) == len(given) and all(self.get(k) is v for k, v in given.items())


def flat(d) -> FlatDict | None:
    """d when it is an intact FlatDict, else None: callers then take their per-array path."""
    return d if isinstance(d, FlatDict) and d.intact() else None


def flat_pair(params, grads) -> tuple[FlatDict, FlatDict] | None:
    """(params, grads) when both are intact FlatDicts over one layout, else None."""
    p, g = flat(params), flat(grads)
    return (p, g) if p is not None and g is not None and p.layout is g.layout else None
