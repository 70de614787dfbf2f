"""The command line: exit codes, one-line errors, and a real training run on an MNIST subset."""

from __future__ import annotations

import csv
import gzip
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.layers.dense import Dense
from cnntrain.layers.pool import MaxPool2D
from cnntrain.runs import load_checkpoint

SMALL = """
name: small
seed: 0
data:
  dataset: mnist
  download: false
  validation: 1000
  limit_train: 3000
  limit_val: 500
  limit_test: 1000
  preprocess:
    - normalize: {mean: 0.1307, std: 0.3081}
model:
  layers:
    - conv2d: {filters: 8, kernel_size: 3, padding: same}
    - relu
    - maxpool2d: {size: 2}
    - flatten
    - dense: {units: 10}
optimizer: {name: adam, lr: 2e-3}
train: {epochs: 1, batch_size: 32}
"""


@pytest.fixture()
def small_config(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read_mnist_test(n):
    """The first n MNIST test images (n, 28, 28) uint8 and labels (n,), parsed here from the gzipped IDX files."""
    folders = [Path(d) / "mnist" for d in os.environ.get("CNNTRAIN_DATA", "").split(os.pathsep) if d]
    folder = next((f for f in folders if (f / "t10k-images-idx3-ubyte.gz").is_file()), None)
    assert folder is not None, f"no t10k-images-idx3-ubyte.gz in {folders} (set CNNTRAIN_DATA)"
    images = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    magic, count, rows, cols = struct.unpack(">4I", images[:16])  # header: magic 2051, N, H, W
    assert (magic, rows, cols) == (2051, 28, 28) and struct.unpack(">2I", labels[:8]) == (2049, count)
    x = np.frombuffer(images, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    return x[:n], np.frombuffer(labels, dtype=np.uint8, offset=8)[:n].astype(np.int64)


def small_forward(x, arrays):
    """SMALL's network in float64: conv 3x3 'same' as 9 shifted slices, relu, 2x2 max pool, flatten (c, h, w), dense.

    x: (N, 1, 28, 28) -> logits (N, 10).
    """
    W, b = arrays["layers.0.W"].astype(np.float64), arrays["layers.0.b"].astype(np.float64)  # (8, 1, 3, 3), (8,)
    N, (F, C, KH, KW) = len(x), W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # 'same' for 3x3, stride 1: one zero row/column each side
    h = np.broadcast_to(b[:, None, None], (N, F, 28, 28)).copy()
    for i in range(KH):
        for j in range(KW):
            h += np.einsum("nchw,fc->nfhw", xp[:, :, i : i + 28, j : j + 28], W[:, :, i, j])
    h = np.maximum(h, 0).reshape(N, F, 14, 2, 14, 2).max(axis=(3, 5))  # (N, 8, 14, 14)
    return h.reshape(N, -1) @ arrays["layers.4.W"].astype(np.float64) + arrays["layers.4.b"]


def test_help_lists_commands_and_does_not_import_numpy():
    code = ("import sys; from cnntrain.cli import cli; "
            "assert not {'numpy', 'matplotlib', 'ray'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    result = invoke("--help")
    assert result.exit_code == 0 and all(c in result.output for c in ("run", "eval", "sweep", "compare"))


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "cnntrain", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage" in out.stdout


@pytest.mark.parametrize("text,overrides,fragment", [
    (SMALL.replace("epochs: 1", "epochz: 1"), [], "train.epochz: unknown key (did you mean 'epochs'?)"),
    (SMALL.replace("lr: 2e-3", "lr: fast"), [], "optimizer.lr: must be a number"),
    (SMALL, ["train.batch_size=many"], "train.batch_size: expected an integer or 'full', got 'many'"),
    (SMALL.replace("units: 10", "units: 10, unitz: 3"), [], "model.layers[4].dense.unitz: unknown option"),
    (SMALL.replace("    - flatten\n", ""), [], "layer 3 (dense) with input shape (8, 14, 14)"),
    (SMALL.replace("units: 10", "units: 7"), [], "needs the last layer to output (10,)"),
])
def test_config_mistakes_exit_2_with_one_line_and_no_traceback(tmp_path, text, overrides, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = invoke("run", path, *[f"--set={o}" for o in overrides], "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert str(path) in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_config_file_is_a_usage_error(tmp_path):
    result = invoke("run", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_print_config_shows_resolved_defaults(small_config):
    result = invoke("run", small_config, "--print-config", "--set", "optimizer.lr=0.01")
    assert result.exit_code == 0, result.output
    assert "lr: 0.01" in result.output and "betas:" in result.output and "eval_batch_size: 1000" in result.output


@pytest.mark.slow
def test_train_on_real_mnist_subset_then_eval(tmp_path, small_config):
    runs = tmp_path / "runs"
    result = invoke("run", small_config, "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    (run_dir,) = runs.iterdir()
    for name in ("config.yaml", "metrics.csv", "steps.csv", "loss.png", "accuracy.png", "lr.png",
                 "checkpoints/last.npz", "checkpoints/best.npz", "summary.json"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1
    assert summary["test_accuracy"] > 0.85, summary  # chance is 0.10
    for key in ("test_loss", "best_val_accuracy", "train_seconds", "images_per_second"):
        assert summary[key] > 0
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 1 and list(rows[0]) == ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc",
                                                 "lr", "seconds", "reg_loss"]
    assert int(rows[0]["step"]) == 94  # ceil(3000 / 32)
    steps = list(csv.DictReader(open(run_dir / "steps.csv")))
    assert len(steps) == 94 and float(steps[0]["loss"]) > float(rows[0]["train_loss"]) / 2
    text, meta, arrays = load_checkpoint(run_dir / "checkpoints" / "best.npz")
    assert "name: small" in text and meta["epoch"] == 1 and meta["classes"] == [str(i) for i in range(10)]
    assert arrays["layers.0.W"].shape == (8, 1, 3, 3) and arrays["layers.0.W"].dtype == np.float32
    assert "optim/layers.0.W/m" in arrays and int(arrays["optim/t"]) == 94

    result = invoke("eval", run_dir, "--json")
    assert result.exit_code == 0, result.output
    ev = json.loads(result.output.strip().splitlines()[-1])
    assert ev["n"] == 1000 and ev["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)
    assert ev["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    # An oracle sharing no code with eval: the IDX files parsed here, SMALL's normalize, a plain NumPy forward.
    assert meta["preprocess"]["scale"] == pytest.approx([1 / (255 * 0.3081)])
    assert meta["preprocess"]["offset"] == pytest.approx([-0.1307 / 0.3081])
    u8, labels = read_mnist_test(1000)  # data.limit_test keeps the test file's first images
    logits = small_forward((u8[:, None] / 255 - 0.1307) / 0.3081, arrays)
    log_z = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 1e-4, "a near tie would make the float32/float64 argmax ambiguous"
    correct = int((logits.argmax(axis=1) == labels).sum())
    assert correct == round(ev["accuracy"] * 1000), (correct, ev["accuracy"])
    assert ev["loss"] == pytest.approx(np.mean(log_z - logits[np.arange(1000), labels]), abs=1e-5)
    per_class = {str(c): float(np.mean(logits[labels == c].argmax(axis=1) == c)) for c in range(10)}
    assert ev["per_class_accuracy"] == pytest.approx(per_class, abs=1e-12)
    assert set(ev["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert np.array(ev["confusion_matrix"]).sum() == 1000
    result = invoke("eval", run_dir / "checkpoints" / "last.npz", "--split", "val")
    assert result.exit_code == 0 and "on val: 500 images" in result.output and "confusion matrix" in result.output
    assert (run_dir / "confusion_val_last.png").stat().st_size > 10_000
    for name in ("loss.png", "accuracy.png", "lr.png", "confusion_test_best.png"):
        assert (run_dir / name).stat().st_size > 10_000, name


def test_eval_of_a_non_checkpoint_exits_1(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"garbage")
    result = invoke("eval", bad)
    assert result.exit_code == 1 and "not a readable cnntrain checkpoint" in result.output
    assert "Traceback" not in result.output


def test_summary_table_and_json(small_config):
    result = invoke("summary", small_config)
    assert result.exit_code == 0, result.output
    assert "(8, 28, 28)" in result.output and "(1568,)" in result.output
    result = invoke("summary", small_config, "--json")
    data = json.loads(result.output)
    conv, relu, pool, flat, dense = data["layers"]
    # conv: 8 filters * (1*3*3 + 1) params; 8*28*28 outputs * 9 MACs each
    assert conv == {"name": "layers.0", "type": "conv2d", "output_shape": [8, 28, 28], "params": 80, "macs": 56448}
    assert dense["params"] == 1568 * 10 + 10 and dense["macs"] == 15680
    assert data["totals"] == {"params": 80 + 15690, "macs": 56448 + 15680, "output_shape": [10]}


@pytest.mark.parametrize("override,fragment", [
    ("model.layers.0={conv2d: {filters: 8, kernel_size: 40}}", "layer 0 (conv2d) with input shape (1, 28, 28): kernel 40x40"),
    ("model.input_shape=[3, 28, 28]", "does not match the dataset's images [1, 28, 28]"),
    ("model.layers.2.maxpool2d.size=30", "layer 2 (maxpool2d) with input shape (8, 28, 28): window 30x30 leaves nothing"),
])
def test_summary_refuses_networks_that_cannot_be_built(small_config, override, fragment):
    result = invoke("summary", small_config, "--set", override)
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_bench_reports_throughput_and_per_layer_profile(small_config, monkeypatch):
    """Known sleeps in maxpool's forward and dense's backward show up in exactly those cells of the profile."""
    pool_ms, dense_ms = 30, 15

    def slowed(method, ms):
        def wrapper(self, *args, **kwargs):
            out = method(self, *args, **kwargs)
            time.sleep(ms / 1e3)
            return out
        return wrapper

    with monkeypatch.context() as m:
        m.setattr(MaxPool2D, "forward", slowed(MaxPool2D.forward, pool_ms))
        m.setattr(Dense, "backward", slowed(Dense.backward, dense_ms))
        result = invoke("bench", small_config, "--steps", "2", "--batch-size", "8", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["batch_size"] == 8 and r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
    assert 0 < r["peak_memory_mb"] < 1024
    layers = r["layers"]
    assert [row["type"] for row in layers] == ["conv2d", "relu", "maxpool2d", "flatten", "dense"]
    pool, dense = layers[2], layers[4]
    # Each cell is per step: at least the sleep, well under two (the unslowed layers take < 1 ms at batch 8).
    assert pool_ms <= pool["forward_ms"] < 2 * pool_ms, pool
    assert dense_ms <= dense["backward_ms"] < 2 * dense_ms, dense
    others = [(row["type"], key, row[key]) for row in layers for key in ("forward_ms", "backward_ms")
              if (row, key) not in ((pool, "forward_ms"), (dense, "backward_ms"))]
    assert all(ms < dense_ms / 2 for _, _, ms in others), others
    shares = [row["share"] for row in layers]
    assert max(shares) == pool["share"] and sorted(shares)[-2] == dense["share"], shares
    assert pool["share"] == pytest.approx(pool_ms / (pool_ms + dense_ms), abs=0.1), shares  # 2/3 of the layer time
    result = invoke("bench", small_config, "--steps", "2")
    assert result.exit_code == 0 and "images/s" in result.output and "maxpool2d" in result.output


def test_bench_headline_is_the_real_step_and_flops_follow_the_layer_formulas(small_config):
    from cnntrain.bench import step_flops
    from cnntrain.build import load_experiment

    model = load_experiment(small_config).network((1, 28, 28), 10)
    # forward MACs: conv 8*28*28*9 = 56,448, dense 1568*10 = 15,680; training adds both weight gradients
    # and the dense layer's input gradient (the first layer's input needs none): 2 FLOPs per MAC
    assert step_flops(model) == (2 * (56448 + 15680) * 2 + 2 * 15680, 2 * (56448 + 15680))
    result = invoke("bench", small_config, "--steps", "3", "--batch-size", "16", "--no-profile", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["layers"] == [] and "other_ms" not in r
    train_flops, infer_flops = step_flops(model)
    assert r["train_gflops"] == pytest.approx(train_flops * r["train_images_per_s"] / 1e9, rel=1e-9)
    assert r["infer_gflops"] == pytest.approx(infer_flops * r["infer_images_per_s"] / 1e9, rel=1e-9)
    assert r["train_ceiling_share"] == pytest.approx(r["train_gflops"] / r["gemm_gflops"], rel=1e-9)
    assert r["train_step_ms"] == pytest.approx(16e3 / r["train_images_per_s"], rel=1e-9)
    assert 0 < r["train_peak_memory_mb"] <= r["peak_memory_mb"]
    assert r["eval_batch_size"] == 1000
    assert r["blas"].startswith("OpenBLAS ") and "blas_hint" in r  # NumPy's wheels bring OpenBLAS


def test_bench_times_the_configs_own_training_images_when_they_are_on_disk(small_config, tmp_path, monkeypatch):
    """MNIST's blank margins make max-pool windows tie, which random images never do: bench steps real batches."""
    import cnntrain.bench as bench
    from cnntrain.build import load_experiment
    from cnntrain.data.splits import load_dataset

    cfg = load_experiment(small_config).cfg
    x, y, data = bench.bench_images(cfg, (1, 28, 28), 10, 5000)
    ds = load_dataset(cfg)
    assert data == "mnist training images" and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:5000], ds.train_x[:5000])  # limit_train (3000) is a run's, not the images'
    np.testing.assert_array_equal(y, ds.train_y[:5000])
    x, y, data = bench.bench_images(cfg, (1, 28, 28), 10, len(ds.train_y) + 7)  # more than there are: cycled
    np.testing.assert_array_equal(x[-7:], ds.train_x[:7])
    x, y, data = bench.bench_images(cfg, (3, 28, 28), 10, 16)  # a shape the dataset does not have
    assert data.startswith("random images") and x.shape == (16, 3, 28, 28)

    empty = tmp_path / "empty"
    empty.mkdir()
    moved = small_config.parent / "moved.yaml"
    moved.write_text(small_config.read_text().replace("download: false", f"download: true\n  root: {empty}"))
    x, y, data = bench.bench_images(load_experiment(moved).cfg, (1, 28, 28), 10, 16)
    assert data == "random images (the dataset is not on disk)", "never downloaded, even with download: true"
    assert list(empty.iterdir()) == [] and x.shape == (16, 1, 28, 28) and y.max() < 10

    seen = []
    real_step = bench.train_step
    monkeypatch.setattr(bench, "train_step", lambda *a, **k: seen.append(a[3][0].tobytes()) or real_step(*a, **k))
    result = invoke("bench", small_config, "--steps", "10", "--seconds", "0", "--batch-size", "8", "--no-profile",
                    "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["data"] == "mnist training images"
    assert json.loads(result.output)["steps"] == 10
    firsts = [image.tobytes() for image in ds.train_x[: 8 * bench.BATCHES : 8]]
    assert seen == [firsts[i % bench.BATCHES] for i in range(15)]  # 5 warm-up and 10 timed steps, cycling


def test_bench_peak_memory_is_counted_after_the_freed_dataset_went_back_to_the_os():
    """keep_freed_memory holds freed blocks (a training run's steps reuse them); release_freed_memory gives
    them back, and reset_peak_memory starts the peak from there. In a fresh process: peaks are per process."""
    code = """
import numpy as np
from cnntrain.memory import keep_freed_memory, peak_rss_mb, release_freed_memory, reset_peak_memory
assert keep_freed_memory()
base = peak_rss_mb()
a = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, from the heap now, every page touched
high = peak_rss_mb()
del a
assert reset_peak_memory()
kept = peak_rss_mb()
assert release_freed_memory()
assert reset_peak_memory()
print(base, high, kept, peak_rss_mb())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    base, high, kept, after = map(float, out.split())
    assert high > base + 60, (base, high)
    assert kept > base + 60, "freed but kept by the process: still resident"
    assert after < base + 8, (base, after)


def test_bench_steps_the_batch_it_is_given_over_the_processes_a_run_would_use(small_config, monkeypatch):
    import cnntrain.bench as bench

    chunks = []
    real_step = bench.train_step

    def recording(*args, **kwargs):
        chunks.append(args[7])  # chunk_size
        return real_step(*args, **kwargs)

    monkeypatch.setattr(bench, "train_step", recording)
    result = invoke("bench", small_config, "--steps", "2", "--batch-size", "64", "--no-profile", "--json",
                    "--set", "train.workers=2")  # the config's batch is 32: 64 must not run as two chunks
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert set(chunks) == {64} and r["workers"] == 2 and r["blas_threads"] >= 1
    result = invoke("bench", small_config, "--steps", "2", "--batch-size", "16", "--no-profile", "--json")
    assert json.loads(result.output)["workers"] == 1, "auto: 16 x 72,128 multiply-adds are too few to split"


def test_bench_times_steps_until_its_minimum_duration_has_passed():
    from cnntrain.bench import _timed_steps

    calls = []

    def step():
        calls.append(None)
        time.sleep(0.005)

    per_step, done = _timed_steps(step, 2, 0.0)
    assert done == len(calls) == 2 and per_step >= 0.005  # no minimum: exactly the steps asked for
    calls.clear()
    per_step, done = _timed_steps(step, 2, 0.1)
    assert done == len(calls) and 0.1 / 0.005 / 2 <= done <= 0.1 / 0.005 + 1  # ran on for the 0.1 s
    assert 0.005 <= per_step < 0.1 / 2
    calls.clear()
    per_step, done = _timed_steps(step, 40, 0.05)
    assert done == 40  # the steps asked for took longer than the minimum
