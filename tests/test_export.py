"""cnntrain export: the ONNX graph passes onnx's full check and onnxruntime agrees with cnntrain's own forward pass."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.data.splits import load_splits
from cnntrain.data.transforms import Preprocess
from cnntrain.errors import ConfigError
from cnntrain.inspection import load_model
from cnntrain.layers.base import Layer
from cnntrain.model import Sequential
from cnntrain.registry import LAYERS, LOSSES, PREPROCESS
from cnntrain.runs import find_checkpoint

if os.environ.get("CNNTRAIN_SKIP_ONNX") == "1":
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
else:  # CI installs the onnx extra: its absence is a failure, not a skip
    import onnx
    import onnxruntime as ort

from cnntrain.export import onnx_export  # noqa: E402  (after the check above: it imports onnx)
from cnntrain.export.onnx_export import DEFAULT_OPSET, LAYER_EXPORTERS, build_onnx  # noqa: E402

TOL = 1e-4
SHAPES = Path(__file__).resolve().parents[1] / "examples" / "shapes"


def session(proto_or_path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # the test machine's cores are shared
    source = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_onnx(proto_or_path, x_u8):
    """(logits, probabilities) of the ONNX model on uint8 images, given as predict decodes them: / 255, NCHW."""
    return session(proto_or_path).run(["logits", "probabilities"], {"images": x_u8.astype(np.float32) / 255})


def assert_agree(onnx_out, logits, probs, what):
    ol, op = onnx_out
    assert ol.shape == logits.shape and op.shape == probs.shape, (what, ol.shape, logits.shape, op.shape, probs.shape)
    dl, dp = float(np.abs(ol - logits).max()), float(np.abs(op - probs).max())
    assert dl <= TOL and dp <= TOL, f"{what}: max |logits diff| {dl:.3g}, max |probabilities diff| {dp:.3g}"
    agree = (ol.argmax(1) == logits.argmax(1)).mean()
    assert agree == 1, f"{what}: top-1 agrees on {agree:.2%} of {len(ol)} images (logits diff {dl:.3g})"


# Random-weight networks (fast): each layer's nodes against its NumPy forward pass, odd sizes throughout.
STACKS = {
    "conv_stride_same_dilation": ((3, 11, 9), [
        {"conv2d": {"filters": 4, "kernel_size": 3, "stride": 2, "dilation": 2, "padding": "same"}},
        {"leaky_relu": {"alpha": 0.2}},
        {"conv2d": {"filters": 3, "kernel_size": 4, "padding": "same", "use_bias": False}},  # pads (1, 2)
        "batchnorm", "tanh",
        {"conv2d": {"filters": 2, "kernel_size": [2, 3], "stride": [1, 2], "padding": [[0, 1], [2, 1]]}},
        "flatten", {"dense": {"units": 5}}]),
    "pools": ((2, 13, 11), [
        {"maxpool2d": {"size": 3, "stride": 2, "padding": "same"}},
        {"avgpool2d": {"size": 3, "stride": 2, "padding": "same"}},
        {"avgpool2d": {"size": 2, "stride": 1, "padding": [[0, 1], [1, 0]]}},
        "flatten", {"dense": {"units": 4, "use_bias": False}}, "batchnorm", "sigmoid", "dropout",
        {"dense": {"units": 3}}]),
    "global_avgpool": ((3, 7, 5), [{"conv2d": {"filters": 4, "kernel_size": 1}}, "relu", "global_avgpool",
                                   {"dense": {"units": 3}}, "softmax"]),
    "spp_max": ((2, 13, 10), [{"spp": {"levels": [1, 2, 3, 4], "mode": "max"}}, {"dense": {"units": 3}}]),
    "spp_avg": ((2, 9, 14), [{"spp": {"levels": [1, 3, 5], "mode": "avg"}}, {"dense": {"units": 3}}]),
}


def random_network(in_shape, entries, rng):
    layers = [LAYERS.create(*((e, {}) if isinstance(e, str) else next(iter(e.items())))) for e in entries]
    model = Sequential(layers)
    model.build(in_shape, rng)
    for layer in model.layers:  # biases and batchnorm's state away from their initial zeros and ones
        for store in (layer.params, layer.buffers):
            for key in sorted(set(store) & {"b", "beta", "running_mean"}):
                store[key] = rng.normal(0, 0.5, store[key].shape).astype(np.float32)
        if "gamma" in layer.params:  # variances from 1e-3 to 3, so eps matters
            layer.params["gamma"] = rng.uniform(0.5, 2, layer.params["gamma"].shape).astype(np.float32)
            var = 10 ** rng.uniform(-3, 0.5, layer.buffers["running_var"].shape)
            layer.buffers["running_var"] = var.astype(np.float32)
    return model


def affine(channels, rng):
    return Preprocess.from_state({"scale": list(rng.uniform(0.002, 0.02, channels)),
                                  "offset": list(rng.normal(0, 1, channels))}, channels)


@pytest.mark.parametrize("name", sorted(STACKS))
def test_each_layer_matches_its_numpy_forward_pass(name):
    rng = np.random.default_rng(0)
    in_shape, entries = STACKS[name]
    model, preprocess = random_network(in_shape, entries, rng), affine(in_shape[0], rng)
    loss = LOSSES.create("softmax_cross_entropy")
    proto = build_onnx(model, preprocess, loss, [str(k) for k in range(model.out_shape[0])])
    x = rng.integers(0, 256, (7, *in_shape), dtype=np.uint8)
    logits = model.forward(preprocess(x), training=False)
    assert_agree(run_onnx(proto, x), logits, loss.probabilities(logits), name)


@pytest.mark.parametrize("loss_name,units", [("softmax_cross_entropy", 4), ("binary_cross_entropy", 1),
                                             ("mse", 4), ("l1", 4)])
def test_probabilities_follow_the_loss(loss_name, units):
    rng = np.random.default_rng(0)
    model = random_network((1, 5, 5), ["flatten", {"dense": {"units": units}}], rng)
    preprocess, loss = affine(1, rng), LOSSES.create(loss_name)
    classes = ["a", "b"] if units == 1 else list("abcd")
    proto = build_onnx(model, preprocess, loss, classes)
    x = rng.integers(0, 256, (6, 1, 5, 5), dtype=np.uint8)
    logits = model.forward(preprocess(x), training=False)
    assert_agree(run_onnx(proto, x), logits, loss.probabilities(logits), loss_name)


def test_every_registered_layer_and_step_has_an_exporter_and_a_case():
    missing = [n for n in LAYERS.names() if LAYERS.get(n) not in LAYER_EXPORTERS]
    assert not missing, f"layers with no ONNX exporter: {missing}"
    names = lambda entries: {e if isinstance(e, str) else next(iter(e)) for e in entries}  # noqa: E731
    fast = set().union(*(names(entries) for _, entries in STACKS.values()))
    real = set().union(*(names(yaml.safe_load(c)["model"]["layers"]) for c in CASES.values()))
    assert not set(LAYERS.names()) - fast, f"no random-weight case for {sorted(set(LAYERS.names()) - fast)}"
    assert not set(LAYERS.names()) - real - {"softmax"}, f"no trained case for {sorted(set(LAYERS.names()) - real)}"
    steps = set().union(*(names(yaml.safe_load(c)["data"].get("preprocess", [])) for c in CASES.values()))
    assert steps == set(PREPROCESS.names()), f"steps with no trained case: {set(PREPROCESS.names()) - steps}"


class Dummy(Layer):
    registry_name = "dummy"

    def forward(self, x, training):
        return x


def test_a_layer_without_an_exporter_is_an_error_naming_it():
    rng = np.random.default_rng(0)
    model = Sequential([LAYERS.create("flatten"), Dummy(), LAYERS.create("dense", {"units": 2})])
    model.build((1, 3, 3), rng)
    with pytest.raises(ConfigError, match=r"^layer 1 \(dummy\) cannot be exported to ONNX$"):
        build_onnx(model, affine(1, rng), LOSSES.create("softmax_cross_entropy"), ["a", "b"])


def test_without_onnx_the_command_says_what_to_install(tmp_path, monkeypatch):
    ckpt = tmp_path / "best.npz"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    monkeypatch.delitem(sys.modules, "cnntrain.export.onnx_export")
    result = CliRunner().invoke(cli, ["export", str(ckpt)])
    assert result.exit_code == 2, result.output
    assert result.output == "error: the ONNX export needs: pip install 'cnntrain[onnx]'\n"


def test_help_states_the_default_opset():
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0 and f"[default: {DEFAULT_OPSET}]" in result.output


# Real checkpoints (slow): tiny runs through the CLI, exported through the CLI, run on real test images.
MNIST = "{dataset: mnist, download: false, validation: 100, limit_train: 300, limit_val: 100, limit_test: 500"
CASES = {
    # 28 -> 27 (odd) -> 'same' with stride 2 and dilation 2 -> 'same' pools and a 4x4 'same' conv (pads 1, 2);
    # batchnorm after a conv and after a dense layer, momentum 0.5 so the running statistics move
    "conv_bn_pools": f"""
data: {MNIST}, preprocess: [standardize]}}
model:
  layers:
    - conv2d: {{filters: 4, kernel_size: 2}}
    - relu
    - conv2d: {{filters: 6, kernel_size: 3, stride: 2, dilation: 2, padding: same, use_bias: false}}
    - batchnorm: {{momentum: 0.5}}
    - leaky_relu: {{alpha: 0.1}}
    - avgpool2d: {{size: 3, stride: 2, padding: same}}
    - conv2d: {{filters: 5, kernel_size: 4, padding: same}}
    - tanh
    - maxpool2d: {{size: 3, stride: 2, padding: same}}
    - flatten
    - dense: {{units: 16}}
    - batchnorm: {{momentum: 0.5}}
    - sigmoid
    - dropout: {{rate: 0.3}}
    - dense: {{units: 10}}
""",
    "spp_max": f"""
data: {MNIST}, preprocess: [{{mean_subtract: {{per_channel: false}}}}]}}
model:
  layers: [{{conv2d: {{filters: 4, kernel_size: 3, padding: same}}}}, relu, {{spp: {{levels: [1, 2, 3]}}}},
           {{dense: {{units: 10}}}}]
""",
    "spp_avg": f"""
data: {MNIST}, preprocess: [{{minmax: {{range: [0, 1]}}}}]}}
model:
  layers: [{{conv2d: {{filters: 4, kernel_size: 3, stride: 2}}}}, relu, {{spp: {{levels: [2, 4], mode: avg}}}},
           {{dense: {{units: 10}}}}]
""",
    # three channels at an odd size, from real image files; two preprocessing steps, the second fitted
    "rgb_31x29_folder": f"""
data: {{dataset: image_folder, path: {SHAPES / 'train'}, test_path: {SHAPES / 'test'}, validation: 0.2,
       channels: 3, image_size: [31, 29], cache: false,
       preprocess: [{{normalize: {{mean: [0.5, 0.4, 0.3], std: [0.25, 0.2, 0.3]}}}}, minmax]}}
model:
  layers:
    - conv2d: {{filters: 6, kernel_size: 3, stride: 2, dilation: 2, padding: same, use_bias: false}}
    - batchnorm: {{momentum: 0.5}}
    - relu
    - conv2d: {{filters: 6, kernel_size: 3, padding: same}}
    - relu
    - global_avgpool
    - dense: {{units: 3}}
train: {{epochs: 2, batch_size: 16}}
""",
    "binary": f"""
data: {MNIST}, classes: [3, 8], preprocess: [{{normalize: {{mean: 0.1307, std: 0.3081}}}}]}}
model:
  layers: [flatten, {{dense: {{units: 8}}}}, relu, {{dense: {{units: 1}}}}]
loss: binary_cross_entropy
""",
}


@pytest.fixture(scope="module", params=sorted(CASES))
def run_dir(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    cfg = yaml.safe_load(CASES[request.param])
    cfg = {"name": request.param, "optimizer": {"name": "adam", "lr": 0.003},
           "train": {"epochs": 1, "batch_size": 32}, **cfg}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(cli, ["run", str(tmp / "c.yaml"), "--runs-dir", str(tmp / "runs")])
    assert result.exit_code == 0, result.output
    (path,) = (tmp / "runs").iterdir()
    return path


@pytest.mark.slow
def test_onnx_runtime_agrees_with_cnntrain_on_real_test_images(run_dir):
    result = CliRunner().invoke(cli, ["export", str(run_dir)])
    assert result.exit_code == 0, result.output
    path = run_dir / "checkpoints" / "best.onnx"
    assert f"onnx: {path} (opset {DEFAULT_OPSET}" in result.output and path.is_file()
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    exp, meta, model = load_model(find_checkpoint(run_dir))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == meta["classes"]
    assert json.loads(props["preprocess"]) == meta["preprocess"]
    for layer in model.layers:
        if "running_var" in layer.buffers:  # trained, so inference form differs from the batch statistics
            assert np.abs(layer.buffers["running_mean"]).max() > 0.01, run_dir.name
    x, _ = load_splits(exp.cfg).test
    logits = model.forward(exp.stored_preprocess(meta, x.shape[1])(x), training=False)
    assert_agree(run_onnx(path, x), logits, exp.loss.probabilities(logits), f"{run_dir.name}, {len(x)} test images")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("small")
    cfg = {"name": "small", "optimizer": {"name": "adam", "lr": 0.003}, "train": {"epochs": 1, "batch_size": 32},
           **yaml.safe_load(CASES["binary"])}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert CliRunner().invoke(cli, ["run", str(tmp / "c.yaml"), "--runs-dir", str(tmp / "runs")]).exit_code == 0
    (path,) = (tmp / "runs").iterdir()
    return tmp, path


@pytest.mark.slow
@pytest.mark.parametrize("opset", [13, 21])
def test_out_and_opset(small_run, opset):
    tmp, run_dir = small_run
    out = tmp / f"model-{opset}.onnx"
    result = CliRunner().invoke(cli, ["export", str(run_dir / "checkpoints" / "last.npz"), "--out", str(out),
                                      "--opset", str(opset)])
    assert result.exit_code == 0 and f"onnx: {out} (opset {opset}," in result.output, result.output
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import] == [opset]
    exp, meta, model = load_model(run_dir / "checkpoints" / "last.npz")
    x = load_splits(exp.cfg).test[0][:50]
    logits = model.forward(exp.stored_preprocess(meta, 1)(x), training=False)
    assert_agree(run_onnx(out, x), logits, exp.loss.probabilities(logits), f"opset {opset}")


@pytest.mark.slow
@pytest.mark.parametrize("opset", ["12", "999", "x"])
def test_a_bad_opset_is_a_usage_error(small_run, opset):
    _, run_dir = small_run
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--opset", opset])
    assert result.exit_code == 2 and "--opset" in result.output and "Traceback" not in result.output, result.output
    assert not (run_dir / "checkpoints" / "best.onnx").exists()


@pytest.mark.slow
def test_an_unexportable_layer_is_one_line_naming_it(small_run, monkeypatch):
    _, run_dir = small_run
    flatten = LAYERS.get("flatten")
    monkeypatch.delitem(onnx_export.LAYER_EXPORTERS, flatten)  # as a layer that has no exporter yet
    result = CliRunner().invoke(cli, ["export", str(run_dir)])
    assert result.exit_code == 2
    assert result.output == "error: layer 0 (flatten) cannot be exported to ONNX\n"
