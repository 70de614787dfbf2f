"""Every registered loss: gradient against finite differences (float64), stability, known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnntrain.registry import LOSSES
from gradcheck import numeric_grad, rel_error

# name -> labels maker for N samples and K outputs
LABELS = {
    "softmax_cross_entropy": lambda rng, n, k: rng.integers(0, k, n),
}


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_gradient_matches_finite_differences(name):
    assert name in LABELS, f"loss '{name}' is registered but has no gradient-check case"
    rng = np.random.default_rng(0)
    loss = LOSSES.create(name)
    out = rng.standard_normal((5, 4)) * 3
    y = LABELS[name](rng, 5, 4)
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
