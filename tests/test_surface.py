"""The 2-D test functions: gradients and Hessians against finite differences, critical points, the command."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
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


@pytest.mark.parametrize("out", ["s.png", "s.gif"])
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
