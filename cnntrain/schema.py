"""YAML into typed dataclasses: the safe loader, type checks with key paths, `--set` overrides.

Generic machinery; config.py declares cnntrain's own sections with it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError
from .registry import did_you_mean


class _Loader(yaml.SafeLoader):
    """safe_load, but `1e-3` is a float as in YAML 1.2 (PyYAML's YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python data with the safe loader; ConfigError naming `source` on any error."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {where}invalid YAML: {problem}") from None


def step_entry(entry, where: str, kind: str) -> tuple[str, dict]:
    """`relu` or `{conv2d: {filters: 8}}` -> ("conv2d", {"filters": 8}); kind names the entry: "a layer"."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        ((name, kwargs),) = entry.items()
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of options, got {kwargs!r}")
        return name, kwargs
    raise ConfigError(f"{where}: expected {kind} name or {{name: {{options}}}}, got {entry!r}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(origin or tp, str(tp))


def _check(value, tp, path: str):
    """value if it matches the annotation tp (an int is a valid float); ConfigError otherwise."""
    if tp is Any:
        return value
    if typing.get_origin(tp) is Union:
        for option in typing.get_args(tp):
            try:
                return _check(value, option, path)
            except ConfigError:
                pass
    elif typing.get_origin(tp) is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def build_dataclass(cls, data, path: str):
    """Recursively turn a mapping into dataclass `cls`, checking keys and types.

    A section class with a `from_data(value, path)` classmethod parses its own value (named
    sections such as `optimizer: adam`); fields with metadata {"internal": True} are not keys.
    """
    if hasattr(cls, "from_data"):
        return cls.from_data(data, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{path + '.' if path else ''}{key}: unknown key{did_you_mean(key, fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        tp = hints[name]
        if name not in data:
            if hasattr(tp, "from_data"):  # a named section left out: its default component, options filled in
                kwargs[name] = tp.from_data(None, sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{sub}: required key is missing")
            continue
        options = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is Union else [tp]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            optional = options[0] is not tp
            if data[name] is None and optional:
                kwargs[name] = None
            else:
                kwargs[name] = build_dataclass(options[0], _empty(options[0]) if data[name] is None else data[name], sub)
        else:
            kwargs[name] = _check(data[name], tp, sub)
    return cls(**kwargs)


def _empty(cls):
    """What a section written as a bare key (`early_stopping:`) stands for."""
    return None if hasattr(cls, "from_data") else {}


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML) to the raw config mapping in place."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment}: expected KEY.PATH=VALUE")
    value = parse_yaml(text, f"--set {assignment}")
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {assignment}: {where}: expected a list index below {len(node)}")
            part = int(part)
            if isinstance(node[part], str) and not last:
                node[part] = {node[part]: {}}
        elif isinstance(node, dict):
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise ConfigError(f"--set {assignment}: {'.'.join(parts[:i])} is not a mapping")
        if last:
            node[part] = value
        else:
            node = node[part]
