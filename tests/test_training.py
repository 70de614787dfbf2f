"""Batch modes, gradient accumulation, lr scaling, init_from, and the schedule a run really uses."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.build import build_model
from cnntrain.data.loader import BatchLoader
from cnntrain.data.transforms import Preprocess
from cnntrain.registry import LOSSES, OPTIMIZERS
from cnntrain.train import Callback, fit, train_step

SPECS = [("conv2d", {"filters": 3, "kernel_size": 3}), ("relu", {}), ("flatten", {}), ("dense", {"units": 4})]


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8), rng.integers(0, 4, n)


def model64():
    return build_model(SPECS, (1, 6, 6), np.random.default_rng(0)).astype(np.float64)


def test_iterations_per_epoch_is_ceil_n_over_batch_and_drop_last():
    x, y = data(1000)
    pre = Preprocess([], 1)
    assert len(BatchLoader(x, y, 10, pre)) == 100
    assert len(BatchLoader(x, y, 64, pre)) == 16  # ceil(1000 / 64)
    assert len(BatchLoader(x, y, 64, pre, drop_last=True)) == 15
    sizes = [len(b) for b, _ in BatchLoader(x, y, 64, pre).epoch(0)]
    assert sizes == [64] * 15 + [40]
    seen = np.concatenate([yb for _, yb in BatchLoader(x, y, 64, pre, seed=3).epoch(0)])
    assert sorted(seen.tolist()) == sorted(y.tolist()), "an epoch visits every sample once"


def test_chunked_full_batch_step_equals_one_step_on_the_mean_gradient():
    x, y = data(50)
    pre = Preprocess([], 1, dtype=np.float64)
    loss = LOSSES.create("softmax_cross_entropy")
    a, b = model64(), model64()
    sgd_a, sgd_b = OPTIMIZERS.create("sgd", {"lr": 0.1}), OPTIMIZERS.create("sgd", {"lr": 0.1})
    # reference: the whole batch in one forward/backward pass
    la, _, _, _ = train_step(a, loss, sgd_a, x, y, pre, 0.1, chunk_size=50)
    # chunks of 7 (uneven: 7*7 + 1): gradients weighted by chunk length
    lb, _, _, _ = train_step(b, loss, sgd_b, x, y, pre, 0.1, chunk_size=7)
    assert lb == pytest.approx(la, rel=1e-12)
    for k, v in a.named_params().items():
        np.testing.assert_allclose(b.named_params()[k], v, rtol=1e-12, atol=1e-14)


def test_momentum_schedule_sets_mu_before_each_step():
    x, y = data(20)
    model = model64()
    opt = OPTIMIZERS.create("momentum", {"lr": 0.01})
    seen = []

    class Spy(Callback):
        def on_step_end(self, s, logs):
            seen.append((logs["momentum"], opt.mu))

    loader = BatchLoader(x, y, 5, Preprocess([], 1, dtype=np.float64))
    fit(model, LOSSES.create("softmax_cross_entropy"), opt, lambda s: 0.01, loader, None, 1, [Spy()],
        momentum=lambda s: 0.5 + 0.1 * s)
    assert seen == [(0.5, 0.5), (0.6, 0.6), (0.7, 0.7), (0.8, 0.8)]


SMALL = """
name: sched
data: {dataset: mnist, download: false, validation: 100, limit_train: 320, limit_val: 100, limit_test: 100}
model:
  layers: [flatten, {dense: {units: 10}}]
optimizer: {name: momentum, lr: 0.05}
schedule: {name: cosine, warmup_steps: 3, interval: step}
momentum_schedule: {name: linear, start: 0.5, end: 0.9, duration: 1}
train: {epochs: 2, batch_size: 32}
"""


@pytest.mark.slow
def test_schedule_command_matches_the_lr_a_run_records(tmp_path):
    cfg = tmp_path / "sched.yaml"
    cfg.write_text(SMALL)
    runner = CliRunner()
    result = runner.invoke(cli, ["schedule", str(cfg), "--csv", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "step,epoch,lr,momentum" and len(lines) == 1 + 20  # 320/32 = 10 steps x 2 epochs
    assert (tmp_path / "s.png").stat().st_size > 0
    first = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert float(first["lr"]) == 0.0 and float(first["momentum"]) == 0.5  # warmup from 0; ramp from 0.5
    result = runner.invoke(cli, ["run", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = list(csv.DictReader(open(run_dir / "steps.csv")))
    recorded = [f"{r['step']},{r['epoch']},{r['lr']},{r['momentum']}" for r in rows]
    assert recorded == lines[1:]


def test_lr_scaling_and_init_from(tmp_path):
    from cnntrain.config import load_config
    from cnntrain.errors import ConfigError
    from cnntrain.build import init_from, resolve

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(SMALL)
    cfg = load_config(cfg_path, ["optimizer.lr_scaling=linear", "optimizer.base_batch_size=256"])
    assert cfg.base_lr(1000) == pytest.approx(0.05 * 32 / 256)
    cfg = load_config(cfg_path, ["train.batch_size=full"])
    assert cfg.batch_size(1234) == 1234 and cfg.chunk_size(1234) == 1000

    model = resolve(cfg).network((1, 28, 28), 10)
    np.savez(tmp_path / "w.npz", **{"layers.1.W": np.full((784, 10), 0.5, np.float32),
                                    "layers.1.b": np.arange(10, dtype=np.float32)})
    init_from(model, tmp_path / "w.npz", "c.yaml")
    assert np.all(model.named_params()["layers.1.W"] == 0.5) and model.named_params()["layers.1.b"][3] == 3
    np.savez(tmp_path / "bad.npz", **{"layers.1.W": np.zeros((10, 10), np.float32), "layers.1.b": np.zeros(10)})
    with pytest.raises(ConfigError, match=r"model.init_from: .*layers.1.W has shape \(10, 10\), the network needs \(784, 10\)"):
        init_from(model, tmp_path / "bad.npz", "c.yaml")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ConfigError, match="has no layers.1.W, layers.1.b"):
        init_from(model, tmp_path / "other.npz", "c.yaml")


NET = [("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {}),
       ("maxpool2d", {"size": 2}), ("conv2d", {"filters": 6, "kernel_size": 3}), ("relu", {}),
       ("avgpool2d", {"size": 2}), ("flatten", {}), ("dropout", {"rate": 0.2}), ("dense", {"units": 5})]


def test_training_stays_float32_end_to_end():
    rng = np.random.default_rng(0)
    model = build_model(NET, (3, 12, 12), np.random.default_rng(1))
    model.rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    loss = LOSSES.create("softmax_cross_entropy")
    for name in OPTIMIZERS.names():
        opt = OPTIMIZERS.create(name, {"lr": 1e-3})
        h = x
        for layer in model.layers:
            h = layer.forward(h, training=True)
            assert h.dtype == np.float32, f"{layer.registry_name} returned {h.dtype}"
        loss.forward(h, y)
        d = loss.backward()
        assert d.dtype == np.float32
        for layer in reversed(model.layers):
            d = layer.backward(d)
            assert d.dtype == np.float32, f"{layer.registry_name} backward returned {d.dtype}"
        opt.step(model.named_params(), model.named_grads())
        arrays = {**model.named_params(), **model.named_grads(), **model.named_buffers(), **opt.state_dict()}
        wrong = {k: v.dtype for k, v in arrays.items() if k != "optim/t" and v.dtype != np.float32}
        assert not wrong, f"{name}: not float32: {wrong}"


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 12, 12))
    dy = rng.standard_normal((8, 5))
    outs = {}
    for dtype in (np.float32, np.float64):
        model = build_model(NET[:8] + NET[9:], (3, 12, 12), np.random.default_rng(1)).astype(dtype)
        y = model.forward(x.astype(dtype), training=True)
        dx = model.backward(dy.astype(dtype), input_grad=True)
        outs[dtype] = (y, dx, model.named_grads())
    (y32, dx32, g32), (y64, dx64, g64) = outs[np.float32], outs[np.float64]
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-3, atol=1e-5)
    for key in g64:
        np.testing.assert_allclose(g32[key], g64[key], rtol=1e-3, atol=1e-4, err_msg=key)


def test_progress_bar_on_a_terminal_and_plain_lines_otherwise():
    import io

    from cnntrain.progress import ProgressBar

    x, y = data(40)
    for bar in (True, False):
        stream = io.StringIO()
        model = build_model(SPECS, (1, 6, 6), np.random.default_rng(0))
        loader = BatchLoader(x, y, 8, Preprocess([], 1))
        fit(model, LOSSES.create("softmax_cross_entropy"), OPTIMIZERS.create("sgd", {"lr": 0.01}),
            lambda s: 0.01, loader, (x[:8], y[:8]), 2, [ProgressBar(2, stream=stream, bar=bar)])
        text = stream.getvalue()
        if bar:  # tqdm: a bar per epoch with loss, accuracy and lr
            assert "epoch 1/2" in text and "5/5" in text and "loss=" in text and "acc=" in text and "lr=" in text
        else:  # one line per epoch, nothing else
            lines = text.strip().splitlines()
            assert len(lines) == 2 and lines[0].startswith("epoch 1/2  train_loss ") and "val_acc" in lines[1]


def test_grad_norm_logger_matches_the_sgd_update(tmp_path):
    from cnntrain.callbacks import GradNormLogger
    from cnntrain.runs import read_csv

    x, y = data(16)
    model = build_model(SPECS, (1, 6, 6), np.random.default_rng(0)).astype(np.float64)
    before = {k: v.copy() for k, v in model.named_params().items()}
    logger = GradNormLogger(tmp_path)
    loader = BatchLoader(x, y, 16, Preprocess([], 1, dtype=np.float64), shuffle=False)
    fit(model, LOSSES.create("softmax_cross_entropy"), OPTIMIZERS.create("sgd", {"lr": 0.1}), lambda s: 0.1,
        loader, None, 1, [logger])
    rows = read_csv(tmp_path / "grad_norms.csv")
    assert list(rows) == ["step", "epoch", "layers.0.grad_norm", "layers.3.grad_norm",
                          "layers.0.update_ratio", "layers.3.update_ratio"]
    for name in ("layers.0", "layers.3"):
        W0, W1 = before[f"{name}.W"], model.named_params()[f"{name}.W"]
        g = (W0 - W1) / 0.1  # sgd: W1 = W0 - lr * g
        assert rows[f"{name}.grad_norm"][0] == pytest.approx(np.linalg.norm(g), rel=1e-8)
        # update / weight = lr * ||g|| / ||W0||
        assert rows[f"{name}.update_ratio"][0] == pytest.approx(0.1 * np.linalg.norm(g) / np.linalg.norm(W0), rel=1e-8)


def test_hooks_run_in_declared_order_and_see_the_final_gradients():
    """fit() calls callbacks by `order`, not list position; on_before_update sees the clipped gradient the
    optimizer applies and on_after_update the updated weights; a non-finite loss raises Diverged."""
    from cnntrain.train import Diverged, global_norm

    x, y = data(8)
    model = model64()
    calls = []

    class Recorder(Callback):
        def __init__(self, name, order):
            self.name, self.order = name, order

        def on_before_update(self, state, params, grads):
            calls.append((self.name, "before", global_norm(grads), params["layers.3.W"].copy()))

        def on_after_update(self, state, params):
            calls.append((self.name, "after", None, params["layers.3.W"].copy()))

        def on_step_end(self, state, logs):
            calls.append((self.name, "step", None, None))

    late, early = Recorder("late", 10), Recorder("early", -1)
    loader = BatchLoader(x, y, 8, Preprocess([], 1, dtype=np.float64), shuffle=False)
    fit(model, LOSSES.create("softmax_cross_entropy"), OPTIMIZERS.create("sgd", {"lr": 0.5}), lambda s: 0.5,
        loader, None, 1, [late, early], grad_clip_norm=1e-3)
    assert [(name, kind) for name, kind, _, _ in calls] == [
        ("early", "before"), ("late", "before"), ("early", "after"), ("late", "after"), ("early", "step"),
        ("late", "step")]
    (_, _, norm, w_before), (_, _, _, w_after) = calls[0], calls[2]
    assert norm == pytest.approx(1e-3, rel=1e-9), "the hook sees the gradient after clipping"
    assert np.linalg.norm(w_after - w_before) <= 0.5 * 1e-3 * (1 + 1e-9), "sgd moved by lr * the clipped gradient"

    nan_input = BatchLoader(x, y, 8, lambda u8: np.full(u8.shape, np.nan), shuffle=False)
    with pytest.raises(Diverged, match="training diverged: loss is nan at epoch 1, step 1"):
        fit(model, LOSSES.create("softmax_cross_entropy"), OPTIMIZERS.create("sgd", {"lr": 0.5}), lambda s: 0.5,
            nan_input, None, 1, [])
