"""Run directories, atomic writes and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from cnntrain.errors import RunError
from cnntrain.runs import atomic_write_text, load_checkpoint, make_run_dir, save_checkpoint


def test_run_dirs_started_in_the_same_second_never_collide(tmp_path):
    dirs = {make_run_dir(tmp_path, "exp") for _ in range(5)}
    assert len(dirs) == 5
    assert all((d / "checkpoints").is_dir() for d in dirs)


def test_checkpoint_round_trip_without_pickle(tmp_path):
    arrays = {"layers.0.W": np.arange(6, dtype=np.float32).reshape(2, 3), "optim/layers.0.W/m": np.ones(3)}
    save_checkpoint(tmp_path / "c.npz", "name: x\n", {"epoch": 3, "classes": ["a", "b"]}, arrays)
    text, meta, loaded = load_checkpoint(tmp_path / "c.npz")
    assert text == "name: x\n" and meta["epoch"] == 3 and meta["classes"] == ["a", "b"]
    assert set(loaded) == set(arrays)
    for key in arrays:
        np.testing.assert_array_equal(loaded[key], arrays[key])
        assert loaded[key].dtype == arrays[key].dtype
    assert not [p for p in tmp_path.iterdir() if p.name != "c.npz"], "temporary files were left behind"


@pytest.mark.parametrize("content,match", [
    (None, "no such checkpoint"),
    (b"not a zip file at all", "not a readable cnntrain checkpoint"),
])
def test_bad_checkpoints_give_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RunError, match=match):
        load_checkpoint(path)


def test_truncated_and_foreign_npz_are_rejected(tmp_path):
    save_checkpoint(tmp_path / "c.npz", "x: 1\n", {}, {"a": np.zeros(1000)})
    data = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="not a readable cnntrain checkpoint"):
        load_checkpoint(tmp_path / "t.npz")
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(RunError, match="not a cnntrain checkpoint"):
        load_checkpoint(tmp_path / "foreign.npz")
    obj = np.empty(1, dtype=object)
    obj[0] = {"evil": 1}
    np.savez(tmp_path / "pickled.npz", meta=obj, config=obj)
    with pytest.raises(RunError):
        load_checkpoint(tmp_path / "pickled.npz")


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(RunError, match="cannot write"):
        atomic_write_text(tmp_path / "missing-dir" / "x", "y")
