"""Dataset lookup on the search path and md5-verified downloads, against tiny generated IDX files.

Every test runs with HOME, XDG_CACHE_HOME and the system folder inside tmp_path, and with the public
mirrors replaced by a closed local port, so nothing touches the real cache or the internet.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest

from cnntrain.data import datasets
from cnntrain.data.datasets import IDX_FILES, TEST_IMAGES, TRAIN_IMAGES, TRAIN_LABELS
from cnntrain.data.idx import read_idx, write_idx
from cnntrain.errors import RunError
from cnntrain.registry import DATASETS

UNREACHABLE = "http://127.0.0.1:1/"  # nothing listens on port 1: connection refused at once
# The real datasets (conftest points CNNTRAIN_DATA at ../shared/datasets); read before `home` unsets it.
SHARED = Path(os.environ.get("CNNTRAIN_DATA", "").split(os.pathsep)[0] or "../shared/datasets")
N_TRAIN, N_TEST = 12, 6


def make_arrays(rng, n_train=N_TRAIN, n_test=N_TEST) -> dict[str, np.ndarray]:
    """file name -> array of a tiny 28x28 dataset with labels in 0..9."""
    return {
        TRAIN_IMAGES: rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, size=n_train, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }


def write_dataset(folder, arrays, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / (f"{name}.gz" if gz else name), array)


def gz_bytes(array, level=9) -> bytes:
    """The .gz a mirror would serve for `array` (mtime=0, so the same array gives the same md5)."""
    path_free = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(path_free + array.tobytes(), compresslevel=level, mtime=0)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def use_spec(monkeypatch, attr="MNIST", **changes):
    """Replace datasets.<attr> (MNIST or FASHION_MNIST) by a copy with some fields changed."""
    monkeypatch.setattr(datasets, attr, dataclasses.replace(getattr(datasets, attr), **changes))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """tmp_path as an isolated world: its own cache, no CNNTRAIN_DATA, no system folder, no public mirrors."""
    monkeypatch.delenv("CNNTRAIN_DATA", raising=False)  # conftest points it at the real MNIST
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("no_proxy", "*")  # the local test server must never go through a proxy
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIR", tmp_path / "system")
    use_spec(monkeypatch, "MNIST", mirrors=(UNREACHABLE,))
    use_spec(monkeypatch, "FASHION_MNIST", mirrors=(UNREACHABLE,))
    return tmp_path


def serve(server, prefix, arrays, corrupt=(), level=9) -> str:
    """Serve arrays as .gz under /prefix/ (bytes flipped in `corrupt` files); the mirror's base URL."""
    for name, array in arrays.items():
        body = gz_bytes(array, level)
        if name in corrupt:
            body = body[:-9] + bytes([body[-9] ^ 0xFF]) + body[-8:]
        server.routes[f"/{prefix}/{name}.gz"] = body
    return f"{server.url}/{prefix}/"


def assert_same(ds, arrays):
    assert ds.train_x.shape == (N_TRAIN, 1, 28, 28) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (N_TEST, 1, 28, 28)
    assert ds.train_y.dtype == np.int64 and ds.test_y.dtype == np.int64
    np.testing.assert_array_equal(ds.train_x[:, 0], arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(ds.test_x[:, 0], arrays[TEST_IMAGES])
    np.testing.assert_array_equal(ds.train_y, arrays[TRAIN_LABELS])
    np.testing.assert_array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"])


def test_search_dirs_order_and_cache_dir(home, monkeypatch):
    monkeypatch.setenv("CNNTRAIN_DATA", str(home / "env"))
    assert datasets.cache_dir() == home / "cache" / "cnntrain"
    assert datasets.search_dirs(None) == [home / "env", home / "cache" / "cnntrain", home / "system"]
    assert datasets.search_dirs(str(home / "root")) == [home / "root"], "a given root is the only place looked in"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datasets.cache_dir() == home / "home" / ".cache" / "cnntrain"
    assert datasets.search_dirs(None)[0] == home / "env"


def test_found_under_root(home):
    arrays = make_arrays(np.random.default_rng(0))
    write_dataset(home / "data" / "mnist", arrays)
    ds = DATASETS.get("mnist")(root=str(home / "data"), download=False)
    assert_same(ds, arrays)
    assert ds.classes == tuple("0123456789")
    assert ds.train_x.base is not None, "images should be a reshaped view, not a copy"


def test_found_via_cnntrain_data_uncompressed(home, monkeypatch):
    arrays = make_arrays(np.random.default_rng(0))
    write_dataset(home / "shared" / "MNIST", arrays, gz=False)
    monkeypatch.setenv("CNNTRAIN_DATA", str(home / "shared"))
    assert_same(datasets.mnist(download=False), arrays)


def test_root_with_the_files_is_used_not_cnntrain_data(home, monkeypatch):
    rng = np.random.default_rng(0)
    mine, shared = make_arrays(rng), make_arrays(rng)
    write_dataset(home / "mine" / "mnist", mine)
    write_dataset(home / "shared" / "mnist", shared)
    monkeypatch.setenv("CNNTRAIN_DATA", str(home / "shared"))
    assert_same(datasets.mnist(root=str(home / "mine"), download=False), mine)


def fill_search_path(home, monkeypatch, spec, arrays):
    """A complete copy of the dataset in each of $CNNTRAIN_DATA, the cache and the system folder."""
    monkeypatch.setenv("CNNTRAIN_DATA", str(home / "shared"))
    for base in (home / "shared", home / "cache" / "cnntrain", home / "system"):
        write_dataset(base / spec.folders[0], arrays)


@pytest.mark.parametrize("name,spec", [("mnist", datasets.MNIST), ("fashion_mnist", datasets.FASHION_MNIST)])
@pytest.mark.parametrize("exists", [True, False], ids=["empty-root", "missing-root"])
def test_root_without_the_files_never_falls_back_to_the_search_path(home, monkeypatch, name, spec, exists):
    fill_search_path(home, monkeypatch, spec, make_arrays(np.random.default_rng(0)))
    root = home / "mount"
    if exists:
        (root / spec.folders[0]).mkdir(parents=True)  # an empty dataset folder: a mount that did not happen
    with pytest.raises(RunError) as info:
        DATASETS.get(name)(root=str(root), download=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: missing {', '.join(f'{n}.gz' for n in IDX_FILES)} in data.root {root}; ")
    assert f"put them (gzipped or not) in {root / spec.folders[0]}/ (only data.root is searched when it is set)" \
        in message, message
    assert message.endswith("downloads are off (data.download: false)"), message
    assert not (root.exists() and not exists), "nothing may be created in a root when downloads are off"


def test_root_without_the_files_downloads_into_the_root(home, monkeypatch, server):
    arrays = make_arrays(np.random.default_rng(0))
    fill_search_path(home, monkeypatch, datasets.MNIST, make_arrays(np.random.default_rng(1)))
    cache_before = sorted(p.name for p in (home / "cache" / "cnntrain" / "mnist").iterdir())
    use_spec(monkeypatch, mirrors=(serve(server, "good", arrays),),
             md5={name: (md5(gz_bytes(a)),) for name, a in arrays.items()})
    assert_same(datasets.mnist(root=str(home / "mount")), arrays)
    assert sorted(server.requests) == sorted(f"/good/{n}.gz" for n in IDX_FILES)
    assert sorted(p.name for p in (home / "mount" / "mnist").iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES)
    assert sorted(p.name for p in (home / "cache" / "cnntrain" / "mnist").iterdir()) == cache_before
    assert_same(datasets.mnist(root=str(home / "mount"), download=False), arrays)
    assert len(server.requests) == 4, "the files in the root were downloaded again"


def test_root_without_the_files_and_no_mirror_names_the_root_and_the_failure(home, monkeypatch):
    fill_search_path(home, monkeypatch, datasets.MNIST, make_arrays(np.random.default_rng(0)))
    with pytest.raises(RunError) as info:
        datasets.mnist(root=str(home / "mount"))
    message = str(info.value)
    assert f"missing {TRAIN_IMAGES}.gz, " in message and f" in data.root {home / 'mount'}; " in message, message
    assert re.search(r"download failed: http://127\.0\.0\.1:1/train-images-idx3-ubyte\.gz: .*refused", message)


def test_fashion_mnist_in_the_debian_system_folder(home):
    arrays = make_arrays(np.random.default_rng(0))
    write_dataset(home / "system" / "fashion-mnist", arrays)  # what dataset-fashion-mnist installs
    ds = DATASETS.get("fashion_mnist")(download=False)
    assert_same(ds, arrays)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10


def test_root_may_be_the_dataset_folder_itself(home):
    arrays = make_arrays(np.random.default_rng(0))
    write_dataset(home / "my-digits", arrays)
    assert_same(datasets.mnist(root=str(home / "my-digits"), download=False), arrays)


@pytest.mark.parametrize("damage,pattern", [
    ("count", r"train-labels-idx1-ubyte\.gz: 11 labels, but .*train-images-idx3-ubyte\.gz has 12 images"),
    ("range", r"train-labels-idx1-ubyte\.gz: labels must be in 0\.\.9, found \d+\.\.10"),
    ("rank", r"train-images-idx3-ubyte\.gz: expected images of shape \(N, H, W\), got shape \(12, 784\)"),
    ("size", r"t10k-images-idx3-ubyte\.gz: images of shape \(20, 20\), but .* has \(28, 28\)"),
])
def test_inconsistent_files_name_the_file(home, damage, pattern):
    rng = np.random.default_rng(0)
    arrays = make_arrays(rng)
    if damage == "count":
        arrays[TRAIN_LABELS] = arrays[TRAIN_LABELS][:11]
    elif damage == "range":
        arrays[TRAIN_LABELS][3] = 10
    elif damage == "rank":
        arrays[TRAIN_IMAGES] = arrays[TRAIN_IMAGES].reshape(N_TRAIN, -1)
    else:
        arrays[TEST_IMAGES] = rng.integers(0, 256, size=(N_TEST, 20, 20), dtype=np.uint8)
    write_dataset(home / "mnist", arrays)
    with pytest.raises(RunError, match=pattern):
        datasets.mnist(root=str(home), download=False)


def test_download_verifies_caches_and_is_not_repeated(home, monkeypatch, server):
    arrays = make_arrays(np.random.default_rng(0))
    base = serve(server, "good", arrays)
    use_spec(monkeypatch, md5={name: (md5(gz_bytes(a)),) for name, a in arrays.items()})
    messages = []
    assert_same(datasets.mnist(mirror=base, log=messages.append), arrays)
    cached = home / "cache" / "cnntrain" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES), "temp files left"
    assert len(server.requests) == 4
    assert messages[0] == f"downloading {TRAIN_IMAGES}.gz from {base}"
    assert_same(datasets.mnist(mirror=base), arrays)
    assert len(server.requests) == 4, "a cached dataset was downloaded again"


def test_only_missing_files_are_downloaded_into_root(home, monkeypatch, server):
    arrays = make_arrays(np.random.default_rng(0))
    write_dataset(home / "data" / "mnist", {TRAIN_IMAGES: arrays[TRAIN_IMAGES]})
    use_spec(monkeypatch, mirrors=(serve(server, "good", arrays),),
             md5={name: (md5(gz_bytes(a)),) for name, a in arrays.items()})
    assert_same(datasets.mnist(root=str(home / "data")), arrays)
    assert sorted(server.requests) == sorted(f"/good/{n}.gz" for n in IDX_FILES if n != TRAIN_IMAGES)
    assert len(list((home / "data" / "mnist").iterdir())) == 4
    assert not (home / "cache").exists(), "root was given, so nothing belongs in the cache"


def test_bad_checksum_is_rejected_and_the_next_mirror_used(home, monkeypatch, server):
    arrays = make_arrays(np.random.default_rng(0))
    bad = serve(server, "bad", arrays, corrupt={TRAIN_IMAGES})
    good = serve(server, "good", arrays)
    use_spec(monkeypatch, mirrors=(UNREACHABLE, bad, good),
             md5={name: (md5(gz_bytes(a)),) for name, a in arrays.items()})
    messages = []
    assert_same(datasets.mnist(log=messages.append), arrays)
    assert f"/good/{TRAIN_IMAGES}.gz" in server.requests and f"/bad/{TRAIN_IMAGES}.gz" in server.requests
    assert any("checksum mismatch" in m for m in messages), messages
    cached = home / "cache" / "cnntrain" / "mnist" / f"{TRAIN_IMAGES}.gz"
    assert cached.read_bytes() == gz_bytes(arrays[TRAIN_IMAGES])


def test_a_file_with_a_bad_checksum_never_reaches_the_cache(home, monkeypatch, server):
    arrays = make_arrays(np.random.default_rng(0))
    use_spec(monkeypatch, mirrors=(serve(server, "bad", arrays, corrupt={TRAIN_IMAGES}),),
             md5={name: (md5(gz_bytes(a)),) for name, a in arrays.items()})
    with pytest.raises(RunError, match=rf"missing {TRAIN_IMAGES}\.gz, .*checksum mismatch"):
        datasets.mnist()
    assert list((home / "cache" / "cnntrain" / "mnist").iterdir()) == [], "a rejected file was kept"


@pytest.mark.parametrize("accept_decompressed", [True, False])
def test_recompressed_file_is_accepted_by_its_decompressed_md5(home, monkeypatch, server, accept_decompressed):
    arrays = make_arrays(np.random.default_rng(0))
    base = serve(server, "recompressed", arrays, level=1)  # a different .gz of the same IDX bytes
    digests = {n: (md5(gz_bytes(a)),) + ((md5(gzip.decompress(gz_bytes(a))),) if accept_decompressed else ())
               for n, a in arrays.items()}
    use_spec(monkeypatch, mirrors=(base,), md5=digests)
    if accept_decompressed:
        assert_same(datasets.mnist(), arrays)
    else:  # only the published .gz md5 is known: a re-compressed copy cannot be told from a corrupt one
        with pytest.raises(RunError, match="checksum mismatch"):
            datasets.mnist()


def test_no_network_and_no_files_says_what_to_put_where(home):
    with pytest.raises(RunError) as info:
        datasets.fashion_mnist()
    message = str(info.value)
    folder = home / "cache" / "cnntrain" / "fashion-mnist"
    assert "\n" not in message
    assert message.startswith("fashion_mnist: missing " + ", ".join(f"{n}.gz" for n in IDX_FILES))
    assert f"put them (gzipped or not) in {folder}/" in message
    assert re.search(r"download failed: http://127\.0\.0\.1:1/train-images-idx3-ubyte\.gz: .*refused", message)
    assert list(folder.iterdir()) == [], "a failed download left files behind"


def test_download_off_names_the_missing_files_and_root_folder(home):
    arrays = make_arrays(np.random.default_rng(0))
    write_dataset(home / "data" / "mnist", {n: arrays[n] for n in (TRAIN_IMAGES, TRAIN_LABELS)})
    with pytest.raises(RunError, match=re.escape(
            f"mnist: missing t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in data.root {home / 'data'}; "
            f"put them (gzipped or not) in {home / 'data' / 'mnist'}/ (only data.root is searched when it is set); "
            "downloads are off")):
        datasets.mnist(root=str(home / "data"), download=False)


def test_corrupt_local_file_is_a_run_error_naming_it(home):
    arrays = make_arrays(np.random.default_rng(0))
    write_dataset(home / "mnist", arrays)
    path = home / "mnist" / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RunError, match=re.escape(f"{path}: truncated gzip stream")):
        datasets.mnist(root=str(home), download=False)
    assert read_idx(home / "mnist" / f"{TRAIN_LABELS}.gz").shape == (N_TRAIN,)


def readme_checksums(folder) -> dict[str, tuple[str, str]]:
    """IDX name -> (md5 of the .gz, md5 of the decompressed IDX), from the table in the shared README."""
    rows = re.findall(r"^\| (\S+)\.gz \|[^|]*\| ([0-9a-f]{32}) \| ([0-9a-f]{32}) \|$",
                      (folder / "README.md").read_text(), re.MULTILINE)
    return {name: (gz, raw) for name, gz, raw in rows}


@pytest.mark.parametrize("spec", [datasets.MNIST, datasets.FASHION_MNIST], ids=["mnist", "fashion_mnist"])
def test_shared_copies_match_their_readme_and_the_spec_accepts_them(spec):
    folder = SHARED / spec.folders[0]
    assert (folder / "README.md").is_file(), f"{folder} is missing: point CNNTRAIN_DATA at ../shared/datasets"
    sums = readme_checksums(folder)
    assert sorted(sums) == sorted(IDX_FILES), sums
    for name, (gz, raw) in sums.items():
        data = (folder / f"{name}.gz").read_bytes()
        assert md5(data) == gz, f"{name}.gz differs from its README"
        assert md5(gzip.decompress(data)) == raw, f"{name}: decompressed bytes differ from the README"
        assert gz in spec.md5[name] or raw in spec.md5[name], f"{spec.name}.md5[{name}] accepts neither {gz} nor {raw}"


def test_a_recompressed_fashion_mnist_mirror_is_accepted_and_lands_in_the_root(home, server):
    """The shared (Debian, re-compressed) Fashion-MNIST served as data.mirror passes the real spec's checksums."""
    folder = SHARED / "fashion-mnist"
    for name in IDX_FILES:
        server.routes[f"/fm/{name}.gz"] = (folder / f"{name}.gz").read_bytes()
    ds = datasets.fashion_mnist(root=str(home / "data"), mirror=f"{server.url}/fm/")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert sorted(server.requests) == sorted(f"/fm/{n}.gz" for n in IDX_FILES)
    assert sorted(p.name for p in (home / "data" / "fashion-mnist").iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES)
