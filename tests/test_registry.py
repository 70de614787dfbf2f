"""Registry.create: a missing required option is a ConfigError at its key path, in every registry."""

from __future__ import annotations

import inspect

import pytest
from click.testing import CliRunner

from cnntrain import registry
from cnntrain.cli import cli
from cnntrain.errors import ConfigError
from cnntrain.registry import LAYERS, Registry

REGISTRIES = (registry.LAYERS, registry.LOSSES, registry.OPTIMIZERS, registry.SCHEDULES, registry.DATASETS,
              registry.INITS, registry.PREPROCESS, registry.AUGMENTATIONS)


def required(obj) -> list[str]:
    """Parameters without a default, read straight from the signature (the oracle for Registry.create)."""
    return [p.name for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def with_required(registries):
    return [(reg, name, required(reg.get(name))) for reg in registries for name in reg.names()
            if required(reg.get(name))]


LAYER_CASES = with_required([LAYERS])
ALL_CASES = with_required(REGISTRIES)


def test_the_cases_cover_the_layers_that_need_options():
    names = [name for _, name, _ in LAYER_CASES]
    assert "conv2d" in names and "dense" in names, names


@pytest.mark.parametrize("reg,name,keys", ALL_CASES, ids=[f"{r.kind}-{n}" for r, n, _ in ALL_CASES])
def test_each_missing_required_option_is_named_at_its_key_path(reg, name, keys):
    where = f"somewhere.{name}"
    for key in keys:
        given = {k: None for k in keys if k != key}  # every other required option present, this one absent
        with pytest.raises(ConfigError) as info:
            reg.create(name, given, where=where)
        assert str(info.value) == f"{where}.{key}: required", (reg.kind, name, str(info.value))


@pytest.mark.parametrize("reg,name,keys", ALL_CASES, ids=[f"{r.kind}-{n}" for r, n, _ in ALL_CASES])
def test_all_missing_names_the_first_and_lists_the_rest(reg, name, keys):
    with pytest.raises(ConfigError) as info:
        reg.create(name, {})
    also = f" (also missing: {', '.join(keys[1:])})" if keys[1:] else ""
    assert str(info.value) == f"{keys[0]}: required{also}"


def test_schedules_with_an_overridden_signature_require_lr():
    with pytest.raises(ConfigError, match=r"^schedule\.lr: required$"):
        registry.SCHEDULES.create("constant", {"interval": "step"}, where="schedule")
    assert registry.SCHEDULES.create("constant", {"lr": 0.5}, where="schedule")(3) == 0.5


def test_kwargs_classes_signature_overrides_and_multiple_missing_keys():
    reg = Registry("thing")

    @reg.register("open")
    class Open:
        def __init__(self, size, scale=1.0, **extra):
            self.size, self.extra = size, extra

    @reg.register("pair")
    def pair(a, *, b, c=0):
        return a, b, c

    @reg.register("declared")
    class Declared:
        def __init__(self, **options):
            self.options = options

    Declared.__signature__ = inspect.Signature([inspect.Parameter("rate", inspect.Parameter.KEYWORD_ONLY)])

    with pytest.raises(ConfigError, match=r"^x\.size: required$"):
        reg.create("open", {"anything": 1}, where="x")
    assert reg.create("open", {"size": 2, "anything": 1}).extra == {"anything": 1}, "**kwargs still accepts extras"
    with pytest.raises(ConfigError, match=r"^p\.a: required \(also missing: b\)$"):
        reg.create("pair", {}, where="p")
    with pytest.raises(ConfigError, match=r"^p\.b: required$"):
        reg.create("pair", {"a": 1}, where="p")
    assert reg.create("pair", {"a": 1, "b": 2}) == (1, 2, 0)
    with pytest.raises(ConfigError, match=r"^d\.rate: required$"):
        reg.create("declared", {}, where="d")
    assert reg.create("declared", {"rate": 3}).options == {"rate": 3}


def test_a_type_error_inside_the_constructor_is_not_called_missing():
    reg = Registry("thing")

    @reg.register("broken")
    class Broken:
        def __init__(self, size=1):
            raise TypeError("size: must be an integer")

    with pytest.raises(ConfigError, match=r"^x\.size: must be an integer$"):
        reg.create("broken", {"size": "a"}, where="x")


CONFIG = """\
data: {{dataset: mnist}}
model:
  input_shape: [1, 28, 28]
  layers:
    - {entry}
    - flatten
    - dense: {{units: 10}}
"""


@pytest.mark.parametrize("entry", ["conv2d: {kernel_size: 3}", "conv2d: {}", "conv2d"])
def test_summary_of_conv2d_without_filters_is_one_line_exit_2(tmp_path, entry):
    path = tmp_path / "net.yaml"
    path.write_text(CONFIG.format(entry=entry))
    result = CliRunner().invoke(cli, ["summary", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {path}: model.layers[0].conv2d.filters: required"], \
        result.output
    assert "Traceback" not in result.output and "__init__" not in result.output


@pytest.mark.parametrize("reg,name,keys", LAYER_CASES, ids=[n for _, n, _ in LAYER_CASES])
def test_summary_names_a_layers_missing_option(tmp_path, reg, name, keys):
    path = tmp_path / "net.yaml"
    path.write_text(CONFIG.format(entry=f"{name}: {{}}"))
    result = CliRunner().invoke(cli, ["summary", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {path}: model.layers[0].{name}.{keys[0]}: required"), line
