"""The learning-rate range test: the ramp, the smoothing, the stop rule, each suggestion, the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.insight import lr_find as lf

PNG = b"\x89PNG\r\n\x1a\n"


def test_ramp_is_geometric_from_start_to_end():
    lrs = lf.ramp(1e-7, 10.0, 100)
    assert len(lrs) == 100 and lrs[0] == 1e-7 and lrs[-1] == 10.0
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, (10.0 / 1e-7) ** (1 / 99), rtol=1e-12)  # one constant factor per step
    np.testing.assert_allclose(lrs[37], 1e-7 * (1e8) ** (37 / 99), rtol=1e-12)  # start * (end/start)^(i/(steps-1))
    with pytest.raises(ValueError):
        lf.ramp(1.0, 0.1, 10)


def test_smoothing_is_the_bias_corrected_average():
    test = lf.RangeTest()
    for loss in (2.0, 1.0, 3.0):
        assert test.record(loss) is None
    # avg0 = 0.02*2 = 0.04            -> 0.04 / (1 - 0.98)      = 2.0
    # avg1 = 0.98*0.04 + 0.02*1 = 0.0592  -> 0.0592 / (1 - 0.98^2)  = 0.0592 / 0.0396
    # avg2 = 0.98*0.0592 + 0.02*3 = 0.118016 -> 0.118016 / (1 - 0.98^3) = 0.118016 / 0.058808
    np.testing.assert_allclose(test.smoothed, [2.0, 0.0592 / 0.0396, 0.118016 / 0.058808], rtol=1e-12)
    assert test.losses == [2.0, 1.0, 3.0]


def test_stop_rule_at_four_times_the_best():
    test = lf.RangeTest(beta=0.0)  # no smoothing: smoothed == loss, so the index is read off the sequence
    reasons = [test.record(v) for v in (1.0, 0.5, 0.6, 1.9, 2.0, 2.1, 5.0)]
    # best 0.5 from index 1 on: 2.0 is not above 4 * 0.5, 2.1 is
    assert reasons[:5] == [None] * 5 and "exceeded 4 times its best" in reasons[5]


def test_stop_rule_with_the_default_smoothing_against_an_independent_computation():
    losses = np.concatenate([np.full(20, 2.0) - np.linspace(0, 1.5, 20), 0.5 * 1.4 ** np.arange(1, 30)])
    b = 0.98
    i = np.arange(len(losses))
    # smoothed_i = sum_k (1 - b) b^(i-k) loss_k / (1 - b^(i+1))
    smoothed = np.array([((1 - b) * b ** (n - i[: n + 1]) * losses[: n + 1]).sum() / (1 - b ** (n + 1)) for n in i])
    expected = next(n for n in range(1, len(i)) if smoothed[n] > 4 * smoothed[:n].min())
    test = lf.RangeTest()
    stop = next(n for n, v in enumerate(losses) if test.record(float(v)))
    assert stop == expected and len(test.losses) == expected + 1
    np.testing.assert_allclose(test.smoothed, smoothed[: expected + 1], rtol=1e-10)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_loss_that_is_not_finite_stops_the_test(bad):
    test = lf.RangeTest()
    assert test.record(2.3) is None and test.record(2.2) is None
    assert test.record(bad) == "the smoothed loss is not finite"
    assert len(test.smoothed) == 3


def test_valley_is_the_middle_of_the_longest_descent():
    lrs = np.geomspace(1e-6, 1.0, 60)
    curve = np.concatenate([np.linspace(1.0, 1.9, 10),      # rising, below where the descent starts
                            np.linspace(2.0, 0.5, 41),      # indices 10..50: the longest strict descent
                            np.linspace(0.6, 3.0, 9)])      # rising again
    curve[30] += 0.05  # a small uptick inside the descent: skipped by the subsequence, not a break
    assert lf.valley(lrs, curve) == lrs[30]  # (10 + 50) // 2


def test_steepest_is_the_most_negative_slope_against_log_lr():
    lrs = np.geomspace(1e-6, 1.0, 61)             # log10 steps of 0.1, 1e-3 at index 30
    curve = 2 - np.tanh(2 * (np.log10(lrs) + 3))  # falls fastest at log10 lr = -3
    assert lf.steepest(lrs, curve) == pytest.approx(1e-3, rel=1e-12)


def test_min_over_10():
    lrs = np.geomspace(1e-6, 1.0, 61)
    curve = (np.log10(lrs) + 2) ** 2 + 0.3        # minimum at lr 1e-2
    assert lf.min_over_10(lrs, curve) == pytest.approx(1e-3, rel=1e-12)


def test_suggest_reads_the_window_of_the_finite_curve():
    lrs = np.geomspace(1e-6, 1.0, 61)
    curve = (np.log10(lrs) + 2) ** 2
    curve[-3:] = [-20.0, np.nan, np.nan]  # 59 finite points: the window is [5, 54), without the last 5
    curve[:5] = -10.0   # the first tenth (5 of 59) is skipped: its minimum must not count
    s = lf.suggest(lrs, curve)
    assert set(s) == {"valley", "steepest", "min/10"}
    assert s["min/10"] == pytest.approx(1e-3, rel=1e-12)
    assert lf.window(59) == slice(5, 54) and lf.window(6) == slice(0, 6)
    assert lf.suggest(lrs[:2], curve[6:8]) is None  # too few points


def test_disagreement_warning_beyond_10x():
    assert lf.disagreement_warning({"valley": 1e-3, "steepest": 2e-3, "min/10": 1e-2}) is None  # exactly 10x
    w = lf.disagreement_warning({"valley": 1e-3, "steepest": 2e-3, "min/10": 2e-2})
    assert w.startswith("warning: the suggestions disagree by 20x") and "\n" not in w
    assert lf.disagreement_warning(None) is None


def canned(**changes):
    r = {"name": "tiny", "optimizer": "adam", "batch_size": 8, "config_lr": 1e-3, "start": 1e-7, "end": 10.0,
         "steps": 20, "lrs": list(np.geomspace(1e-7, 1e-1, 18)), "losses": [2.3] * 17 + [math.inf],
         "smoothed": [2.3] * 17 + [math.inf], "stopped_early": "the smoothed loss is not finite",
         "stopped_at": {"step": 18, "lr": 0.1}, "suggestions": {"valley": 1e-4, "steepest": 3e-3, "min/10": 1e-3},
         "disagreement": 30.0, "seconds": 0.1}
    return {**r, **changes}


@pytest.mark.slow  # draws two figures
def test_command_warns_on_one_stderr_line_and_exits_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lf, "lr_find", lambda exp, start, end, steps, log=None: canned())
    config = tmp_path / "c.yaml"
    config.write_text("name: tiny\nmodel: {layers: [flatten, {dense: {units: 10}}]}\n")
    result = CliRunner().invoke(cli, ["lr-find", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "disagree by 30x" in result.stderr
    assert "valley" in result.stdout and "config lr: 0.001" in result.stdout
    assert (tmp_path / "tiny-lr-find.png").read_bytes()[:8] == PNG
    result = CliRunner().invoke(cli, ["lr-find", str(config), "--json"])
    data = json.loads(result.stdout)  # an infinite loss is null, so the object is standard JSON
    assert data["losses"][-1] is None and data["suggestions"]["valley"] == 1e-4


def test_command_refuses_a_ramp_that_does_not_grow(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: tiny\n")
    result = CliRunner().invoke(cli, ["lr-find", str(config), "--start", "1", "--end", "0.1"])
    assert result.exit_code == 2 and "--end" in result.output


TINY = """
name: tiny_lr
data: {dataset: mnist, download: false, validation: 100, limit_train: 640, limit_val: 100, limit_test: 100,
       augment: [{random_crop: {padding: 2}}]}
model:
  layers:
    - conv2d: {filters: 4, kernel_size: 3}
    - relu
    - maxpool2d: {size: 2}
    - flatten
    - dense: {units: 10}
optimizer: {name: momentum, lr: 0.01, momentum: 0.9}
schedule: {name: warmup_cosine, warmup_epochs: 1}
train: {epochs: 3, batch_size: 16}
"""


@pytest.mark.slow
def test_command_end_to_end_leaves_config_and_runs_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    before = config.read_bytes()
    result = CliRunner().invoke(cli, ["lr-find", str(config), "--steps", "30", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert config.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml", "tiny_lr-lr-find.png"]  # no runs/ directory
    assert (tmp_path / "tiny_lr-lr-find.png").read_bytes()[:8] == PNG
    n = len(r["lrs"])
    assert 10 <= n <= 30 and len(r["losses"]) == len(r["smoothed"]) == n
    np.testing.assert_allclose(r["lrs"], lf.ramp(1e-7, 10.0, 30)[:n], rtol=1e-12)
    assert r["config_lr"] == 0.01 and r["optimizer"] == "momentum"
    if n < 30:
        assert r["stopped_early"] and r["stopped_at"]["step"] == n
    assert set(r["suggestions"]) == {"valley", "steepest", "min/10"}
    s = r["suggestions"]
    lrs, smoothed = np.array(r["lrs"]), np.array([math.nan if v is None else v for v in r["smoothed"]])
    part = lf.window(int(np.isfinite(smoothed).sum()))
    assert s["valley"] in lrs[part] and s["steepest"] in lrs[part]
    assert s["min/10"] == lrs[part][np.argmin(smoothed[part])] / 10
    assert min(r["smoothed"][:5]) > 1.0  # an untrained 10-class network starts near ln 10 or above


@pytest.mark.slow
def test_lr_find_steps_like_training_from_the_configs_initialisation_across_epochs():
    """The range test is train_step at the ramp's lrs from exp.network's weights, epoch 0's batches
    (shuffled, augmented) and then epoch 1's: 45 steps of 40 batches per epoch."""
    from cnntrain.build import build_setup, experiment_from_text
    from cnntrain.data.splits import load_splits
    from cnntrain.train import train_step

    exp = experiment_from_text(TINY, "tiny.yaml")
    r = lf.lr_find(exp, 1e-5, 1e-3, 45)
    assert len(r["losses"]) == 45 and r["stopped_early"] is None
    setup = build_setup(exp, load_splits(exp.cfg))
    assert len(setup.loader) == 40
    batches = [*setup.loader.epoch(0), *setup.loader.epoch(1)][:45]
    expected = [train_step(setup.model, setup.loss, setup.optimizer, x, y, setup.loader.transform, lr,
                           setup.chunk_size, setup.penalty)[0]
                for lr, (x, y) in zip(lf.ramp(1e-5, 1e-3, 45), batches)]
    np.testing.assert_allclose(r["losses"], expected, rtol=1e-6)
