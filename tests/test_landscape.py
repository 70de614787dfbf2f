"""Loss landscapes: filter-normalised directions, the line from init to final, the 2-D grid, init.npz."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.build import experiment_from_text
from cnntrain.cli import cli
from cnntrain.data.splits import load_splits
from cnntrain.inspection import load_model
from cnntrain.insight import landscape as ls
from cnntrain.runs import load_checkpoint, split_state
from cnntrain.train import evaluate

PNG = b"\x89PNG\r\n\x1a\n"
LAYERS = """
model:
  input_shape: [1, 28, 28]
  layers:
    - conv2d: {filters: 4, kernel_size: 3, use_bias: false}
    - batchnorm
    - relu
    - maxpool2d: {size: 2}
    - conv2d: {filters: 6, kernel_size: 3}
    - relu
    - flatten
    - dropout: {rate: 0.2}
    - dense: {units: 10}
"""
CONFIG = """
name: land
data: {dataset: mnist, download: false, validation: 100, limit_train: 480, limit_val: 100, limit_test: 100}
""" + LAYERS + """
optimizer: {name: adam, lr: 0.003}
train: {epochs: 2, batch_size: 32, drop_last: true}
"""


def built_model(seed=0):
    return experiment_from_text(f"name: m\nseed: {seed}\n{LAYERS}", "m.yaml").network((1, 28, 28), 10)


def test_direction_is_normalised_filter_by_filter():
    model = built_model()
    params = model.named_params()
    d = ls.random_direction(model, np.random.default_rng(0))
    assert d.keys() == params.keys()
    conv, dense = params["layers.4.W"], params["layers.8.W"]   # (F, C, KH, KW) and (D, units)
    for f in range(conv.shape[0]):  # one norm per conv filter
        assert np.linalg.norm(d["layers.4.W"][f]) == pytest.approx(np.linalg.norm(conv[f]), rel=1e-5)
    for u in range(dense.shape[1]):  # one norm per dense unit: a column of W
        assert np.linalg.norm(d["layers.8.W"][:, u]) == pytest.approx(np.linalg.norm(dense[:, u]), rel=1e-5)
    for name in ("layers.1.gamma", "layers.1.beta", "layers.4.b", "layers.8.b"):  # biases and batchnorm: zero
        assert not d[name].any(), name
    assert not np.allclose(d["layers.4.W"] / np.linalg.norm(d["layers.4.W"]), conv / np.linalg.norm(conv))
    again = ls.random_direction(model, np.random.default_rng(0))
    assert all(np.array_equal(d[k], again[k]) for k in d), "a seed gives one direction"


def test_normalize_filters_keeps_the_shape_and_handles_a_zero_filter():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5)).astype(np.float32)
    w[:, 1] = 0
    out = ls.normalize_filters(rng.standard_normal((3, 5)).astype(np.float32), w, axis=1)
    assert out.shape == (3, 5) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=0), np.linalg.norm(w, axis=0), rtol=1e-5, atol=1e-7)
    assert not out[:, 1].any()


def test_grid_axis_always_holds_the_marked_points():
    a = ls.grid_axis(-0.5, 1.5, 21, (0.0, 1.0))
    assert len(a) == 21 and 0.0 in a and 1.0 in a and a[0] == -0.5 and a[-1] == 1.5
    b = ls.grid_axis(-1, 1, 4, (0.0,))  # an even count misses the centre: it is added
    assert len(b) == 5 and 0.0 in b


def test_interpolation_is_exact_at_the_ends_and_keeps_variances_positive():
    init = {"layers.0.W": np.float32([0.3, -1.7]), "layers.1.running_var": np.float32([1.0, 1.0])}
    final = {"layers.0.W": np.float32([0.5, 2.9]), "layers.1.running_var": np.float32([0.01, 4.0])}
    buffers = {"layers.1.running_var"}
    for alpha, want in ((0.0, init), (1.0, final)):
        got = ls.interpolate(init, final, alpha, buffers)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    far = ls.interpolate(init, final, 1.5, buffers)
    assert (far["layers.1.running_var"] > 0).all()
    np.testing.assert_allclose(far["layers.0.W"], [-0.5 * 0.3 + 1.5 * 0.5, -0.5 * -1.7 + 1.5 * 2.9], rtol=1e-6)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscape")
    config = root / "land.yaml"
    config.write_text(CONFIG)
    result = invoke("run", config, "--runs-dir", root / "runs", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    (path,) = (root / "runs").iterdir()
    return path


def subset_loss(checkpoint, limit):
    """evaluate() of a checkpoint's weights on the first `limit` training images, as the landscape measures."""
    exp, meta, model = load_model(checkpoint)
    splits = load_splits(exp.cfg)
    pre = exp.stored_preprocess(meta, splits.input_shape[0])
    return evaluate(model, exp.loss, splits.train[0][:limit], splits.train[1][:limit], pre, 1000)[:2]


@pytest.mark.slow
def test_init_npz_holds_the_built_weights_and_survives_resume(run_dir):
    init = run_dir / "checkpoints" / "init.npz"
    _, meta, arrays = load_checkpoint(init)
    assert meta["step"] == 0 and meta["epoch"] == 0
    model = experiment_from_text(CONFIG, "land.yaml").network((1, 28, 28), 10)  # built again from the same seed
    weights = split_state(arrays)[0]
    assert weights.keys() == model.state_dict().keys()
    assert all(np.array_equal(weights[k], v) for k, v in model.state_dict().items()), "not the seeded initialisation"
    last = split_state(load_checkpoint(run_dir / "checkpoints" / "last.npz")[2])[0]
    assert not np.array_equal(last["layers.0.W"], weights["layers.0.W"])
    before, stamp = init.read_bytes(), init.stat().st_mtime_ns
    result = invoke("run", "--resume", run_dir, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert init.read_bytes() == before and init.stat().st_mtime_ns == stamp, "resume rewrote init.npz"


@pytest.mark.slow
def test_line_runs_from_the_init_loss_to_the_final_loss(run_dir, tmp_path):
    r = ls.landscape(run_dir, "line", points=9, limit=200)
    a = r["alphas"]
    assert a[0] == -0.5 and a[-1] == 1.5 and r["loss"].shape == r["accuracy"].shape == a.shape
    i0, i1 = int(np.flatnonzero(a == 0)[0]), int(np.flatnonzero(a == 1)[0])
    init_loss, init_acc = subset_loss(run_dir / "checkpoints" / "init.npz", 200)
    final_loss, final_acc = subset_loss(run_dir / "checkpoints" / "last.npz", 200)
    assert r["loss"][i0] == pytest.approx(init_loss, rel=1e-5) and r["accuracy"][i0] == init_acc
    assert r["loss"][i1] == pytest.approx(final_loss, rel=1e-5) and r["accuracy"][i1] == final_acc
    assert r["init"]["loss"] > r["final"]["loss"]
    out = tmp_path / "line.png"
    result = invoke("landscape", run_dir, "--mode", "line", "--points", "5", "--limit", "100", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000
    assert "init loss" in result.output and "final loss" in result.output


@pytest.mark.slow
def test_plane_is_centred_on_the_trained_loss(run_dir, tmp_path):
    final_loss, _ = subset_loss(run_dir / "checkpoints" / "last.npz", 150)
    out = tmp_path / "plane.png"
    result = invoke("landscape", run_dir, "--points", "5", "--limit", "150", "--range", "0.5", "--json", "--out", out)
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    loss = np.array(r["loss"])
    assert loss.shape == (5, 5) and r["alphas"] == r["betas"] == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert loss[2, 2] == pytest.approx(final_loss, rel=1e-5) == r["trained"]["loss"]
    assert loss.max() > loss[2, 2], "moving away from the trained weights should cost something"
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000
    again = ls.landscape(run_dir, "2d", points=5, span=0.5, limit=150)
    np.testing.assert_array_equal(again["loss"], loss)  # seeded directions: the same grid twice


@pytest.mark.slow
def test_1d_curve_and_default_figure_path(run_dir):
    result = invoke("landscape", run_dir, "--mode", "1d", "--points", "7", "--limit", "100")
    assert result.exit_code == 0, result.output
    figure = run_dir / "landscape_1d.png"
    assert figure.read_bytes()[:8] == PNG
    assert "trained loss" in result.output
    figure.unlink()


@pytest.mark.slow
def test_errors_are_one_line_with_exit_2(run_dir, tmp_path):
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    os.remove(old / "checkpoints" / "init.npz")  # a run made before init.npz existed
    result = invoke("landscape", old, "--mode", "line")
    assert result.exit_code == 2 and "no checkpoints/init.npz" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert invoke("landscape", old, "--mode", "1d", "--points", "3", "--limit", "50").exit_code == 0
    (tmp_path / "empty").mkdir()
    for not_a_run in (tmp_path / "empty", tmp_path / "missing"):
        result = invoke("landscape", not_a_run)
        assert result.exit_code == 2 and "not a run directory" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
