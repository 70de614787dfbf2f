"""The 2-D test functions: gradients and Hessians against finite differences, critical points, the command."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.plots import first_outside, surface_figure, symlog_ticks, value_axis
from cnntrain.surface import FUNCTIONS, classify, trajectory


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_gradient_and_hessian_match_finite_differences(name):
    fn = FUNCTIONS[name]
    rng = np.random.default_rng(0)
    for p in rng.uniform(-1.2, 1.2, (5, 2)):
        e = 1e-6
        num_g = np.array([(fn.f(*(p + e * d)) - fn.f(*(p - e * d))) / (2 * e) for d in np.eye(2)])
        num_h = np.array([(fn.grad(*(p + e * d)) - fn.grad(*(p - e * d))) / (2 * e) for d in np.eye(2)])
        np.testing.assert_allclose(fn.grad(*p), num_g, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fn.hess(*p), num_h, rtol=1e-5, atol=1e-5)


def test_critical_points_are_classified():
    assert classify(FUNCTIONS["saddle"].hess(0.0, 0.0)) == "saddle"
    assert classify(FUNCTIONS["rosenbrock"].hess(1.0, 1.0)) == "minimum"
    assert classify(FUNCTIONS["beale"].hess(3.0, 0.5)) == "minimum"
    assert classify(FUNCTIONS["poly"].hess(0.0, 0.0)) == "saddle"
    x = (4 / 5) ** (1 / 3)  # 5x^4 = 4y and y = x
    assert np.allclose(FUNCTIONS["poly"].grad(x, x), 0) and classify(FUNCTIONS["poly"].hess(x, x)) == "minimum"
    assert classify(-FUNCTIONS["ravine"].hess(0, 0)) == "maximum"
    assert classify(np.zeros((2, 2))) == "undetermined"


def test_momentum_escapes_the_saddle_where_gradient_descent_stalls():
    fn = FUNCTIONS["saddle"]
    start = (-1.5, 0.0)  # exactly on the ridge: no gradient pushes y away from 0
    sgd = trajectory(fn, "sgd", 0.05, 200, start)
    assert np.hypot(*sgd[-1]) < 1e-3, "plain gradient descent converges to the saddle point"
    noisy = trajectory(fn, "sgd", 0.05, 200, start, noise=0.01)
    assert abs(noisy[-1][1]) > 1, "gradient noise pushes it off the ridge"
    sgd_off, mom_off = (trajectory(fn, o, 0.05, 40, (-1.5, 1e-4)) for o in ("sgd", "momentum"))
    assert abs(mom_off[-1][1]) > abs(sgd_off[-1][1]), "momentum leaves the saddle faster"


@pytest.mark.parametrize("out", ["s.png", pytest.param("s.gif", marks=pytest.mark.slow)])
def test_surface_command_writes_a_figure_and_reports_end_points(tmp_path, out):
    path = tmp_path / out
    result = CliRunner().invoke(cli, ["surface", "--function", "poly", "--optimizers", "sgd,adam", "--steps", "300",
                                      "--start", "0.5,0.5", "--lr", "adam=0.05", "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert path.stat().st_size > 10_000
    sgd_line = next(line for line in result.output.splitlines() if line.startswith("sgd"))
    assert "minimum" in sgd_line and "0.928" in sgd_line
    result = CliRunner().invoke(cli, ["surface", "--function", "rosenbrok"])
    assert result.exit_code == 2 and "did you mean 'rosenbrock'" in result.output


def saddle_paths(optimizers, steps=60):
    """The README's saddle figure: --optimizers ... --steps 60 --start=-1.5,0.001 (lr 0.05)."""
    fn = FUNCTIONS["saddle"]
    return fn, {f"{o} (lr 0.05)": trajectory(fn, o, 0.05, steps, (-1.5, 0.001)) for o in optimizers}


def figure_axes(name, fn, paths):
    import matplotlib.pyplot as plt

    fig, ax, ax2, _, _ = surface_figure(name, fn, paths)
    fig.canvas.draw()  # tick labels and limits as they are drawn
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    notes = [t.get_text() for t in ax2.texts]
    state = ax2.get_yscale(), ax2.get_ylabel(), ax2.get_ylim(), legend, notes, ax2.yaxis.get_major_locator()()
    plt.close(fig)
    return state


def test_a_runaway_path_makes_the_value_axis_symlog_and_says_so():
    fn, paths = saddle_paths(["sgd", "momentum", "adam"])
    values = {k: fn.f(p[:, 0], p[:, 1]) for k, p in paths.items()}
    assert values["momentum (lr 0.05)"].min() < -1e7, "the README's momentum path no longer runs away"
    axis = value_axis(values, fn.f(*np.meshgrid(np.linspace(-2, 2, 300), np.linspace(-2, 2, 300))))
    assert axis["scale"] == "symlog" and axis["linthresh"] == 4.0  # max |x^2 - y^2| over [-2, 2]^2
    assert list(axis["runaway"]) == ["momentum (lr 0.05)"], "only momentum leaves the tame range by 100x"
    scale, label, (low, high), legend, notes, ticks = figure_axes("saddle", fn, paths)
    assert scale == "symlog" and "symlog" in label and "\u00b14" in label, label
    assert low <= values["momentum (lr 0.05)"].min() and high >= 2.25, "every curve's whole path is on the axis"
    assert len(notes) == 1 and notes[0].startswith("runs away: momentum (lr 0.05) reaches f = -9.04e+07"), notes
    assert {-4.0, 0.0, 4.0} <= set(ticks) and -1e8 in ticks, ticks
    assert "momentum (lr 0.05), leaves the plot at step 30" in legend, legend
    assert "sgd (lr 0.05)" in legend, "sgd stays in the plotted region"


@pytest.mark.parametrize("name,optimizers,scale", [
    ("saddle", ["sgd", "adam"], "linear"),  # adam leaves the plot, but f only reaches -14: no run-away
    ("two_minima", ["sgd", "momentum"], "linear"),
    ("rosenbrock", ["sgd", "adam"], "log"),
])
def test_tame_paths_keep_a_plain_value_axis(name, optimizers, scale):
    fn = FUNCTIONS[name]
    paths = {o: trajectory(fn, o, fn.lr, 100, fn.start) for o in optimizers}
    got, label, _, _, notes, _ = figure_axes(name, fn, paths)
    assert got == scale and "symlog" not in label and notes == [], (got, label, notes)


def test_value_axis_decisions_on_hand_made_values():
    region = np.array([[-4.0, 0.0], [1.0, 4.0]])
    assert value_axis({"a": np.array([3.0, 1.0, 0.5])}, region)["scale"] == "log"
    assert value_axis({"a": np.array([3.0, -1.0, -399.0])}, region)["scale"] == "linear"  # within 100 x 4
    axis = value_axis({"a": np.array([3.0, -1.0]), "b": np.array([2.0, -500.0, np.nan])}, region)
    assert axis["scale"] == "symlog" and axis["runaway"] == {"b": -500.0}
    assert axis["ticks"] == [-1000.0, -100.0, -4.0, -2.0, 0.0, 2.0, 4.0]


def test_symlog_ticks_and_first_outside():
    assert symlog_ticks(4.0, -9e7, 2.25) == [-(10.0**k) for k in range(8, 1, -1)] + [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert symlog_ticks(4.0, -3.0, 500.0) == [-4.0, -2.0, 0.0, 2.0, 4.0, 100.0, 1000.0]
    p = np.array([[0.0, 0.0], [1.0, 1.9], [1.0, 2.1], [0.0, 0.0]])
    assert first_outside(p, (-2, 2), (-2, 2)) == 2 and first_outside(p[:2], (-2, 2), (-2, 2)) is None


@pytest.mark.parametrize("args,message", [
    (["--start", "1,x"], "error: --start: expected X,Y, got '1,x'"),
    (["--start", "1,2,3"], "error: --start: expected X,Y, got '1,2,3'"),
    (["--lr", "adam=fast"], "error: --lr: expected LR or NAME=LR, got 'adam=fast'"),
])
def test_bad_start_and_lr_are_one_line_usage_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["surface", *args, "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 2 and result.output.strip() == message, result.output
    assert not (tmp_path / "s.png").exists()
