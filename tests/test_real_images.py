"""End to end on colour data: an image folder and CIFAR-10 binary files through run, eval, predict and summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.config import config_from_dict, load_config
from cnntrain.data.cifar import BATCH_FILES
from cnntrain.errors import ConfigError
from cnntrain.runs import find_checkpoint, load_checkpoint
from make_example_images import CLASSES, make_shapes
from test_cifar import write_batch

REPO = Path(__file__).resolve().parents[1]

SHAPES_CONFIG = """
name: shapes
data:
  dataset: image_folder
  path: shapes/train
  test_path: shapes/test
  validation: 0.2
  channels: 3
  image_size: [20, 24]
  preprocess: [{minmax: {range: [-1, 1]}}]
  augment: [{random_shift: {max_dx: 1, max_dy: 1}}, hflip]
model:
  layers:
    - conv2d: {filters: 8, kernel_size: 3, padding: same}
    - relu
    - maxpool2d: {size: 2}
    - flatten
    - dense: {units: 3}
optimizer: {name: adam, lr: 0.003}
train: {epochs: 6, batch_size: 16}
"""


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def last_json(output: str):
    """The JSON a command printed last (log lines on stderr may come before it)."""
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes")
    make_shapes(tmp / "shapes", per_class_train=24, per_class_test=8, seed=1)
    (tmp / "shapes.yaml").write_text(SHAPES_CONFIG)
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)  # data.path is relative to the working directory
    mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
    try:
        result = invoke("run", "shapes.yaml", "--runs-dir", "runs")
        assert result.exit_code == 0, result.output
        (run_dir,) = (tmp / "runs").iterdir()
        yield tmp, run_dir, result
    finally:
        mp.undo()


@pytest.mark.slow
def test_image_folder_run_stores_class_names_and_absolute_paths(shapes_run):
    tmp, run_dir, result = shapes_run
    _, meta, _ = load_checkpoint(find_checkpoint(run_dir))
    assert meta["classes"] == list(CLASSES) == sorted(CLASSES)
    assert meta["input_shape"] == [3, 20, 24]
    saved = load_config(run_dir / "config.yaml")
    assert saved.data.path == str(tmp / "shapes" / "train") and saved.data.test_path == str(tmp / "shapes" / "test")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_images"] + summary["val_images"] == 72 and summary["test_images"] == 24
    assert summary["test_accuracy"] > 0.6, f"3 drawn shapes should be learnable, got {summary['test_accuracy']}"
    assert list(tmp.joinpath("cache", "cnntrain", "image_folder").glob("*.npz")), "decoded images are cached"


@pytest.mark.slow
def test_predict_agrees_with_eval_on_the_test_folder(shapes_run, tmp_path):
    tmp, run_dir, _ = shapes_run
    ev = invoke("eval", run_dir, "--json")
    assert ev.exit_code == 0, ev.output
    evaluation = last_json(ev.output)
    files = sorted((tmp / "shapes" / "test").rglob("*.*"))
    pr = invoke("predict", run_dir, *files, "--json", "--top-k", "3")
    assert pr.exit_code == 0, pr.output
    predictions = last_json(pr.output)
    assert len(predictions) == len(files) == evaluation["n"] == 24
    confusion = np.zeros((3, 3), dtype=int)
    for path, p in zip(files, predictions):
        assert [t["class"] for t in p["top"]] and sum(t["probability"] for t in p["top"]) == pytest.approx(1, abs=1e-5)
        confusion[CLASSES.index(Path(path).parent.name), p["top"][0]["index"]] += 1
    assert confusion.tolist() == evaluation["confusion_matrix"], "predict decodes and preprocesses as training did"
    assert np.trace(confusion) / 24 == pytest.approx(evaluation["accuracy"])
    text = invoke("predict", run_dir, tmp / "shapes" / "test" / "circle", "--top-k", "1")
    assert text.exit_code == 0 and all(line.split(": ")[1].split(" ")[0] in CLASSES
                                       for line in text.output.strip().splitlines())


@pytest.mark.slow
def test_summary_names_the_folder_classes_without_decoding(shapes_run, monkeypatch):
    tmp, _, _ = shapes_run
    monkeypatch.chdir(tmp)
    import cnntrain.data.folder as folder

    monkeypatch.setattr(folder, "decode_image", lambda *a, **k: pytest.fail("summary decoded an image"))
    result = invoke("summary", "shapes.yaml", "--json")
    assert result.exit_code == 0, result.output
    s = last_json(result.output)
    assert s["input_shape"] == [3, 20, 24] and s["totals"]["output_shape"] == [3]


@pytest.mark.slow
def test_test_split_holds_images_out_of_the_training_folder(shapes_run, monkeypatch):
    tmp, _, _ = shapes_run
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
    from cnntrain.data.splits import load_splits

    cfg = config_from_dict({"data": {"dataset": "image_folder", "path": "shapes/train", "test_split": 0.25,
                                     "validation": 6, "image_size": 16},
                            "model": {"layers": ["flatten", {"dense": {"units": 3}}]}})
    splits = load_splits(cfg)
    assert (len(splits.train[1]), len(splits.val[1]), len(splits.test[1])) == (48, 6, 18)
    assert splits.input_shape == (3, 16, 16) and splits.classes == CLASSES
    again = load_splits(cfg)
    np.testing.assert_array_equal(again.test[0], splits.test[0])  # the same images every time (split_seed)


@pytest.mark.parametrize("data,message", [
    ({"dataset": "mnist", "path": "x"}, "data.path: only used by dataset image_folder (this is mnist)"),
    ({"dataset": "cifar10", "image_size": 16}, "data.image_size: only used by dataset image_folder"),
    ({"dataset": "image_folder"}, "data.path: required for dataset image_folder"),
    ({"dataset": "image_folder", "path": "x"}, "data.image_size: required for image_folder"),
    ({"dataset": "image_folder", "path": "x", "image_size": 16, "channels": 2}, "data.channels: expected 1 (grey) or 3"),
    ({"dataset": "image_folder", "path": "x", "image_size": [16, 0]}, "data.image_size: expected [height, width]"),
    ({"dataset": "image_folder", "path": "x", "image_size": 16, "test_split": 1.5}, "data.test_split: expected"),
])
def test_image_folder_config_mistakes(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": data, "model": {"layers": ["flatten"]}}, "x.yaml")
    assert f"x.yaml: {message}" in str(info.value)


def test_image_folder_defaults_come_from_the_input_shape():
    cfg = config_from_dict({"data": {"dataset": "image_folder", "path": "x"},
                            "model": {"input_shape": [1, 12, 10], "layers": ["flatten"]}})
    assert (cfg.data.channels, cfg.data.image_size) == (1, [12, 10])
    assert Path(cfg.data.path).is_absolute()


def test_missing_folder_is_one_line_exit_1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text(SHAPES_CONFIG)
    result = invoke("run", "x.yaml", "--runs-dir", "runs")
    assert result.exit_code == 1 and "shapes/train" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
def test_cifar10_cnn_config_trains_on_binary_batches(tmp_path, monkeypatch):
    """configs/cifar10_cnn.yaml end to end on small files in the real binary format."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in BATCH_FILES:
        labels = rng.integers(0, 10, size=12)
        images = rng.integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)
        images[:, 0] = (labels * 25)[:, None, None]  # red encodes the class, so the run can learn something
        write_batch(folder / name, images, labels)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = invoke("run", REPO / "configs" / "cifar10_cnn.yaml", "--runs-dir", tmp_path / "runs",
                    "--set", f"data.root={tmp_path / 'data'}", "--set", "data.validation=12",
                    "--set", "train.epochs=2", "--set", "train.batch_size=16", "--set", "data.download=false")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    _, meta, _ = load_checkpoint(find_checkpoint(run_dir))
    assert meta["classes"][0] == "airplane" and meta["input_shape"] == [3, 32, 32]
    assert len(meta["preprocess"]["scale"]) == 3, "standardize is fitted per colour channel"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (48, 12, 12)


@pytest.mark.slow
def test_preview_shows_exactly_the_first_training_batch(shapes_run, monkeypatch):
    tmp, _, _ = shapes_run
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
    from cnntrain.build import build_setup, load_experiment
    from cnntrain.data.splits import load_splits
    from cnntrain.inspection import preview_batch

    exp = load_experiment("shapes.yaml")
    p = preview_batch(exp, count=5, epoch=1)
    loader = build_setup(exp, load_splits(exp.cfg)).loader
    x, y = next(loader.epoch(1))
    np.testing.assert_array_equal(p["augmented"], x[:5])  # the pixels fit() gets in epoch 2, step 1
    np.testing.assert_array_equal(p["labels"], y[:5])
    assert not np.array_equal(p["raw"], p["augmented"]), "random_shift and hflip change the images"
    assert p["raw"].shape == (5, 3, 20, 24) and p["classes"] == CLASSES
    result = invoke("preview", "shapes.yaml", "--count", "6", "--epoch", "2", "--out", tmp / "pv.png")
    assert result.exit_code == 0, result.output
    assert "preprocess minmax: range [-1.0, 1.0], min [" in result.output and "(fitted on the training split)" in result.output
    assert "augment: {random_shift: {max_dx: 1, max_dy: 1}}, hflip" in result.output
    assert "network input of this batch: min " in result.output
    from PIL import Image

    with Image.open(tmp / "pv.png") as img:
        assert img.width > 300 and img.height > 150, img.size
