"""The Hessian spectrum (`cnntrain hessian`) and sharpness tracking, held to explicit matrices and to Hessians
assembled column by column from finite differences of float64 gradients."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.build import build_model, experiment_from_dict
from cnntrain.cli import cli
from cnntrain.errors import ConfigError
from cnntrain.insight.hessian import hessian_spectrum, objective_at, sharpness, verdict
from cnntrain.insight.objective import Objective
from cnntrain.insight.spectrum import density, extremes, hutchinson, lanczos, negative_mass, slq
from cnntrain.losses import MSE, L2Penalty, SoftmaxCrossEntropy
from cnntrain.runs import load_checkpoint
from cnntrain.session import resume_run, train_from_config


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def symmetric(eigenvalues, rng) -> np.ndarray:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q: a matrix with exactly this spectrum."""
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (Q * eigenvalues) @ Q.T


def assembled_hessian(obj: Objective, h: float = 1e-5) -> np.ndarray:
    """The full Hessian, column j = (g(w + h e_j) - g(w - h e_j)) / (2h), symmetrised."""
    cols = [(obj.value_and_grad(obj.w + h * e)[1] - obj.value_and_grad(obj.w - h * e)[1]) / (2 * h)
            for e in np.eye(obj.n)]
    H = np.array(cols)
    return (H + H.T) / 2


def plain_lanczos(A: np.ndarray, v: np.ndarray, steps: int) -> np.ndarray:
    """The textbook three-term recurrence without reorthogonalization; its Ritz values (ascending)."""
    q_prev, q, b = np.zeros_like(v), v / np.linalg.norm(v), 0.0
    alpha, beta = [], []
    for _ in range(steps):
        w = A @ q - b * q_prev
        a = q @ w
        w -= a * q
        b = np.linalg.norm(w)
        alpha.append(a)
        beta.append(b)
        q_prev, q = q, w / b
    T = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    return np.linalg.eigvalsh(T)


# --- spectrum.py on explicit matrices ---------------------------------------------------------------------

def test_lanczos_finds_the_extreme_eigenvalues_of_an_explicit_matrix():
    rng = np.random.default_rng(0)
    eig = np.concatenate([[40.0, 25.0, 12.0, 9.0, 7.5], rng.uniform(-3.0, 5.0, 140), [-6.0, -4.5]])
    A = symmetric(eig, rng)
    r = extremes(lambda v: A @ v, rng.standard_normal(len(eig)), 5, 2, 100, rtol=1e-8)
    truth = np.sort(eig)
    np.testing.assert_allclose(r["top"], truth[::-1][:5], rtol=1e-9)
    np.testing.assert_allclose(r["bottom"], truth[:2], rtol=1e-9)
    assert r["steps"] < 100, "converged eigenvalues should stop Lanczos early"
    assert max(r["top_residuals"]) <= 1e-8 * 40


def test_lanczos_is_exact_on_an_invariant_subspace():
    """A matrix with 3 distinct eigenvalues: the Krylov space has dimension 3, and Lanczos stops there, exact."""
    rng = np.random.default_rng(1)
    A = symmetric(np.repeat([-2.0, 1.0, 7.0], 20), rng)
    lz = lanczos(lambda v: A @ v, rng.standard_normal(60), 50)
    theta, weights, residuals = lz.ritz()
    assert lz.steps == 3
    np.testing.assert_allclose(theta, [-2.0, 1.0, 7.0], rtol=1e-10)
    assert residuals.max() == 0.0 and math.isclose(weights.sum(), 1.0)


def test_full_reorthogonalization_leaves_no_ghost_eigenvalues():
    """Well-separated large eigenvalues converge fast; without reorthogonalization they come back as copies
    (the test's plain Lanczos shows it), with full reorthogonalization each appears once."""
    rng = np.random.default_rng(2)
    eig = np.concatenate([[100.0, 90.0, 80.0], np.linspace(0.0, 1.0, 147)])
    A = symmetric(eig, rng)
    v = rng.standard_normal(len(eig))
    steps = 60

    def copies(ritz):
        return [int((np.abs(ritz - lam) < 1e-6 * lam).sum()) for lam in (100.0, 90.0, 80.0)]

    assert max(copies(plain_lanczos(A, v, steps))) > 1, "the matrix should make plain Lanczos produce ghosts"
    ours = lanczos(lambda x: A @ x, v, steps).ritz()[0]
    assert copies(ours) == [1, 1, 1], f"ghost copies of the top eigenvalues: {copies(ours)}"
    assert len(ours) == steps and ours.max() <= 100.0 + 1e-9 and ours.min() >= -1e-9


def test_hutchinson_trace_is_within_a_few_percent_of_the_true_trace():
    rng = np.random.default_rng(3)
    eig = rng.uniform(0.5, 10.0, 80)
    A = symmetric(eig, rng)
    trace, stderr = hutchinson(lambda v: A @ v, 80, 500, np.random.default_rng(4))
    assert abs(trace - eig.sum()) < 0.03 * eig.sum(), (trace, eig.sum())
    assert abs(trace - eig.sum()) < 4 * stderr, (trace, eig.sum(), stderr)


def test_slq_density_integrates_to_one_and_sits_at_the_known_eigenvalues():
    rng = np.random.default_rng(5)
    values, shares = np.array([-2.0, 1.0, 5.0]), np.array([0.1, 0.6, 0.3])
    eig = np.concatenate([v + 0.01 * rng.standard_normal(int(200 * s)) for v, s in zip(values, shares)])
    A = symmetric(eig, rng)
    runs = [lanczos(lambda v: A @ v, rng.standard_normal(len(eig)), 25) for _ in range(10)]
    nodes, weights = slq(runs)
    assert math.isclose(weights.sum(), 1.0, rel_tol=1e-9)
    grid, phi = density(nodes, weights)
    assert abs(np.trapezoid(phi, grid) - 1) < 1e-3
    for value, share in zip(values, shares):
        near = np.abs(grid - value) < 0.5
        assert abs(np.trapezoid(phi[near], grid[near]) - share) < 0.06, (value, share)
    assert phi[np.abs(grid - 3.0) < 0.5].max() < 1e-3 * phi.max(), "no mass between the clusters"
    true_share = np.abs(eig[eig < 0]).sum() / np.abs(eig).sum()
    assert abs(negative_mass(nodes, weights) - true_share) < 0.02


# --- objective.py: Hessian-vector products of networks ------------------------------------------------------

def test_hvp_of_a_quadratic_loss_is_its_hessian():
    """A dense layer with MSE and L2 is a quadratic in (W, b): H = (2 / NK) [X 1]^T [X 1] per output, + l2 on W."""
    rng = np.random.default_rng(6)
    N, D, K, l2 = 9, 4, 3, 0.05
    model = build_model([("dense", {"units": K})], (D,), rng)
    model.layers[0].params["b"] = rng.standard_normal(K).astype(np.float32)
    X, y = rng.standard_normal((N, D)), rng.integers(0, K, N)
    obj = Objective(model, MSE(), X, y, L2Penalty({"layers.0.W": l2}))
    Xt = np.hstack([X, np.ones((N, 1))])
    G = 2 / (N * K) * Xt.T @ Xt                  # (D+1, D+1), the same for every output k
    H = np.zeros((obj.n, obj.n))                 # flat order: W (D, K) row-major, then b (K,)
    index = lambda d, k: d * K + k if d < D else D * K + k  # noqa: E731
    for k in range(K):
        for d in range(D + 1):
            for e in range(D + 1):
                H[index(d, k), index(e, k)] = G[d, e] + (l2 if d == e < D else 0.0)
    for _ in range(3):
        v = rng.standard_normal(obj.n)
        np.testing.assert_allclose(obj.hvp(v), H @ v, rtol=1e-6, atol=1e-8 * np.abs(H).max())
    truth = np.linalg.eigvalsh(H)  # each eigenvalue K times: one start vector sees each distinct one once
    r = extremes(obj.hvp, rng.standard_normal(obj.n), 3, 2, obj.n)
    assert r["top"][0] == pytest.approx(truth[-1], rel=1e-6) and r["bottom"][0] == pytest.approx(truth[0], rel=1e-6)
    for value in np.concatenate([r["top"], r["bottom"]]):
        assert np.abs(truth - value).min() < 1e-6 * truth[-1], value
    assert verdict(r["top"][0], r["bottom"][0], r["bottom_residuals"][0])[0] == "minimum"


TINY_NET = [("conv2d", {"filters": 2, "kernel_size": 3}), ("batchnorm", {}), ("tanh", {}),
            ("avgpool2d", {"size": 2}), ("flatten", {}), ("dropout", {"rate": 0.5}), ("dense", {"units": 3})]


def tiny_objective(rng, penalty=True):
    """A conv - batchnorm - tanh - pool - dropout - dense network (51 parameters) on 7 random 6x6 images,
    batchnorm with non-trivial running statistics; smooth, so finite differences are accurate."""
    model = build_model(TINY_NET, (1, 6, 6), rng)
    bn = model.layers[1]
    bn.buffers["running_mean"] = np.array([0.1, -0.2], np.float32)
    bn.buffers["running_var"] = np.array([0.5, 2.0], np.float32)
    bn.params["gamma"] = np.array([1.2, 0.7], np.float32)
    bn.params["beta"] = np.array([0.1, -0.3], np.float32)
    x, y = rng.standard_normal((7, 1, 6, 6)), rng.integers(0, 3, 7)
    coefs = {"layers.0.W": 0.01, "layers.6.W": 0.02} if penalty else {}
    return model, x, y, Objective(model, SoftmaxCrossEntropy(), x, y, L2Penalty(coefs))


def test_the_objective_is_the_evaluation_mode_loss_with_its_gradient():
    rng = np.random.default_rng(7)
    model, x, y, obj = tiny_objective(rng)
    net = copy.deepcopy(model).astype(np.float64)
    W0, W6 = net.layers[0].params["W"], net.layers[6].params["W"]
    expected = SoftmaxCrossEntropy().forward(net.forward(x, training=False), y) \
        + 0.5 * 0.01 * (W0**2).sum() + 0.5 * 0.02 * (W6**2).sum()  # dropout off, running statistics
    assert math.isclose(obj.value, expected, rel_tol=1e-12)
    h = 1e-6
    numeric = np.array([(obj.value_and_grad(obj.w + h * e)[0] - obj.value_and_grad(obj.w - h * e)[0]) / (2 * h)
                        for e in np.eye(obj.n)])
    err = np.abs(numeric - obj.grad).max() / np.abs(obj.grad).max()
    assert err < 1e-7, f"gradient of the evaluation-mode loss off by {err:.2g} (max relative)"
    v = rng.standard_normal(obj.n)  # (rng is also the dropout layer's generator)
    dropout_rng = model.layers[5].rng.bit_generator.state
    obj.hvp(v)
    assert model.layers[5].rng.bit_generator.state == dropout_rng and model.layers[0].params["W"].dtype == np.float32


def test_lanczos_on_a_tiny_network_matches_its_assembled_hessian():
    """Eigenvalues from Hessian-vector products agree to 1e-6 relative with those of the full Hessian
    assembled column by column from central differences of float64 gradients."""
    rng = np.random.default_rng(8)
    _, _, _, obj = tiny_objective(rng)
    truth = np.linalg.eigvalsh(assembled_hessian(obj))
    r = extremes(obj.hvp, rng.standard_normal(obj.n), 3, 2, obj.n, rtol=1e-10)
    np.testing.assert_allclose(r["top"], truth[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(r["bottom"], truth[:2], rtol=1e-6)
    everything = lanczos(obj.hvp, rng.standard_normal(obj.n), obj.n).ritz()[0]
    for value in everything:  # every Ritz value of the full run is an eigenvalue (repeated ones appear once)
        assert np.abs(truth - value).min() < 1e-6 * np.abs(truth).max(), value
    for value in truth[np.abs(truth) > 1e-3 * np.abs(truth).max()]:
        assert np.abs(everything - value).min() < 1e-6 * abs(value), value


@pytest.mark.parametrize("activation, pool", [(("relu", {}), {"size": 2}),
                                              (("leaky_relu", {"alpha": 0.1}), {"size": 3, "stride": 2, "padding": "same"})])
def test_relu_and_max_pooling_patterns_held_fixed_give_the_networks_own_hessian(activation, pool):
    """For relu and max pooling (tiling, or overlapping and padded windows) the Hessian-vector products keep
    each unit's on/off state and each window's maximum from w; column by column they equal the Hessian of
    the network's own training-mode gradient (no dropout or batchnorm here), assembled with a step too
    small to cross a kink."""
    rng = np.random.default_rng(10)
    layers = [("conv2d", {"filters": 2, "kernel_size": 3}), activation, ("maxpool2d", pool),
              ("flatten", {}), ("dense", {"units": 3})]
    model = build_model(layers, (1, 6, 6), rng)
    x, y = rng.standard_normal((5, 1, 6, 6)), rng.integers(0, 3, 5)
    obj = Objective(model, SoftmaxCrossEntropy(), x, y)
    net, loss = copy.deepcopy(model).astype(np.float64), SoftmaxCrossEntropy()

    def grad(w):  # the network's own forward and backward
        for name, (_, _, s, e, shape) in zip(obj.names, obj.slots):
            layer, key = net.layers[int(name.split(".")[1])], name.split(".")[2]
            layer.params[key] = w[s:e].reshape(shape)
        loss.forward(net.forward(x, training=True), y)
        net.backward(loss.backward())
        return np.concatenate([net.named_grads()[name].ravel() for name in obj.names])

    np.testing.assert_allclose(obj.grad, grad(obj.w), rtol=1e-12, atol=1e-15)
    h = 1e-7
    own = np.array([(grad(obj.w + h * e) - grad(obj.w - h * e)) / (2 * h) for e in np.eye(obj.n)])
    ours = np.array([obj.hvp(e) for e in np.eye(obj.n)])
    np.testing.assert_allclose(ours, own, atol=1e-6 * np.abs(own).max())
    np.testing.assert_allclose(ours, ours.T, atol=1e-8 * np.abs(ours).max())


def test_a_two_layer_linear_network_at_zero_weights_is_a_saddle():
    """L = mean (W2 W1 x - onehot)^2 at W1 = W2 = 0: the gradient vanishes and the Hessian is the block
    [[0, B], [B^T, 0]], whose eigenvalues come in pairs +-sigma: a saddle."""
    rng = np.random.default_rng(9)
    layers = [("dense", {"units": 3, "use_bias": False, "init": "zeros"}),
              ("dense", {"units": 3, "use_bias": False, "init": "zeros"})]
    model = build_model(layers, (4,), rng)
    obj = Objective(model, MSE(), rng.standard_normal((20, 4)), rng.integers(0, 3, 20))
    assert np.linalg.norm(obj.grad) == 0.0
    r = extremes(obj.hvp, rng.standard_normal(obj.n), 1, 1, obj.n)
    assert r["bottom"][0] == pytest.approx(-r["top"][0], rel=1e-6) and r["top"][0] > 0.1
    assert verdict(r["top"][0], r["bottom"][0], r["bottom_residuals"][0])[0] == "saddle"


def test_verdict_states_its_tolerance():
    assert verdict(10.0, -0.5, 0.0) == ("saddle", pytest.approx(0.01))
    assert verdict(10.0, -0.005, 0.001) == ("minimum", pytest.approx(0.01))
    assert verdict(10.0, -0.005, 0.5)[0] == "undetermined"   # the bottom is not resolved to the tolerance
    assert verdict(0.0, 0.0, 0.0)[0] == "undetermined"       # no curvature at all


def test_track_sharpness_is_checked_with_its_key_path():
    base = {"model": {"layers": ["flatten", {"dense": {"units": 10}}]}}
    with pytest.raises(ConfigError, match=r"train\.track_sharpness\.every: must be >= 1, got 0"):
        experiment_from_dict({**base, "train": {"track_sharpness": {"every": 0}}})
    with pytest.raises(ConfigError, match=r"train\.track_sharpness\.iter: unknown key \(did you mean 'iters'\?\)"):
        experiment_from_dict({**base, "train": {"track_sharpness": {"iter": 5}}})
    cfg = experiment_from_dict({**base, "train": {"track_sharpness": None}}).cfg
    assert cfg.train.track_sharpness is None
    cfg = experiment_from_dict({**base, "train": {"track_sharpness": {}}}).cfg
    assert (cfg.train.track_sharpness.every, cfg.train.track_sharpness.batch, cfg.train.track_sharpness.iters) == (1, 1000, 20)


# --- the command and sharpness tracking on real MNIST ------------------------------------------------------

TRACKING = {
    "name": "sharp", "seed": 3,
    "data": {"dataset": "mnist", "download": False, "validation": 100, "limit_train": 300, "limit_val": 100,
             "limit_test": 100, "preprocess": [{"normalize": {"mean": 0.1307, "std": 0.3081}}]},
    "model": {"layers": [{"conv2d": {"filters": 2, "kernel_size": 3, "stride": 2}}, "relu", "flatten",
                         {"dropout": {"rate": 0.2}}, {"dense": {"units": 10}}], "l2": 0.001},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 2, "batch_size": 50, "track_sharpness": {"every": 2, "batch": 120, "iters": 20}},
}


def metrics_rows(run_dir: Path, drop=("seconds",)) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny real-MNIST run with track_sharpness (every 2 epochs) trained straight through."""
    tmp = tmp_path_factory.mktemp("tracked")
    summary = train_from_config(experiment_from_dict(TRACKING, "sharp.yaml"), tmp / "runs", echo=lambda line: None)
    return Path(summary["run_dir"])


@pytest.mark.slow
def test_sharpness_column_is_the_top_eigenvalue_at_the_tracked_epochs(tracked):
    rows = metrics_rows(tracked)
    assert [r["sharpness"] for r in rows][0] == ""            # epoch 1: not measured (every 2)
    value = float(rows[1]["sharpness"])
    assert math.isfinite(value) and value > 0
    assert (tracked / "sharpness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same measurement, made separately from the checkpoint of that epoch
    _, meta, _, obj = objective_at(tracked / "checkpoints" / "last.npz", "train", 120, None)
    assert meta["epoch"] == 2
    assert sharpness(obj, 20, 3) == pytest.approx(value, rel=1e-6)
    r = hessian_spectrum(tracked / "checkpoints" / "last.npz", "train", 120, top_k=1)
    assert r["top"][0] == pytest.approx(value, rel=1e-6), (r["top"][0], value, r["top_residuals"])


@pytest.mark.slow
def test_tracking_leaves_training_untouched_and_resumes_exactly(tracked, tmp_path):
    untracked = {**TRACKING, "train": {k: v for k, v in TRACKING["train"].items() if k != "track_sharpness"}}
    plain = Path(train_from_config(experiment_from_dict(untracked, "plain.yaml"), tmp_path / "a",
                                   echo=lambda line: None)["run_dir"])
    ours, theirs = load_checkpoint(tracked / "checkpoints" / "last.npz")[2], load_checkpoint(plain / "checkpoints" / "last.npz")[2]
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert "sharpness" not in metrics_rows(plain)[0]
    # paused after epoch 1, then resumed: the same weights and the same rows, sharpness column included
    exp = experiment_from_dict(TRACKING, "sharp.yaml")
    paused = Path(train_from_config(exp, tmp_path / "b", echo=lambda line: None, until_epoch=1)["run_dir"])
    assert list(metrics_rows(paused)[0]) == list(metrics_rows(tracked)[0])
    resume_run(paused, echo=lambda line: None)
    assert metrics_rows(paused) == metrics_rows(tracked)
    resumed = load_checkpoint(paused / "checkpoints" / "last.npz")[2]
    for key in ours:
        np.testing.assert_array_equal(resumed[key], ours[key], err_msg=key)
    result = invoke("compare", tracked, paused, plain, "--metric", "sharpness", "--out", tmp_path / "c.png")
    assert result.exit_code == 2 and "metrics.csv has no such column" in result.output
    result = invoke("compare", tracked, paused, "--metric", "sharpness", "--out", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.png").is_file()


@pytest.mark.slow
def test_hessian_command_end_to_end(tracked, tmp_path):
    out = tmp_path / "spectrum.png"
    result = invoke("hessian", tracked, "--batch", 100, "--top-k", 3, "--density", "--seed", 1, "--json", "--out", out)
    assert result.exit_code == 0, result.output
    r = json.loads(result.output.splitlines()[-1])
    assert r["images"] == 100 and r["seed"] == 1 and r["split"] == "train" and r["checkpoint"].endswith("best.npz")
    assert len(r["top"]) == 3 and r["top"] == sorted(r["top"], reverse=True) and r["bottom"][0] <= r["top"][-1]
    assert r["verdict"] in ("minimum", "saddle", "undetermined") and r["l2"] is True
    assert r["lr"] == 0.05 and r["lambda_max_lr"] == pytest.approx(0.05 * r["top"][0])
    assert r["trace"] > 0 and 0 <= r["negative_mass"] <= 1 and r["grad_norm"] > 0
    grid, values = np.array(r["density"]["grid"]), np.array(r["density"]["values"])
    assert abs(np.trapezoid(values, grid) - 1) < 1e-3
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and r["figure"] == str(out)
    text = invoke("hessian", tracked / "checkpoints" / "last.npz", "--batch", 60, "--top-k", 2)
    assert text.exit_code == 0, text.output
    assert "top 2 eigenvalues:" in text.output and "verdict: " in text.output and "lambda_max * lr = " in text.output


@pytest.mark.parametrize("args, fragment", [
    (["--split", "tset"], "--split: expected one of train, val, test, got 'tset' (did you mean 'test'?)"),
    ([], "not a run directory (no checkpoints/best.npz or checkpoints/last.npz)"),
])
def test_hessian_usage_errors_exit_2_with_one_line(tmp_path, args, fragment):
    folder = tmp_path / "not_a_run"
    (folder / "checkpoints").mkdir(parents=True)
    if args:  # a run directory whose checkpoint is never read: the split is checked first
        (folder / "checkpoints" / "best.npz").write_bytes(b"")
    result = invoke("hessian", folder, *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_hessian_of_a_missing_path_is_a_usage_error(tmp_path):
    result = invoke("hessian", tmp_path / "nope")
    assert result.exit_code == 2 and "no such run directory or checkpoint" in result.output
