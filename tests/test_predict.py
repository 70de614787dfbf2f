"""cnntrain predict: agrees with the network on the same images, and refuses files that are not images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnntrain.cli import cli
from cnntrain.data.splits import load_splits
from cnntrain.inspection import load_model
from cnntrain.runs import find_checkpoint

CONFIG = """
name: pr
data: {dataset: mnist, download: false, validation: 200, limit_train: 1000, limit_val: 200, limit_test: 20,
       preprocess: [{normalize: {mean: 0.1307, std: 0.3081}}]}
model:
  layers: [{conv2d: {filters: 4, kernel_size: 3}}, relu, {maxpool2d: {size: 2}}, flatten, {dense: {units: 10}}]
optimizer: {name: adam, lr: 0.003}
train: {epochs: 1, batch_size: 32}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    cfg = tmp / "pr.yaml"
    cfg.write_text(CONFIG)
    assert CliRunner().invoke(cli, ["run", str(cfg), "--runs-dir", str(tmp / "runs")]).exit_code == 0
    (run_dir,) = (tmp / "runs").iterdir()
    return tmp, run_dir


@pytest.mark.slow
def test_predict_agrees_with_the_network_on_the_test_images(trained):
    tmp, run_dir = trained
    exp, meta, model = load_model(find_checkpoint(run_dir))
    x, y = load_splits(exp.cfg).test
    expected = exp.loss.probabilities(model.forward(exp.preprocess(1)(x), training=False))
    folder = tmp / "digits"
    folder.mkdir()
    for i, img in enumerate(x):  # the test images as PNG files, written exactly
        Image.fromarray(img[0]).save(folder / f"{i:02d}.png")
    Image.fromarray(np.repeat(x[0, 0][:, :, None], 3, axis=2)).save(folder / "rgb.bmp")
    result = CliRunner().invoke(cli, ["predict", str(run_dir), str(folder), "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert len(out) == 21 and all(len(r["top"]) == 2 for r in out)
    for i, r in enumerate(out[:20]):
        assert r["top"][0]["index"] == int(expected[i].argmax())
        assert r["top"][0]["probability"] == pytest.approx(float(expected[i].max()), rel=1e-5)
    assert out[20]["top"][0]["index"] == out[0]["top"][0]["index"], "an RGB BMP is converted to grey"
    text = CliRunner().invoke(cli, ["predict", str(run_dir), str(folder / "00.png")])
    assert text.exit_code == 0 and text.output.startswith(f"{folder / '00.png'}: ")


@pytest.mark.slow
def test_a_file_that_is_not_an_image_is_a_clear_error(trained):
    tmp, run_dir = trained
    bad = tmp / "notes.png"
    bad.write_text("this is not a picture")
    before = bad.read_bytes()
    result = CliRunner().invoke(cli, ["predict", str(run_dir), str(bad)])
    assert result.exit_code == 1 and "notes.png: not a readable image" in result.output
    assert "Traceback" not in result.output and bad.read_bytes() == before
    empty = tmp / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["predict", str(run_dir), str(empty)])
    assert result.exit_code == 1 and "no .png, .jpg or .bmp images" in result.output
