"""Packed parameters (flat.py): one buffer, the same values as per-array updates, state kept across packing."""

from __future__ import annotations

import numpy as np
import pytest

from cnntrain.build import build_model
from cnntrain.flat import FlatDict, Layout, flat
from cnntrain.losses import L2Penalty
from cnntrain.model import Sequential
from cnntrain.optim import optimizers
from cnntrain.registry import OPTIMIZERS
from cnntrain.train import global_norm, train_step

SPECS = [("conv2d", {"filters": 3, "kernel_size": 3}), ("batchnorm", {}), ("relu", {}), ("flatten", {}),
         ("dense", {"units": 5}), ("relu", {}), ("dense", {"units": 4})]


def model(packed: bool = True, seed: int = 0) -> Sequential:
    m = build_model(SPECS, (2, 6, 6), np.random.default_rng(seed))
    if not packed:  # rebind every parameter to an array of its own: the per-array path
        for layer in m.layers:
            for key in layer.params:
                layer.params[key] = layer.params[key].copy()
    return m


def fake_grads(m: Sequential, rng) -> dict:
    params = m.named_params()
    return {name: rng.standard_normal(params[name].shape).astype(params[name].dtype) for name in sorted(params)}


def test_a_built_model_keeps_its_parameters_in_one_buffer_weights_first():
    m = model()
    params = m.named_params()
    assert isinstance(params, FlatDict) and params.intact()
    assert params.data.size == sum(p.size for p in params.values())
    order = list(params.layout.spans)
    assert order == ["layers.0.W", "layers.4.W", "layers.6.W", "layers.0.b", "layers.1.gamma", "layers.1.beta",
                     "layers.4.b", "layers.6.b"]
    for name, p in params.items():
        a, b = params.layout.spans[name]
        assert np.shares_memory(p, params.data) and p.base is not None
        np.testing.assert_array_equal(p.reshape(-1), params.data[a:b])
    # packing kept the initial values
    for name, p in model(packed=False).named_params().items():
        np.testing.assert_array_equal(p, params[name])


def test_a_rebound_parameter_makes_the_dict_a_plain_one():
    m = model()
    m.layers[4].params["W"] = m.layers[4].params["W"].copy()
    assert not isinstance(m.named_params(), FlatDict)
    assert m.packed_grads(fake_grads(m, np.random.default_rng(0))).__class__ is dict


def run(name: str, kwargs: dict, packed: bool, steps: int = 4, threads: int = 1, restart_at: int | None = None):
    """Params and optimizer state after `steps` updates from fixed gradients; optionally a checkpoint
    round trip of the optimizer (and unpacking the model) at step restart_at."""
    m, rng = model(packed), np.random.default_rng(1)
    opt = OPTIMIZERS.create(name, kwargs)
    opt.threads = threads
    for t in range(steps):
        if t == restart_at:
            state = opt.state_dict()
            opt = OPTIMIZERS.create(name, kwargs)
            opt.threads = threads
            opt.load_state_dict(state)
        grads = m.packed_grads(fake_grads(m, rng))
        assert (flat(grads) is not None) == packed
        opt.step(m.named_params(), grads, 0.01)
    return {k: v.copy() for k, v in m.named_params().items()}, opt.state_dict()


CASES = [(name, {"weight_decay": 0.1} if name != "sgd" else {"weight_decay": 0.1, "lr": 0.1})
         for name in OPTIMIZERS.names()]


@pytest.mark.parametrize("name,kwargs", CASES)
def test_every_optimizer_gives_the_same_bits_packed_or_not(name, kwargs):
    want_params, want_state = run(name, kwargs, packed=False)
    got_params, got_state = run(name, kwargs, packed=True)
    for k in want_params:
        np.testing.assert_array_equal(got_params[k], want_params[k], err_msg=k)
    assert got_state.keys() == want_state.keys() and len(want_state) > 1 or name == "sgd"
    for k in want_state:
        np.testing.assert_array_equal(got_state[k], want_state[k], err_msg=k)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_packed_state_survives_a_checkpoint_round_trip(name, kwargs):
    want_params, want_state = run(name, kwargs, packed=True)
    got_params, got_state = run(name, kwargs, packed=True, restart_at=2)
    for k in want_params:
        np.testing.assert_array_equal(got_params[k], want_params[k], err_msg=k)
    for k in want_state:
        np.testing.assert_array_equal(got_state[k], want_state[k], err_msg=k)


@pytest.mark.parametrize("block", [8, 5])
def test_packed_updates_in_pieces_on_threads_give_the_same_bits(monkeypatch, block):
    monkeypatch.setattr(optimizers, "THREADED_MIN", 8)  # every run of the small model goes in pieces,
    monkeypatch.setattr(optimizers, "BLOCK", block)  # each a few blocks, some ending short
    want_params, want_state = run("adam", {"weight_decay": 0.1}, packed=False)
    got_params, got_state = run("adam", {"weight_decay": 0.1}, packed=True, threads=2)
    for k in want_params:
        np.testing.assert_array_equal(got_params[k], want_params[k], err_msg=k)
    for k in want_state:
        np.testing.assert_array_equal(got_state[k], want_state[k], err_msg=k)


def test_state_carries_over_when_the_parameters_stop_or_start_being_packed():
    m, rng = model(), np.random.default_rng(1)
    ref, ref_rng = model(packed=False), np.random.default_rng(1)
    opt, ref_opt = OPTIMIZERS.create("adam", {}), OPTIMIZERS.create("adam", {})
    for t in range(6):
        if t == 2:  # unpack: a plain array now, the optimizer's state for it stays
            m.layers[0].params["W"] = m.layers[0].params["W"].copy()
        if t == 4:  # and pack again
            m.pack()
        grads = m.packed_grads(fake_grads(m, rng))
        opt.step(m.named_params(), grads, 0.01)
        ref_opt.step(ref.named_params(), fake_grads(ref, ref_rng), 0.01)
    for k, p in ref.named_params().items():
        np.testing.assert_array_equal(m.named_params()[k], p, err_msg=k)
    assert isinstance(m.named_params(), FlatDict)


def test_loading_and_casting_keep_the_model_packed():
    m, other = model(seed=0), model(seed=1)
    m.load_state_dict({k: v.copy() for k, v in other.state_dict().items()})
    params = m.named_params()
    assert isinstance(params, FlatDict)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v)
    m.astype(np.float64)
    params = m.named_params()
    assert isinstance(params, FlatDict) and params.data.dtype == np.float64
    for k, v in other.named_params().items():
        np.testing.assert_array_equal(params[k], v.astype(np.float64))


def test_l2_penalty_and_norm_over_the_buffer_match_the_per_array_sums():
    m, rng = model(), np.random.default_rng(2)
    coefs = {"layers.0.W": 0.1, "layers.4.W": 0.1, "layers.6.W": 0.3}
    plain = fake_grads(m, rng)
    want = {k: g.copy() for k, g in plain.items()}
    params = m.named_params()
    want_total = L2Penalty(coefs).apply(dict(params), want)
    grads = m.packed_grads(plain)
    got_total = L2Penalty(coefs).apply(params, grads)
    assert got_total == pytest.approx(want_total, rel=1e-6)
    for k in want:
        np.testing.assert_array_equal(grads[k], want[k], err_msg=k)
        assert m.named_grads()[k] is grads[k]  # the layers hold the penalised gradient
    assert global_norm(grads) == pytest.approx(global_norm(dict(grads)), rel=1e-6)


def test_runs_merge_neighbours_with_equal_values():
    layout = Layout({"a.W": (2, 3), "b.W": (4,), "a.b": (3,), "c.W": (1,)})
    assert layout.runs(lambda name: name.endswith(".W")) == [(0, 10, True), (10, 13, False), (13, 14, True)]


def test_other_ranks_gradients_are_summed_into_the_buffer_in_order():
    m, rng = model(), np.random.default_rng(3)
    own, first, second = fake_grads(m, rng), fake_grads(m, rng), fake_grads(m, rng)
    want = {k: (own[k] + first[k]) + second[k] for k in own}
    grads = m.packed_grads(own, first, second)
    assert flat(grads) is not None
    for k in want:
        np.testing.assert_array_equal(grads[k], want[k], err_msg=k)
    plain = model(packed=False)
    own2 = {k: v.copy() for k, v in own.items()}
    summed = plain.packed_grads(own2, first, second)
    assert summed is own2
    for k in want:
        np.testing.assert_array_equal(summed[k], want[k], err_msg=k)


def test_a_clipped_training_step_is_the_same_packed_or_not():
    from cnntrain.losses import LOSSES

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((8, 2, 6, 6)).astype(np.float32), rng.integers(0, 4, 8)
    out = []
    for packed in (True, False):
        m = model(packed)
        opt = OPTIMIZERS.create("momentum", {"lr": 0.1})
        for _ in range(3):
            _, _, _, norm = train_step(m, LOSSES.create("softmax_cross_entropy", {}), opt, x, y, lambda v: v, 0.1, 8,
                                       L2Penalty({"layers.4.W": 0.01}), grad_clip_norm=0.05)
            assert norm > 0.05  # clipping ran
        out.append(m.named_params())
    for k in out[0]:
        np.testing.assert_allclose(out[0][k], out[1][k], rtol=1e-5, atol=1e-7, err_msg=k)
