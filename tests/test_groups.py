"""Grouped `cnntrain compare` (--group-by, --mean-over-seeds) and the sweep's sensitivity plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.collections import PolyCollection
from test_compare import make_run

from cnntrain.cli import cli
from cnntrain.compare import ewma, load_runs
from cnntrain.errors import ConfigError
from cnntrain.groups import group_runs, group_table, mean_curve
from cnntrain.plots import compare_figure
from cnntrain.sweep.plots import plot_sensitivity, sensitivity_figure

# best val_acc (value, epoch) of each seed; sgd's mean 0.92, std 0.02 (ddof=1); adam's mean 0.95, std 0.01*sqrt(2)
SGD_BEST = [(0.90, 3), (0.92, 4), (0.94, 2)]
ADAM_BEST = [(0.94, 4), (0.96, 5)]


def sweep_folder(root):
    """sgd lr 0.1 with seeds 0, 1, 2 and adam lr 0.001 with seeds 0, 1; 5 epochs, random val_acc curves."""
    rng = np.random.default_rng(0)
    curves = {}
    for opt, lr, bests in (("sgd", 0.1, SGD_BEST), ("adam", 0.001, ADAM_BEST)):
        for seed, best in enumerate(bests):
            curve = rng.uniform(0.5, 0.9, size=5)
            make_run(root, f"{opt}-s{seed}", 5, opt, lr, seed=seed, val_acc=list(curve), best=best,
                     test_accuracy=best[0] - 0.01)
            curves[(opt, seed)] = curve
    return curves


def test_group_by_key_gives_one_group_per_value(tmp_path):
    sweep_folder(tmp_path)
    runs = load_runs([tmp_path])
    groups = group_runs(runs, ["optimizer.name"])
    # folders sort adam-s0, adam-s1, sgd-s0, ...: groups keep the order of their first runs
    assert [(g.label, g.n, g.params) for g in groups] == [("optimizer.name=adam", 2, {"optimizer.name": "adam"}),
                                                          ("optimizer.name=sgd", 3, {"optimizer.name": "sgd"})]
    assert [r.path.name for r in groups[1].runs] == ["sgd-s0", "sgd-s1", "sgd-s2"]
    by_two = group_runs(runs, ["optimizer.name", "seed"])
    assert len(by_two) == 5 and by_two[0].label == "optimizer.name=adam, seed=0" and {g.n for g in by_two} == {1}
    # no grouping asked: each run is a group of its own, labelled as the run
    assert [(g.label, g.n) for g in group_runs(runs)] == [(r.label, 1) for r in runs]


def test_mean_over_seeds_groups_configs_equal_but_for_seed_and_name(tmp_path):
    for lr in (0.1, 0.01):
        for seed in (0, 1, 2):
            make_run(tmp_path, f"lr{lr}-s{seed}", 3, "sgd", lr, seed=seed)
    runs = load_runs([tmp_path])
    groups = group_runs(runs, over_seeds=True)
    # the label is what differs between the groups; the seed differs within them and is no part of it
    assert [(g.label, g.n, g.params) for g in groups] == [("optimizer.lr=0.01", 3, {"optimizer.lr": 0.01}),
                                                          ("optimizer.lr=0.1", 3, {"optimizer.lr": 0.1})]
    assert {r.flat["seed"] for r in groups[0].runs} == {0, 1, 2}
    one = group_runs(load_runs([tmp_path / "lr0.1-s*"]), over_seeds=True)
    assert [(g.label, g.n) for g in one] == [("exp", 3)]  # one configuration: its name
    assert [g.label for g in group_runs(runs, over_seeds=True, label_keys=["optimizer.lr"])] == [
        "optimizer.lr=0.01", "optimizer.lr=0.1"]


def test_mean_curve_is_the_mean_over_runs_with_a_min_max_band(tmp_path):
    curves = sweep_folder(tmp_path)
    sgd = group_runs(load_runs([tmp_path]), ["optimizer.name"])[1]
    stack = np.stack([curves[("sgd", s)] for s in range(3)])  # (3 runs, 5 epochs)
    x, mean, lo, hi = mean_curve(sgd, "val_acc", "epoch")
    np.testing.assert_array_equal(x, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(mean, stack.mean(axis=0))
    np.testing.assert_allclose(lo, stack.min(axis=0))
    np.testing.assert_allclose(hi, stack.max(axis=0))
    x, mean, _, _ = mean_curve(sgd, "val_acc", "step")  # no steps.csv: the epochs' step column, 10 per epoch
    np.testing.assert_array_equal(x, [10, 20, 30, 40, 50])
    np.testing.assert_allclose(mean, stack.mean(axis=0))
    # smoothing applies to each run before the mean (ewma is linear, so the same as smoothing the mean)
    _, smoothed, lo, _ = mean_curve(sgd, "val_acc", "epoch", smooth=0.5)
    np.testing.assert_allclose(smoothed, np.mean([ewma(c, 0.5) for c in stack], axis=0))
    np.testing.assert_allclose(lo, np.min([ewma(c, 0.5) for c in stack], axis=0))


def test_mean_curve_of_ragged_runs_and_time_axis(tmp_path):
    a, b, c = [0.5, 0.6, 0.7], [0.4, 0.5, 0.6, 0.8, 0.9], [0.6, 0.7, 0.8, 0.6, 0.7]
    make_run(tmp_path, "s0", 3, "sgd", 0.1, seed=0, val_acc=a, seconds=1.0)  # stopped early
    make_run(tmp_path, "s1", 5, "sgd", 0.1, seed=1, val_acc=b, seconds=2.0)
    make_run(tmp_path, "s2", 5, "sgd", 0.1, seed=2, val_acc=c, seconds=3.0)
    (group,) = group_runs(load_runs([tmp_path]), ["optimizer.name"])
    x, mean, lo, hi = mean_curve(group, "val_acc", "epoch")
    np.testing.assert_array_equal(x, [1, 2, 3, 4, 5])
    # epochs 1-3: all three runs; epochs 4-5: the two that got there
    np.testing.assert_allclose(mean, [0.5, 0.6, 0.7, 0.7, 0.8])
    np.testing.assert_allclose(lo, [0.4, 0.5, 0.6, 0.6, 0.7])
    np.testing.assert_allclose(hi, [0.6, 0.7, 0.8, 0.8, 0.9])
    # time: the mean cumulative seconds of the runs at each epoch, (1e + 2e + 3e) / 3 = 2e, then (2e + 3e) / 2
    x, mean_t, _, _ = mean_curve(group, "val_acc", "time")
    np.testing.assert_allclose(x, [2, 4, 6, 10, 12.5])
    np.testing.assert_allclose(mean_t, mean)


def test_group_table_mean_std_and_best_first_for_max_and_min_monitors(tmp_path):
    sweep_folder(tmp_path)
    rows = group_table(group_runs(load_runs([tmp_path]), ["optimizer.name"]))
    sgd, adam = rows[1], rows[0]  # adam's higher mean val_acc first
    assert [r["label"] for r in rows] == ["optimizer.name=adam", "optimizer.name=sgd"]
    assert sgd["n"] == 3 and sgd["mode"] == "max" and sgd["monitor"] == "val_acc"
    assert sgd["mean"] == pytest.approx(0.92) and sgd["std"] == pytest.approx(0.02)  # sqrt((0.02² + 0 + 0.02²) / 2)
    assert sgd["values"] == pytest.approx([0.90, 0.92, 0.94]) and sgd["best_epochs"] == [3, 4, 2]
    assert sgd["best_epoch"] == pytest.approx(3.0)
    assert sgd["test_acc"]["mean"] == pytest.approx(0.91) and sgd["test_acc"]["std"] == pytest.approx(0.02)
    assert sgd["test_acc"]["n"] == 3 and len(sgd["runs"]) == 3 and sgd["runs"][0].endswith("sgd-s0")
    assert adam["mean"] == pytest.approx(0.95) and adam["std"] == pytest.approx(0.01 * np.sqrt(2))
    assert adam["best_epoch"] == pytest.approx(4.5)

    # a loss monitor: the smallest mean first, though its group comes first in the folder
    losses = tmp_path / "losses"
    for seed, (opt, best) in enumerate([("adam", (0.30, 2)), ("adam", (0.34, 3)), ("sgd", (0.20, 4))]):
        make_run(losses, f"{opt}-s{seed}", 4, opt, 0.1, seed=seed, monitor="val_loss", best=best, test_accuracy=None)
    rows = group_table(group_runs(load_runs([losses]), ["optimizer.name"]))
    assert [(r["label"], r["mode"], r["n"]) for r in rows] == [("optimizer.name=sgd", "min", 1),
                                                               ("optimizer.name=adam", "min", 2)]
    assert rows[0]["mean"] == pytest.approx(0.20) and rows[0]["std"] is None  # one run: no spread
    assert rows[1]["mean"] == pytest.approx(0.32) and rows[1]["test_acc"] is None


def test_runs_monitoring_different_metrics_do_not_average(tmp_path):
    make_run(tmp_path, "a", 3, "sgd", 0.1, seed=0, monitor="val_loss", best=(0.3, 2))
    make_run(tmp_path, "b", 3, "sgd", 0.1, seed=1, best=(0.9, 2))
    with pytest.raises(ConfigError, match="monitored different metrics"):
        group_table(group_runs(load_runs([tmp_path]), ["optimizer.name"]))


def test_figure_draws_one_band_per_group(tmp_path):
    sweep_folder(tmp_path)
    runs = load_runs([tmp_path])
    groups = group_runs(runs, ["optimizer.name"])
    fig = compare_figure(runs, [("val_acc", ("val_acc",)), ("loss", ("train_loss", "val_loss"))], "epoch", None,
                         False, groups)
    acc, loss = fig.axes
    bands = [c for c in acc.collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(groups) == 2 and len(acc.lines) == 2
    assert len([c for c in loss.collections if isinstance(c, PolyCollection)]) == 4  # train and val per group
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["optimizer.name=adam (n=2)",
                                                                  "optimizer.name=sgd (n=3)"]
    _, mean, lo, _ = mean_curve(groups[1], "val_acc", "epoch")
    np.testing.assert_allclose(acc.lines[1].get_ydata(), 100 * mean)  # accuracies in percent
    np.testing.assert_allclose(bands[1].get_paths()[0].vertices[:, 1].min(), 100 * lo.min())
    assert bands[0].get_facecolor()[0][3] == pytest.approx(0.2)
    ungrouped = compare_figure(runs, [("val_acc", ("val_acc",))], "epoch", None, False)
    assert len(ungrouped.axes[0].lines) == 5 and not ungrouped.axes[0].collections


def test_cli_group_by_writes_the_figure_and_a_grouped_table(tmp_path):
    sweep_folder(tmp_path / "runs")
    out = tmp_path / "g.png"
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "runs"), "--group-by", "optimizer.name", "--out",
                                      str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["group", "n", "monitor", "best", "(mean", "±", "std)", "at", "epoch", "(mean)",
                                "test", "acc", "(mean", "±", "std)"]
    # adam: best 0.94, 0.96 -> 95.00 ± 1.41% (0.01*sqrt(2)); sgd: 0.90, 0.92, 0.94 -> 92.00 ± 2.00%; test acc 0.01 lower
    assert lines[1].split() == ["optimizer.name=adam", "2", "val_acc", "95.00", "±", "1.41%", "4.5",
                                "94.00", "±", "1.41%"]
    assert lines[2].split() == ["optimizer.name=sgd", "3", "val_acc", "92.00", "±", "2.00%", "3.0",
                                "91.00", "±", "2.00%"]
    assert lines[3] == f"figure: {out}" and out.stat().st_size > 10_000
    for extra in (["--x", "time", "--smooth", "0.9", "--logy"], ["--x", "step", "--metric", "val_loss"]):
        result = CliRunner().invoke(cli, ["compare", str(tmp_path / "runs"), "--mean-over-seeds", "--out", str(out),
                                          *extra])
        assert result.exit_code == 0, result.output
        assert "optimizer.name=adam" in result.output


def test_cli_group_json_rows(tmp_path):
    sweep_folder(tmp_path / "runs")
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "runs"), "--mean-over-seeds", "--json", "--out",
                                      str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["figure"] == str(tmp_path / "g.png") and "runs" not in data
    adam, sgd = data["groups"]
    # the groups differ in optimizer name, lr and (adam's) betas: labelled by the keys every run has
    assert sgd["label"] == "optimizer.name=sgd, optimizer.lr=0.1"
    assert (sgd["n"], sgd["values"], sgd["best_epochs"]) == (3, [0.9, 0.92, 0.94], [3, 4, 2])
    assert sgd["mean"] == pytest.approx(0.92) and sgd["std"] == pytest.approx(0.02)
    assert [p.rsplit("/", 1)[1] for p in sgd["runs"]] == ["sgd-s0", "sgd-s1", "sgd-s2"]
    assert sgd["test_acc"]["values"] == pytest.approx([0.89, 0.91, 0.93]) and adam["n"] == 2


@pytest.mark.parametrize("args, message", [
    (["--group-by", "optimizer.nam"],
     "error: --group-by optimizer.nam: no run's config.yaml has this key (did you mean 'optimizer.name'?)"),
    (["--group-by", "optimizer.name", "--mean-over-seeds"],
     "error: --group-by and --mean-over-seeds exclude each other: give one of them"),
])
def test_cli_group_errors_are_one_line_exit_2(tmp_path, args, message):
    sweep_folder(tmp_path / "runs")
    out = tmp_path / "g.png"
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "runs"), "--out", str(out), *args])
    assert result.exit_code == 2 and result.output.splitlines() == [message]
    assert "Traceback" not in result.output and not out.exists()


SENSITIVITY = [(1e-3, 0, 0.90), (1e-3, 1, 0.92), (1e-2, 0, 0.95), (1e-2, 1, 0.97), (1e-1, 0, float("nan")),
               (1e-1, 1, 0.5)]


@pytest.mark.parametrize("log_x", [True, False])
def test_sensitivity_plot_marks_seeds_mean_and_diverged(tmp_path, log_x):
    out = plot_sensitivity("optimizer.lr", SENSITIVITY, "val_acc", log_x, tmp_path / "s.png")
    assert out == tmp_path / "s.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000
    fig = sensitivity_figure("optimizer.lr", SENSITIVITY, "val_acc", log_x)
    (ax,) = fig.axes
    assert ax.get_xscale() == ("log" if log_x else "linear")
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("val_acc against optimizer.lr", "optimizer.lr",
                                                                 "val_acc")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 0", "seed 1", "mean", "diverged"]
    seed0, seed1, mean, diverged = ax.lines
    np.testing.assert_allclose(seed0.get_ydata(), [0.90, 0.95])  # the diverged point is not a seed marker
    np.testing.assert_allclose(mean.get_xdata(), [1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(mean.get_ydata(), [0.91, 0.96, 0.5])  # per value, over its finite trials
    assert diverged.get_marker() == "x" and list(diverged.get_xdata()) == [1e-1]
    assert diverged.get_transform() == ax.get_xaxis_transform()  # y in axes coordinates: the bottom of the axis


@pytest.mark.parametrize("log_x", [True, False])
def test_sensitivity_plot_of_a_single_point(tmp_path, log_x):
    out = plot_sensitivity("optimizer.lr", [(0.01, 0, 0.9)], "val_acc", log_x, tmp_path / "one.png")
    assert out.stat().st_size > 5_000
    fig = sensitivity_figure("optimizer.lr", [(0.01, 0, 0.9)], "val_acc", log_x)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["seed 0", "mean"]
    low, high = fig.axes[0].get_xlim()
    assert low < 0.01 < high
    out = plot_sensitivity("optimizer.lr", [(0.01, 0, float("inf"))], "val_acc", log_x, tmp_path / "div.png")
    assert out.stat().st_size > 5_000  # only a diverged trial: drawn, not an empty figure
    with pytest.raises(ValueError, match="log x axis needs optimizer.lr > 0"):
        sensitivity_figure("optimizer.lr", [(0.0, 0, 0.9)], "val_acc", True)


def test_sensitivity_plot_draws_one_mean_line_per_grid_combination():
    points = [(v, s, m + shift, name) for name, shift in (("optimizer.name=sgd", 0.0), ("optimizer.name=adam", 0.01))
              for v, s, m in SENSITIVITY if math.isfinite(m)]
    fig = sensitivity_figure("optimizer.lr", points, "val_acc", True)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["optimizer.name=sgd (mean)", "optimizer.name=adam (mean)"]
    means = [line for line in ax.lines if line.get_label().endswith("(mean)")]
    np.testing.assert_allclose(means[0].get_ydata(), [0.91, 0.96, 0.5])
    np.testing.assert_allclose(means[1].get_ydata(), [0.92, 0.97, 0.51])
    assert means[0].get_color() != means[1].get_color()
    seeds = [line for line in ax.lines if not line.get_label().endswith("(mean)")]
    assert {line.get_color() for line in seeds[:2]} == {means[0].get_color()}  # a series' points share its colour
