"""Every experiment file in configs/ is valid, and the ones on data this machine has train as documented."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.config import load_config
from cnntrain.data import datasets

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _spatial(size, kernel, stride, padding, dilation=(1, 1)) -> tuple[int, int]:
    """Output (OH, OW) of a window op: 'same' = ceil(size / stride), else
    floor((size + pad_lo + pad_hi - dilation*(k-1) - 1) / stride) + 1 per axis."""
    if padding == "same":
        return tuple(-(-n // s) for n, s in zip(size, stride))
    if padding == "valid":
        padding = 0
    sides = [_pair(p) for p in _pair(padding)]  # int, (ph, pw) or ((top, bottom), (left, right))
    return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1
                 for n, k, s, d, (lo, hi) in zip(size, kernel, stride, dilation, sides))


# Options each formula below accounts for; `init` and the reserved `l2` change no shape or count.
KNOWN_OPTIONS = {
    "conv2d": {"filters", "kernel_size", "stride", "padding", "dilation", "use_bias", "init", "l2"},
    "dense": {"units", "use_bias", "init", "l2"},
    "batchnorm": {"momentum", "eps"},
    "maxpool2d": {"size", "stride", "padding"},
    "avgpool2d": {"size", "stride", "padding"},
    "global_avgpool": set(),
    "spp": {"levels", "mode"},
    "flatten": set(),
    "dropout": {"rate"},
    **{name: set() for name in ("relu", "sigmoid", "tanh", "softmax")},
    "leaky_relu": {"alpha"},
}


def expected_rows(doc: dict, where: str) -> tuple[list[int], list[dict]]:
    """Input shape and, per layer, {output_shape, params[, macs]} from the YAML alone, by the textbook formulas."""
    model, data = doc["model"], doc.get("data", {})
    if model.get("input_shape") is not None:
        shape = list(model["input_shape"])
    else:  # image_folder: images are resized to image_size and converted to `channels`
        assert "channels" in data and "image_size" in data, \
            f"{where}: no model.input_shape and no data.channels/image_size"
        shape = [data["channels"], *_pair(data["image_size"])]
    in_shape, rows = list(shape), []
    for i, entry in enumerate(model["layers"]):
        name, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        opts = opts or {}
        if name not in KNOWN_OPTIONS or set(opts) - KNOWN_OPTIONS[name]:
            pytest.fail(f"{where}: layers[{i}] {name} {sorted(opts)}: expected_rows in test_configs.py has no "
                        "formula for this layer or option; add one")
        row = {"params": 0}
        if name == "conv2d":
            C, H, W = shape
            F, (KH, KW) = opts["filters"], _pair(opts.get("kernel_size", 3))
            OH, OW = _spatial((H, W), (KH, KW), _pair(opts.get("stride", 1)), opts.get("padding", "valid"),
                              _pair(opts.get("dilation", 1)))
            shape = [F, OH, OW]
            row["params"] = F * C * KH * KW + (F if opts.get("use_bias", True) else 0)
            row["macs"] = F * OH * OW * C * KH * KW
        elif name == "dense":
            (D,), units = shape, opts["units"]
            shape = [units]
            row["params"] = D * units + (units if opts.get("use_bias", True) else 0)
            row["macs"] = D * units
        elif name == "batchnorm":
            row["params"] = 2 * shape[0]  # gamma and beta per channel or feature
        elif name in ("maxpool2d", "avgpool2d"):
            C, H, W = shape
            size = _pair(opts.get("size", 2))
            stride = _pair(opts["stride"]) if opts.get("stride") is not None else size
            shape = [C, *_spatial((H, W), size, stride, opts.get("padding", "valid"))]
        elif name == "global_avgpool":
            shape = [shape[0]]
        elif name == "spp":
            shape = [shape[0] * sum(n * n for n in opts.get("levels", (1, 2, 4)))]
        elif name == "flatten":
            shape = [math.prod(shape)]
        row["output_shape"] = list(shape)
        rows.append(row)
    return in_shape, rows


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_summarizes(path, monkeypatch):
    """`cnntrain summary` agrees layer by layer with shapes, parameter counts and MACs computed here from the YAML."""
    monkeypatch.chdir(REPO)  # image_folder_example's path is relative to the repository
    assert load_config(path).name == path.stem, "a config's name is its file name, so runs are easy to find"
    result = invoke("summary", path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    in_shape, expected = expected_rows(yaml.safe_load(path.read_text()), path.name)
    assert summary["input_shape"] == in_shape, path.name
    assert len(summary["layers"]) == len(expected), (path.name, [row["type"] for row in summary["layers"]])
    for i, (got, want) in enumerate(zip(summary["layers"], expected)):
        got = {key: got[key] for key in want}  # macs only for conv2d and dense
        assert got == want, f"{path.name} layers[{i}] ({summary['layers'][i]['type']}): got {got}, formulas give {want}"
    assert summary["totals"]["params"] == sum(row["params"] for row in expected), path.name
    assert summary["totals"]["output_shape"] == expected[-1]["output_shape"], path.name


@pytest.mark.slow
def test_image_folder_example_learns_the_shapes(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = invoke("run", "configs/image_folder_example.yaml", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (96, 24, 30)
    assert summary["test_accuracy"] >= 0.8, summary["test_accuracy"]


def test_fashion_mnist_from_cnntrain_data(tmp_path, monkeypatch):
    """Real Fashion-MNIST from $CNNTRAIN_DATA/fashion-mnist (../shared/datasets, as in CI), two short epochs."""
    folder = Path(os.environ.get("CNNTRAIN_DATA", "").split(os.pathsep)[0]) / "fashion-mnist"
    assert (folder / "train-images-idx3-ubyte.gz").is_file(), \
        f"{folder} is missing: point CNNTRAIN_DATA at ../shared/datasets (as .ci/run does)"
    # Only the CNNTRAIN_DATA copy may be found: no cache, no system folder.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIR", tmp_path / "system")
    result = invoke("run", REPO / "configs" / "fashion_mnist.yaml", "--runs-dir", tmp_path / "runs",
                    "--set", "data.download=false", "--set", "data.limit_train=3000", "--set", "data.limit_val=500",
                    "--set", "data.limit_test=1000", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"][0] == "T-shirt/top" and summary["test_images"] == 1000
    assert summary["test_accuracy"] > 0.7, summary["test_accuracy"]
    mean = summary["preprocess"]["steps"][0]["mean"][0]
    assert 0.27 < mean < 0.30, f"Fashion-MNIST's pixel mean is about 0.286, fitted {mean}"
