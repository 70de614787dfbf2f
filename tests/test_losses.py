"""Every registered loss: gradient against finite differences (float64), stability, known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnntrain.registry import LOSSES
from gradcheck import numeric_grad, rel_error

# name -> (outputs per sample, number of classes): labels are drawn from range(classes)
CASES = {
    "softmax_cross_entropy": (4, 4),
    "binary_cross_entropy": (1, 2),
    "mse": (4, 4),
    "l1": (4, 4),
}


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_gradient_matches_finite_differences(name):
    assert name in CASES, f"loss '{name}' is registered but has no gradient-check case"
    rng = np.random.default_rng(0)
    loss = LOSSES.create(name)
    k, classes = CASES[name]
    out = rng.standard_normal((5, k)) * 3
    y = rng.integers(0, classes, 5)
    loss.forward(out, y)
    analytic = loss.backward()
    numeric = numeric_grad(lambda: loss.forward(out, y), out)
    assert rel_error(analytic, numeric) < 1e-7


def test_softmax_cross_entropy_known_value_and_stability():
    loss = LOSSES.create("softmax_cross_entropy")
    # uniform logits over K classes: loss = log K
    assert math.isclose(loss.forward(np.zeros((3, 10)), np.array([0, 4, 9])), math.log(10), rel_tol=1e-12)
    # huge logits: no overflow, loss of a confident right answer is 0 and of a wrong one is the margin
    out = np.array([[1e4, 0.0], [0.0, 1e4]], dtype=np.float32)
    assert loss.forward(out, np.array([0, 1])) == 0.0
    assert math.isclose(loss.forward(out, np.array([1, 0])), 1e4, rel_tol=1e-6)
    assert np.all(np.isfinite(loss.backward()))
    assert loss.backward().dtype == np.float32


def test_softmax_cross_entropy_rejects_one_hot_or_misshapen_labels():
    loss = LOSSES.create("softmax_cross_entropy")
    with pytest.raises(ValueError, match="integer labels"):
        loss.forward(np.zeros((3, 4)), np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="integer class indices"):
        loss.forward(np.zeros((3, 4)), np.zeros(3))


def test_binary_cross_entropy_known_values_prediction_and_stability():
    loss = LOSSES.create("binary_cross_entropy")
    # z = 0: loss = log 2 for either label
    assert math.isclose(loss.forward(np.zeros((2, 1)), np.array([0, 1])), math.log(2), rel_tol=1e-12)
    # z = 2, y = 1: log(1 + e^-2); z = 2, y = 0: log(1 + e^2)
    z = np.array([[2.0], [2.0]])
    assert math.isclose(loss.forward(z, np.array([1, 0])), (math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2)
    big = np.array([[1e4], [-1e4]], dtype=np.float32)
    assert loss.forward(big, np.array([1, 0])) == 0.0
    assert np.all(np.isfinite(loss.backward()))
    assert loss.predict(np.array([[0.3], [-0.1], [0.0]])).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="one output unit"):
        loss.forward(np.zeros((2, 3)), np.array([0, 1]))


def test_mse_and_l1_against_one_hot_targets():
    out = np.array([[0.5, 0.0, 1.0]])
    # target onehot(2) = [0, 0, 1]: squared errors 0.25, 0, 0 -> mean 0.25/3; abs errors 0.5, 0, 0 -> 0.5/3
    assert math.isclose(LOSSES.create("mse").forward(out, np.array([2])), 0.25 / 3)
    assert math.isclose(LOSSES.create("l1").forward(out, np.array([2])), 0.5 / 3)


def test_l2_penalty_value_and_gradient():
    from cnntrain.losses import L2Penalty

    params = {"layers.0.W": np.array([1.0, -2.0]), "layers.0.b": np.array([3.0])}
    grads = {"layers.0.W": np.array([0.5, 0.5]), "layers.0.b": np.array([0.0])}
    # (0.1 / 2) * (1 + 4) = 0.25; gradient += 0.1 * W
    assert math.isclose(L2Penalty({"layers.0.W": 0.1}).apply(params, grads), 0.25)
    assert grads["layers.0.W"].tolist() == pytest.approx([0.6, 0.3])
    assert grads["layers.0.b"].tolist() == [0.0]
    assert not L2Penalty({"layers.0.W": 0.0})
