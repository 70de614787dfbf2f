"""Preprocessing: fitted statistics are exact, come from the training split only, and travel in checkpoints."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.build import build_setup, experiment_from_dict
from cnntrain.data.splits import load_splits
from cnntrain.data.transforms import MeanSubtract, MinMax, Normalize, PixelStats, Preprocess, Standardize
from cnntrain.errors import ConfigError
from cnntrain.registry import PREPROCESS
from cnntrain.runs import find_checkpoint, load_checkpoint


def images(rng, n=40, c=3, h=5, w=4):
    """uint8 images whose channels have clearly different statistics."""
    x = rng.integers(0, 256, size=(n, c, h, w)).astype(np.float64)
    x *= np.array([0.3, 1.0, 0.6])[:c, None, None]
    x += np.array([100, 0, 20])[:c, None, None]
    return np.clip(x, 0, 255).astype(np.uint8)


def test_pixel_stats_match_numpy_through_an_affine_map():
    rng = np.random.default_rng(0)
    x = images(rng)
    scale, offset = np.array([0.5, -2.0, 1 / 255]), np.array([1.0, 3.0, -0.25])
    v = x * scale[None, :, None, None] + offset[None, :, None, None]
    mean, std, lo, hi = PixelStats.of(x).describe(scale, offset)
    np.testing.assert_allclose(mean, v.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, v.std(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(lo, v.min(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(hi, v.max(axis=(0, 2, 3)), rtol=1e-12)
    mean, std, lo, hi = PixelStats.of(x).describe(scale, offset, per_channel=False)
    np.testing.assert_allclose([mean[0], std[0], lo[0], hi[0]], [v.mean(), v.std(), v.min(), v.max()], rtol=1e-12)


def test_standardize_fitted_gives_zero_mean_unit_std_per_channel():
    rng = np.random.default_rng(0)
    x = images(rng)
    pre = Preprocess([Standardize()], 3, PixelStats.of(x), dtype=np.float64)
    out = pre(x)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, rtol=1e-12)
    fitted = pre.state()["steps"][0]
    np.testing.assert_allclose(fitted["mean"], (x / 255).mean(axis=(0, 2, 3)), rtol=1e-12)
    assert fitted["fitted"] is True and len(fitted["std"]) == 3
    pooled = Preprocess([Standardize(per_channel=False)], 3, PixelStats.of(x), dtype=np.float64)(x)
    assert abs(pooled.mean()) < 1e-12 and pooled.std() == pytest.approx(1, rel=1e-12)
    assert np.ptp(pooled.mean(axis=(0, 2, 3))) > 0.5, "one mean for all channels leaves the channels apart"


def test_given_values_are_used_as_given_and_need_no_data():
    x = np.full((2, 1, 3, 3), 51, np.uint8)  # 0.2 after scaling
    pre = Preprocess([Normalize(mean=0.1, std=0.5)], 1, dtype=np.float64)  # no stats: nothing to fit
    np.testing.assert_allclose(pre(x), (0.2 - 0.1) / 0.5)
    assert pre.state()["steps"] == [{"name": "normalize", "mean": [0.1], "std": [0.5], "fitted": False}]
    with pytest.raises(ValueError, match="no training images"):
        Preprocess([Standardize()], 1)


def test_mean_subtract_then_minmax_compose_in_order():
    rng = np.random.default_rng(1)
    x = images(rng, c=2)
    stats = PixelStats.of(x)
    centred = Preprocess([MeanSubtract()], 2, stats, dtype=np.float64)(x)
    np.testing.assert_allclose(centred.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    for low, high in ((-1, 1), (0, 1)):
        out = Preprocess([MeanSubtract(), MinMax(range=[low, high])], 2, stats, dtype=np.float64)(x)
        np.testing.assert_allclose(out.min(axis=(0, 2, 3)), low, atol=1e-12)
        np.testing.assert_allclose(out.max(axis=(0, 2, 3)), high, atol=1e-12)
    # min and max given in [0, 1] units: 0.2 -> -1 and 0.6 -> 1, so 0.4 -> 0
    fixed = Preprocess([MinMax(min=0.2, max=0.6)], 1, dtype=np.float64)
    np.testing.assert_allclose(fixed(np.array([51, 102, 153], np.uint8).reshape(1, 1, 1, 3)).ravel(), [-1, 0, 1])


def test_a_constant_channel_does_not_divide_by_zero():
    x = np.zeros((4, 2, 3, 3), np.uint8)
    x[:, 1] = np.arange(9).reshape(3, 3)
    for step in (Standardize(), MinMax()):
        out = Preprocess([step], 2, PixelStats.of(x))(x)
        assert np.all(np.isfinite(out)), step


def test_state_round_trips_exactly():
    x = images(np.random.default_rng(2))
    pre = Preprocess([Standardize(), MinMax(range=[0, 1])], 3, PixelStats.of(x))
    back = Preprocess.from_state(json.loads(json.dumps(pre.state())), 3)
    np.testing.assert_array_equal(back(x), pre(x))
    with pytest.raises(ValueError, match="3 channels"):
        Preprocess.from_state(pre.state(), 1)


@pytest.mark.parametrize("name,kwargs,message", [
    ("standardize", {"std": 0}, "std: must be > 0"),
    ("minmax", {"range": [1, -1]}, "range: expected [low, high]"),
    ("mean_subtract", {"mean": "a"}, "mean"),
])
def test_bad_options_are_config_errors(name, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(f"data.preprocess[0].{name}.{message}")):
        PREPROCESS.create(name, kwargs, where=f"data.preprocess[0].{name}")


def test_config_checks_preprocess_and_augment_entries_at_load():
    base = {"model": {"layers": ["flatten", {"dense": {"units": 10}}]}}
    for data, message in (
            ({"preprocess": [{"standardise": {}}]},
             "x.yaml: data.preprocess[0].standardise: unknown preprocessing step 'standardise' (did you mean 'standardize'?)"),
            ({"preprocess": [["x"]]}, "x.yaml: data.preprocess[0]: expected a preprocessing step name"),
            ({"augment": ["hflip", {"random_crop": {"padding": -1}}]},
             "x.yaml: data.augment[1].random_crop.padding: must be an integer >= 0"),
            ({"augment": ["flip"]}, "x.yaml: data.augment[0].flip: unknown augmentation 'flip'")):
        with pytest.raises(ConfigError) as info:
            experiment_from_dict({**base, "data": data}, "x.yaml")
        assert message in str(info.value), str(info.value)


MNIST_CONFIG = {
    "name": "pp",
    "data": {"dataset": "mnist", "download": False, "validation": 300, "limit_train": 600, "limit_val": 300,
             "limit_test": 100, "preprocess": ["standardize"]},
    "model": {"layers": ["flatten", {"dense": {"units": 10}}]},
    "train": {"epochs": 1, "batch_size": 100},
}


def test_statistics_come_from_the_training_split_only():
    exp = experiment_from_dict(json.loads(json.dumps(MNIST_CONFIG)), "pp.yaml")
    splits = load_splits(exp.cfg)
    fitted = build_setup(exp, splits).loader.preprocess.state()["steps"][0]
    train = splits.train[0] / 255.0
    assert fitted["mean"][0] == pytest.approx(train.mean(), rel=1e-12)
    assert fitted["std"][0] == pytest.approx(train.std(), rel=1e-12)
    everything = np.concatenate([splits.train[0], splits.val[0], splits.test[0]]) / 255.0
    assert abs(fitted["mean"][0] - everything.mean()) > 1e-6, "validation and test images must not count"


@pytest.mark.slow
def test_checkpoint_carries_the_fitted_map_to_eval_and_predict(tmp_path):
    path = tmp_path / "pp.yaml"
    path.write_text(json.dumps(MNIST_CONFIG))
    result = CliRunner().invoke(cli, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "preprocess standardize: mean [0.1" in result.output and "fitted on the training split" in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    config_text, meta, _ = load_checkpoint(find_checkpoint(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert meta["preprocess"] == summary["preprocess"] and meta["preprocess"]["steps"][0]["fitted"]
    exp = experiment_from_dict(json.loads(json.dumps(MNIST_CONFIG)), "pp.yaml")
    restored = exp.stored_preprocess(meta, 1)
    fresh = build_setup(exp, load_splits(exp.cfg)).loader.preprocess
    np.testing.assert_array_equal(restored.scale, fresh.scale)
    np.testing.assert_array_equal(restored.offset, fresh.offset)
