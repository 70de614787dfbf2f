"""Experiment files: defaults, YAML number parsing, overrides, and errors that name the file and key path."""

from __future__ import annotations

import pytest
import yaml

from cnntrain.build import load_experiment
from cnntrain.config import config_from_text, load_config
from cnntrain.errors import ConfigError

MINIMAL = """
model:
  layers:
    - flatten
    - dense: {units: 10}
"""


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_filled_in_and_name_comes_from_the_file(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL, "my_exp.yaml"))
    assert cfg.name == "my_exp"
    assert cfg.seed == 0 and cfg.train.epochs == 5 and cfg.train.batch_size == 64
    assert cfg.to_dict()["optimizer"] == {"name": "adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8,
                             "weight_decay": 0.0, "bias_correction": True, "lr_scaling": "none",
                             "base_batch_size": None}
    assert cfg.to_dict()["schedule"] == {"name": "constant", "interval": "epoch", "warmup_epochs": 0.0, "warmup_steps": 0,
                            "warmup_start_lr": 0.0}
    assert cfg.data.dataset == "mnist" and cfg.data.validation == 5000
    assert cfg.layer_specs == [("flatten", {}), ("dense", {"units": 10})]


def test_exponent_numbers_are_numbers_not_strings(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "optimizer: {name: sgd, lr: 1e-3}\n"))
    assert cfg.optimizer.lr == 0.001
    cfg = load_config(write(tmp_path, MINIMAL), ["optimizer.lr=5E-4", "optimizer.name=sgd"])
    assert cfg.optimizer.lr == 0.0005 and cfg.optimizer.name == "sgd"


def test_overrides_reach_nested_keys_and_layers(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["train.epochs=2", "model.layers.1.dense.units=7",
                                                 "data.preprocess=[{normalize: {mean: 0.5, std: 0.5}}]"])
    assert cfg.train.epochs == 2
    assert cfg.layer_specs[1] == ("dense", {"units": 7})
    assert cfg.data.preprocess == [{"normalize": {"mean": 0.5, "std": 0.5}}]


def test_resolved_config_round_trips_through_text(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["optimizer.lr=0.01"])
    again = config_from_text(cfg.to_yaml(), "saved")
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(cfg.to_yaml())["optimizer"]["lr"] == 0.01


@pytest.mark.parametrize("extra,overrides,message", [
    ("optimizer: {name: adam, lrr: 0.1}\n", [], "optimizer.lrr: unknown option for optimizer 'adam' (did you mean 'lr'?)"),
    ("trian: {epochs: 1}\n", [], "trian: unknown key (did you mean 'train'?)"),
    ("train: {epochs: two}\n", [], "train.epochs: expected an integer, got 'two'"),
    ("train: {epochs: 0}\n", [], "train.epochs: must be >= 1"),
    ("optimizer: {name: adamm}\n", [], "optimizer.name: unknown optimizer 'adamm' (did you mean 'adam'?)"),
    ("optimizer: {name: adam, lr: -1}\n", [], "optimizer.lr: must be a number in (0, inf), got -1"),
    ("loss: softmax_crossentropy\n", [], "loss: unknown loss 'softmax_crossentropy' (did you mean 'softmax_cross_entropy'?)"),
    ("data: {dataset: minst}\n", [], "data.dataset: unknown dataset 'minst' (did you mean 'mnist'?)"),
    ("", ["train.batch_size=true"], "train.batch_size: expected an integer or 'full', got True"),
    ("", ["nonsense"], "--set nonsense: expected KEY.PATH=VALUE"),
    ("", ["model.layers.5.units=3"], "expected a list index below 2"),
    ("data: {validation: 1.5}\n", [], "data.validation: expected an image count >= 0 or a fraction in [0, 1)"),
    ("model: {input_shape: [1, 28], layers: [flatten]}\n", [], "model.input_shape: expected [channels, height, width]"),
    ("name: ../escape\n", [], "name: use letters, digits"),
])
def test_mistakes_name_the_file_and_key_path(tmp_path, extra, overrides, message):
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)  # the config's structure, then each component's own options
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_unknown_layer_and_layer_options(tmp_path):
    text = "model:\n  layers:\n    - flaten\n"
    with pytest.raises(ConfigError, match=r"model.layers\[0\]: unknown layer 'flaten' \(did you mean 'flatten'\?\)"):
        load_config(write(tmp_path, text))
    text = "model:\n  layers:\n    - dense: {units: 10, unit: 3}\n"
    with pytest.raises(ConfigError, match=r"exp.yaml: model.layers\[0\].dense.unit: unknown option for layer 'dense'"):
        load_experiment(write(tmp_path, text))


def test_yaml_errors_and_object_tags_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"line 2, column \d+: invalid YAML"):
        load_config(write(tmp_path, "seed: 1\nmodel: {layers: [flatten}\n"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "seed: !!python/object/apply:os.system ['echo hi']\n" + MINIMAL))


def test_l2_global_and_per_layer(tmp_path):
    text = """
model:
  l2: 0.01
  layers:
    - conv2d: {filters: 2, kernel_size: 3, l2: 0.5}
    - flatten
    - dense: {units: 10, l2: 0}
    - dense: {units: 10}
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.layer_l2 == [0.5, 0.01, 0, 0.01]
    assert cfg.layer_specs[0] == ("conv2d", {"filters": 2, "kernel_size": 3})
    import numpy as np

    from cnntrain.build import resolve

    exp = resolve(cfg)
    model = exp.network((1, 6, 6), 10)
    assert exp.penalty(model).coefs == {"layers.0.W": 0.5, "layers.3.W": 0.01}
    assert np.isfinite(exp.penalty(model).apply(model.named_params(), {k: v.copy() for k, v in model.named_params().items()}))
    with pytest.raises(ConfigError, match=r"model.layers\[0\].conv2d.l2: expected a number >= 0"):
        load_config(write(tmp_path, text.replace("l2: 0.5", "l2: -1")))


def test_select_classes_relabels_in_the_given_order():
    import numpy as np

    from cnntrain.data.splits import select_classes

    x = np.arange(6)[:, None]
    y = np.array([3, 1, 0, 1, 3, 2])
    xs, ys = select_classes(x, y, [3, 1])
    assert xs[:, 0].tolist() == [0, 1, 3, 4] and ys.tolist() == [0, 1, 1, 0]
