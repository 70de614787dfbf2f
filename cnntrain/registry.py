"""Name -> class registries from which every configurable object is built."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any, Callable

from .errors import ConfigError


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def accepted_kwargs(obj: Callable) -> list[str] | None:
    """The keyword names `obj` accepts, or None when it takes **kwargs."""
    params = inspect.signature(obj).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def required_kwargs(obj: Callable) -> list[str]:
    """The parameters of `obj` that have no default, in signature order (honours a class's __signature__)."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: let the call itself decide
        return []
    return [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


# Every module that registers something; imported on the first lookup, so a registry is
# complete whatever was imported first, and `cnntrain --help` need not import NumPy.
COMPONENT_MODULES = ("cnntrain.init", "cnntrain.layers", "cnntrain.losses", "cnntrain.optim",
                     "cnntrain.data.datasets", "cnntrain.data.cifar", "cnntrain.data.folder",
                     "cnntrain.data.transforms", "cnntrain.data.augment")


def load_components() -> None:
    for module in COMPONENT_MODULES:
        importlib.import_module(module)


def join_path(where: str, message: str, keys) -> str:
    """'optimizer' + 'lr: must be > 0' -> 'optimizer.lr: must be > 0' when lr is one of keys."""
    if not where:
        return message
    head = re.match(r"(\w+)(\[\d+\])?: ", message)
    sep = "." if head and head.group(1) in keys else ": "
    return f"{where}{sep}{message}"


class Registry:
    """Maps snake_case names to classes (or factory functions) of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable] = {}

    def register(self, name: str):
        def add(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            obj.registry_name = name
            return obj

        return add

    def names(self) -> list[str]:
        load_components()
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        load_components()
        return name in self._entries

    def get(self, name: str, where: str = "") -> Callable:
        load_components()
        if name not in self._entries:
            at = f"{where}: " if where else ""
            raise ConfigError(
                f"{at}unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"choose one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def create(self, name: str, kwargs: dict[str, Any] | None = None, where: str = "") -> Any:
        """Build `name` from kwargs; unknown keys and bad values become ConfigErrors at `where`."""
        cls = self.get(name, where)
        kwargs = dict(kwargs or {})
        at = f"{where}." if where else ""
        allowed = accepted_kwargs(cls)
        if allowed is not None:
            for key in kwargs:
                if key not in allowed:
                    raise ConfigError(
                        f"{at}{key}: unknown option for {self.kind} '{name}'"
                        f"{did_you_mean(key, allowed)}; options: {', '.join(allowed) or 'none'}"
                    )
        # Checked here, not left to the call: Python's "missing 1 required positional argument" names no key path.
        missing = [key for key in required_kwargs(cls) if key not in kwargs]
        if missing:
            also = f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""
            raise ConfigError(f"{at}{missing[0]}: required{also}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(join_path(where, str(exc), allowed or [])) from None


LAYERS = Registry("layer")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")
DATASETS = Registry("dataset")
INITS = Registry("initializer")
PREPROCESS = Registry("preprocessing step")
AUGMENTATIONS = Registry("augmentation")
