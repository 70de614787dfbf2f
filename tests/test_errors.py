"""A corpus of user mistakes: each gives one clear line naming the file and key path, and the right exit code."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.data import datasets
from cnntrain.data.idx import write_idx

GOOD = """\
name: good
seed: 0
data: {dataset: mnist, download: false, validation: 100, limit_train: 200, limit_val: 100, limit_test: 100}
model:
  input_shape: [1, 28, 28]
  layers:
    - conv2d: {filters: 4, kernel_size: 3}
    - relu
    - maxpool2d: {size: 2}
    - flatten
    - dense: {units: 10}
loss: softmax_cross_entropy
optimizer: {name: adam, lr: 0.001}
schedule: {name: constant}
train: {epochs: 1, batch_size: 32}
"""

# (description, (old, new) text replacement or None, --set overrides, message fragment, exit code)
CASES = [
    ("unknown top-level key", ("seed: 0", "sead: 0"), [], "sead: unknown key (did you mean 'seed'?)", 2),
    ("unknown data key", ("validation: 100", "validaton: 100"), [], "data.validaton: unknown key (did you mean 'validation'?)", 2),
    ("unknown train key", ("epochs: 1", "epoch: 1"), [], "train.epoch: unknown key (did you mean 'epochs'?)", 2),
    ("unknown model key", ("  input_shape:", "  inputshape:"), [], "model.inputshape: unknown key (did you mean 'input_shape'?)", 2),
    ("misspelt dataset", ("dataset: mnist", "dataset: mnsit"), [], "data.dataset: unknown dataset 'mnsit' (did you mean 'mnist'?)", 2),
    ("misspelt optimizer", ("name: adam", "name: adma"), [], "optimizer.name: unknown optimizer 'adma' (did you mean 'adam'?)", 2),
    ("misspelt schedule", ("name: constant", "name: cosin"), [], "schedule.name: unknown schedule 'cosin' (did you mean 'cosine'?)", 2),
    ("misspelt loss", ("loss: softmax_cross_entropy", "loss: softmax_cross_entopy"), [], "loss: unknown loss 'softmax_cross_entopy' (did you mean 'softmax_cross_entropy'?)", 2),
    ("misspelt layer", ("- relu", "- rellu"), [], "model.layers[1]: unknown layer 'rellu' (did you mean 'relu'?)", 2),
    ("misspelt layer option", ("filters: 4", "filter: 4"), [], "model.layers[0].conv2d.filter: unknown option for layer 'conv2d' (did you mean 'filters'?)", 2),
    ("misspelt optimizer option", ("lr: 0.001", "lr: 0.001, beta1: 0.9"), [], "optimizer.beta1: unknown option for optimizer 'adam' (did you mean 'betas'?)", 2),
    ("misspelt schedule option", ("{name: constant}", "{name: step, stepsize: 2}"), [], "schedule.stepsize: unknown option for schedule 'step' (did you mean 'step_size'?)", 2),
    ("missing required schedule option", ("{name: constant}", "{name: step}"), [], "schedule.step_size: required", 2),
    ("lr zero", ("lr: 0.001", "lr: 0"), [], "optimizer.lr: must be a number in (0, inf), got 0", 2),
    ("lr negative", None, ["optimizer.lr=-0.1"], "optimizer.lr: must be a number in (0, inf), got -0.1", 2),
    ("lr string", ("lr: 0.001", "lr: fast"), [], "optimizer.lr: must be a number", 2),
    ("momentum too large", ("name: adam, lr: 0.001", "name: momentum, lr: 0.01, momentum: 1.2"), [], "optimizer.momentum: must be a number in [0, 1), got 1.2", 2),
    ("betas of wrong length", ("lr: 0.001", "lr: 0.001, betas: [0.9]"), [], "optimizer.betas: must be a pair", 2),
    ("batch size zero", ("batch_size: 32", "batch_size: 0"), [], "train.batch_size: must be >= 1, got 0", 2),
    ("batch size word", None, ["train.batch_size=all"], "train.batch_size: expected an integer or 'full', got 'all'", 2),
    ("epochs zero", None, ["train.epochs=0"], "train.epochs: must be >= 1, got 0", 2),
    ("epochs float", None, ["train.epochs=2.5"], "train.epochs: expected an integer, got 2.5", 2),
    ("epochs bool", None, ["train.epochs=yes"], "train.epochs: expected an integer, got True", 2),
    ("dropout rate 1", ("- relu", "- dropout: {rate: 1.0}"), [], "model.layers[1].dropout.rate: must be a number in [0, 1), got 1.0", 2),
    ("dropout rate negative", ("- relu", "- dropout: {rate: -0.1}"), [], "model.layers[1].dropout.rate: must be a number in [0, 1)", 2),
    ("filters zero", ("filters: 4", "filters: 0"), [], "model.layers[0].conv2d.filters: must be an integer >= 1, got 0", 2),
    ("bad padding word", ("kernel_size: 3}", "kernel_size: 3, padding: full}"), [], "model.layers[0].conv2d.padding: must be 'valid', 'same', an int or a pair", 2),
    ("negative stride", ("kernel_size: 3}", "kernel_size: 3, stride: -1}"), [], "model.layers[0].conv2d.stride: must be >= 1", 2),
    ("unknown initializer", ("kernel_size: 3}", "kernel_size: 3, init: he}"), [], "unknown initializer 'he'", 2),
    ("validation fraction >= 1", ("validation: 100", "validation: 1.5"), [], "data.validation: expected an image count >= 0 or a fraction in [0, 1)", 2),
    ("validation larger than data", ("validation: 100", "validation: 70000"), [], "data.validation: validation holds out 70000 of only 60000 training images", 2),
    ("negative limit", ("limit_train: 200", "limit_train: -5"), [], "data.limit_train: must be >= 1 or null", 2),
    ("classes duplicate", ("dataset: mnist,", "dataset: mnist, classes: [1, 1],"), [], "data.classes: expected a list of at least two distinct class indices", 2),
    ("classes out of range", ("dataset: mnist,", "dataset: mnist, classes: [0, 12],"), [], "data.classes: mnist has classes 0..9, got [0, 12]", 2),
    ("input shape mismatch", ("input_shape: [1, 28, 28]", "input_shape: [3, 28, 28]"), [], "model.input_shape: [3, 28, 28] does not match the dataset's images [1, 28, 28]", 2),
    ("input shape rank", ("input_shape: [1, 28, 28]", "input_shape: [28, 28]"), [], "model.input_shape: expected [channels, height, width]", 2),
    ("dense without flatten", ("    - flatten\n", ""), [], "layer 3 (dense) with input shape (4, 13, 13): expects flat input (features,), got (4, 13, 13); add 'flatten' before it", 2),
    ("kernel larger than input", ("kernel_size: 3}", "kernel_size: 31}"), [], "layer 0 (conv2d) with input shape (1, 28, 28): kernel 31x31 with dilation 1x1 does not fit the padded input 28x28", 2),
    ("pool leaves nothing", ("size: 2}", "size: 40}"), [], "layer 2 (maxpool2d) with input shape (4, 26, 26): window 40x40 leaves nothing", 2),
    ("wrong number of outputs", ("units: 10}", "units: 3}"), [], "softmax_cross_entropy needs the last layer to output (10,)", 2),
    ("binary loss on ten classes", ("loss: softmax_cross_entropy", "loss: binary_cross_entropy"), [], "binary_cross_entropy needs two classes", 2),
    ("layer entry not a mapping", ("- relu", "- [relu]"), [], "model.layers[1]: expected a layer name or {name: {options}}", 2),
    ("layer options not a mapping", ("- relu", "- leaky_relu: 0.1"), [], "model.layers[1].leaky_relu: expected a mapping of options, got 0.1", 2),
    ("no layers", ("  layers:\n", "  layers: []\n  unused:\n"), [], "model.unused: unknown key", 2),
    ("empty network", None, ["model.layers=[]"], "model.layers: the network needs at least one layer", 2),
    ("section not a mapping", ("train: {epochs: 1, batch_size: 32}", "train: 5"), [], "train: expected a mapping, got 5", 2),
    ("top level is a list", (None, "- a\n- b\n"), [], "top level: expected a mapping of sections", 2),
    ("broken YAML", ("seed: 0", "seed: [0"), [], "invalid YAML", 2),
    ("python object tag", ("seed: 0", "seed: !!python/object/apply:os.getcwd []"), [], "invalid YAML", 2),
    ("override without equals", None, ["train.epochs"], "--set train.epochs: expected KEY.PATH=VALUE", 2),
    ("override into a scalar", None, ["seed.value=3"], "--set seed.value=3: seed is not a mapping", 2),
    ("override bad index", None, ["model.layers.9.relu=1"], "--set model.layers.9.relu=1: model.layers.9: expected a list index below 5", 2),
    ("override broken YAML", None, ["optimizer.lr=[0.1"], "--set optimizer.lr=[0.1: line 1, column 5: invalid YAML", 2),
    ("bad run name", ("name: good", "name: ../../etc"), [], "name: use letters, digits", 2),
    ("monitor unknown", ("train: {epochs: 1,", "train: {monitor: val_accuracy, epochs: 1,"), [], "train.monitor: expected one of val_acc, val_loss, train_acc, train_loss, got 'val_accuracy' (did you mean 'val_acc'?)", 2),
    ("patience zero", ("train: {epochs: 1,", "train: {early_stopping: {patience: 0}, epochs: 1,"), [], "train.early_stopping.patience: must be >= 1, got 0", 2),
    ("grad clip negative", None, ["train.grad_clip_norm=-1"], "train.grad_clip_norm: must be > 0 or null", 2),
    ("lr scaling unknown", None, ["optimizer.lr_scaling=sqrt"], "optimizer.lr_scaling: expected none or linear, got 'sqrt'", 2),
    ("lr scaling without base", None, ["optimizer.lr_scaling=linear"], "optimizer.base_batch_size: lr_scaling: linear needs an integer >= 1", 2),
    ("warmup longer than training", ("{name: constant}", "{name: constant, warmup_epochs: 3}"), [], "schedule.warmup_epochs: the warmup (3 epochs = 21 steps) must be shorter than training (7 steps)", 2),
    ("momentum schedule on adam", None, ["momentum_schedule={name: linear, start: 0.5, end: 0.9}"], "momentum_schedule: optimizer 'adam' has no momentum to schedule", 2),
    ("l2 negative", ("  input_shape:", "  l2: -0.1\n  input_shape:"), [], "model.l2: expected a number >= 0, got -0.1", 2),
    ("init_from missing", ("  input_shape:", "  init_from: nowhere.npz\n  input_shape:"), [], "model.init_from: cannot read nowhere.npz", 2),
    ("data missing", None, ["data.root=/nonexistent", "data.dataset=fashion_mnist"], "fashion_mnist: missing train-images-idx3-ubyte.gz", 1),
]


@pytest.mark.parametrize("desc,replace,overrides,fragment,code", CASES, ids=[c[0] for c in CASES])
def test_mistake_gives_one_clear_line(tmp_path, monkeypatch, desc, replace, overrides, fragment, code):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no real cache, no download
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIR", tmp_path / "system")  # Debian's dataset-* may be installed
    text = GOOD
    if replace is not None:
        old, new = replace
        text = new if old is None else text.replace(old, new)
        assert old is None or old in GOOD, f"case {desc!r} replaces text that is not in the config"
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["run", str(path), "--runs-dir", str(tmp_path / "runs"),
                                      *[f"--set={o}" for o in overrides]])
    assert result.exit_code == code, result.output
    assert fragment in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    if code == 2:
        assert str(path) in result.output or "--set" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/checkpoints/*.npz"))


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


def idx_images(path, n=12, magic_ok=True):
    write_idx(path, np.zeros((n, 28, 28), np.uint8))
    if not magic_ok:
        data = bytearray(gzip.decompress(path.read_bytes()) if str(path).endswith(".gz") else path.read_bytes())
        data[0] = 0x01
        path.write_bytes(gzip.compress(bytes(data)) if str(path).endswith(".gz") else bytes(data))


@pytest.mark.parametrize("damage,fragment", [
    ("truncated", "truncated"),
    ("bad_gzip", "gzip"),
    ("magic", "not an IDX file: magic starts with 0x01"),
    ("count", "labels, but"),
])
def test_bad_dataset_files_exit_1_naming_the_file(tmp_path, damage, fragment):
    root = tmp_path / "data" / "mnist"
    root.mkdir(parents=True)
    for split, n in (("train", 40), ("t10k", 12)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))
    target = root / "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        raw = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(raw[: len(raw) - 100]))
    elif damage == "bad_gzip":
        target.write_bytes(target.read_bytes()[:30])
    elif damage == "magic":
        idx_images(target, 40, magic_ok=False)
    elif damage == "count":
        write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    path = tmp_path / "exp.yaml"
    path.write_text(GOOD.replace("download: false,", f"download: false, root: {tmp_path / 'data'},")
                    .replace("validation: 100", "validation: 10").replace("limit_train: 200", "limit_train: 20"))
    before = {p: p.read_bytes() for p in root.iterdir()}
    result = CliRunner().invoke(cli, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    assert fragment in result.output and "train-" in result.output, result.output
    assert "Traceback" not in result.output
    assert {p: p.read_bytes() for p in root.iterdir()} == before, "the dataset files were touched"


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_empty_data_root_exits_1_naming_it_even_when_cnntrain_data_has_the_files(tmp_path, monkeypatch, dataset):
    spec = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FASHION_MNIST}[dataset]
    shared = os.environ.get("CNNTRAIN_DATA", "").split(os.pathsep)[0]
    assert (Path(shared) / spec.folders[0] / "train-images-idx3-ubyte.gz").is_file(), \
        f"the real {dataset} must be on CNNTRAIN_DATA for this test to mean anything"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "mount"
    root.mkdir()
    path = tmp_path / "exp.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(cli, ["run", str(path), "--runs-dir", str(tmp_path / "runs"),
                                      f"--set=data.dataset={dataset}", f"--set=data.root={root}"])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    files = ", ".join(f"{name}.gz" for name in datasets.IDX_FILES)
    assert f"{dataset}: missing {files} in data.root {root}; " in line, line
    assert "downloads are off" in line and "Traceback" not in line, line
    assert list(root.iterdir()) == [] and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_its_config(tmp_path):
    from cnntrain.runs import load_checkpoint, save_checkpoint

    path = tmp_path / "exp.yaml"
    path.write_text(GOOD)
    runner = CliRunner()
    assert runner.invoke(cli, ["run", str(path), "--runs-dir", str(tmp_path / "runs")]).exit_code == 0
    (ckpt,) = (tmp_path / "runs").glob("*/checkpoints/best.npz")
    text, meta, arrays = load_checkpoint(ckpt)
    arrays["layers.4.W"] = np.zeros((5, 10), np.float32)
    save_checkpoint(tmp_path / "bad.npz", text, meta, arrays)
    result = runner.invoke(cli, ["eval", str(tmp_path / "bad.npz")])
    assert result.exit_code == 1 and "layers.4.W has shape (5, 10), the network needs (676, 10)" in result.output


def test_unwritable_runs_dir_is_a_clear_error(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(GOOD)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli, ["run", str(path), "--runs-dir", str(blocker / "runs")])
    assert result.exit_code == 1 and "cannot create the run directory" in result.output, result.output


def test_name_with_path_separators_is_refused(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(GOOD)
    for bad in ("a/b", "..", "../x"):
        result = CliRunner().invoke(cli, ["run", str(path), "--name", bad, "--print-config"])
        assert result.exit_code == 2 and "name: use letters, digits" in result.output, (bad, result.output)
