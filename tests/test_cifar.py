"""CIFAR-10 (binary version): lookup, safe one-time extraction and verified download, on tiny generated batches.

Every test runs with HOME, XDG_CACHE_HOME and the system folder inside tmp_path, and with the public
mirror replaced by a closed local port, so nothing touches the real cache or the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile

import numpy as np
import pytest

from cnntrain.data import cifar, datasets
from cnntrain.data.cifar import BATCH_FILES, CIFAR10_CLASSES, TEST_BATCH, TRAIN_BATCHES
from cnntrain.errors import RunError
from cnntrain.registry import DATASETS

UNREACHABLE = "http://127.0.0.1:1/"  # nothing listens on port 1: connection refused at once
ARCHIVE = "cifar-10-binary.tar.gz"
N = 7  # records per batch file


def write_batch(path, images, labels):
    """A binary batch as published: per record one label byte, then the R, G and B planes, each 32x32."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    path.write_bytes(records.tobytes())


def make_batches(rng, n=N) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """batch file name -> (uint8 images (n, 3, 32, 32), labels in 0..9)."""
    return {name: (rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, size=n))
            for name in BATCH_FILES}


def write_folder(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in batches.items():
        write_batch(folder / name, images, labels)
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")


def add_file(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def archive_bytes(batches, extra=()) -> bytes:
    """cifar-10-binary.tar.gz laid out as the real one (a cifar-10-batches-bin/ entry, then its files) + extra."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.addfile(_dir_info("cifar-10-batches-bin"))
        for name, (images, labels) in batches.items():
            records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
            add_file(tar, f"cifar-10-batches-bin/{name}", records.tobytes())
        add_file(tar, "cifar-10-batches-bin/batches.meta.txt", "\n".join(CIFAR10_CLASSES).encode())
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _dir_info(name):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def assert_same(ds, batches):
    train_x = np.concatenate([batches[n][0] for n in TRAIN_BATCHES])
    train_y = np.concatenate([batches[n][1] for n in TRAIN_BATCHES])
    assert ds.train_x.shape == (5 * N, 3, 32, 32) and ds.test_x.shape == (N, 3, 32, 32)
    assert ds.train_x.dtype == np.uint8 and ds.test_x.dtype == np.uint8
    assert ds.train_x.flags.c_contiguous and ds.test_x.flags.c_contiguous
    assert ds.train_y.dtype == np.int64 and ds.test_y.dtype == np.int64
    np.testing.assert_array_equal(ds.train_x, train_x)
    np.testing.assert_array_equal(ds.train_y, train_y)
    np.testing.assert_array_equal(ds.test_x, batches[TEST_BATCH][0])
    np.testing.assert_array_equal(ds.test_y, batches[TEST_BATCH][1])
    assert ds.classes == CIFAR10_CLASSES


@pytest.fixture
def home(tmp_path, monkeypatch):
    """tmp_path as an isolated world: its own cache, no CNNTRAIN_DATA, no system folder, no public mirror."""
    monkeypatch.delenv("CNNTRAIN_DATA", raising=False)  # conftest points it at the shared datasets
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("no_proxy", "*")  # the local test server must never go through a proxy
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setattr(cifar, "CIFAR10_MIRRORS", (UNREACHABLE,))
    return tmp_path


@pytest.fixture
def cache(home):
    return home / "cache" / "cnntrain" / "cifar10"


def test_pixels_and_labels_in_nchw_order(home):
    batches = make_batches(np.random.default_rng(0))
    write_folder(home / "data" / "cifar-10-batches-bin", batches)
    # One record typed byte by byte: label 3, and at row 2, column 5 red 11, green 22, blue 33.
    record = bytearray(3073)
    record[0] = 3
    offset = 1 + 2 * 32 + 5
    record[offset], record[offset + 1024], record[offset + 2048] = 11, 22, 33
    path = home / "data" / "cifar-10-batches-bin" / TEST_BATCH
    path.write_bytes(bytes(record) + path.read_bytes()[3073:])
    ds = cifar.cifar10(root=str(home / "data"), download=False)
    assert ds.test_y[0] == 3
    assert ds.test_x[0, :, 2, 5].tolist() == [11, 22, 33]
    assert int(ds.test_x[0].sum()) == 11 + 22 + 33, "every other byte of the record is 0"
    batches[TEST_BATCH][0][0], batches[TEST_BATCH][1][0] = ds.test_x[0], 3
    assert_same(ds, batches)


@pytest.mark.parametrize("layout", ["cifar-10-batches-bin", "cifar10/cifar-10-batches-bin",
                                    "cifar-10/cifar-10-batches-bin", "CIFAR10/cifar-10-batches-bin"])
def test_found_in_each_layout_via_cnntrain_data(home, monkeypatch, layout):
    batches = make_batches(np.random.default_rng(0))
    write_folder(home / "shared" / layout, batches)
    monkeypatch.setenv("CNNTRAIN_DATA", str(home / "shared"))
    assert_same(cifar.cifar10(download=False), batches)


def test_root_may_be_the_batches_folder_itself(home):
    batches = make_batches(np.random.default_rng(0))
    write_folder(home / "my-cifar", batches)
    assert_same(cifar.cifar10(root=str(home / "my-cifar"), download=False), batches)


def test_root_before_cnntrain_data_before_system_and_incomplete_folders_skipped(home, monkeypatch):
    rng = np.random.default_rng(0)
    mine, shared, system = make_batches(rng), make_batches(rng), make_batches(rng)
    write_folder(home / "mine" / "cifar10" / "cifar-10-batches-bin", mine)
    write_folder(home / "shared" / "cifar-10-batches-bin", shared)
    write_folder(home / "system" / "CIFAR10" / "cifar-10-batches-bin", system)
    monkeypatch.setenv("CNNTRAIN_DATA", str(home / "shared"))
    assert_same(cifar.cifar10(root=str(home / "mine"), download=False), mine)
    assert_same(cifar.cifar10(download=False), shared)
    (home / "shared" / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    assert_same(cifar.cifar10(download=False), system)


def test_registry_entry_knows_its_shape_without_files(home):
    loader = DATASETS.get("cifar10")
    assert loader is cifar.cifar10
    assert loader.input_shape == (3, 32, 32)
    assert loader.classes == CIFAR10_CLASSES and len(CIFAR10_CLASSES) == 10


def test_archive_on_the_search_path_is_extracted_once_into_the_cache(home, cache, monkeypatch):
    batches = make_batches(np.random.default_rng(0))
    (home / "system" / "cifar10").mkdir(parents=True)
    (home / "system" / "cifar10" / ARCHIVE).write_bytes(archive_bytes(batches))
    messages = []
    assert_same(cifar.cifar10(download=False, log=messages.append), batches)
    assert messages == [f"extracting {ARCHIVE} into {cache}"]
    assert [p.name for p in cache.iterdir()] == ["cifar-10-batches-bin"], "temp folder left behind"
    assert sorted(p.name for p in (cache / "cifar-10-batches-bin").iterdir()) == sorted(
        BATCH_FILES + ("batches.meta.txt",))
    assert (home / "system" / "cifar10" / ARCHIVE).is_file(), "the system copy must stay"

    def no_second_extraction(*args):
        raise AssertionError("extracted again")
    monkeypatch.setattr(cifar, "extract_archive", no_second_extraction)
    assert_same(cifar.cifar10(download=False), batches)


def test_archive_in_root_is_extracted_beside_it_not_into_the_cache(home):
    batches = make_batches(np.random.default_rng(0))
    (home / "data").mkdir()
    (home / "data" / ARCHIVE).write_bytes(archive_bytes(batches))
    assert_same(cifar.cifar10(root=str(home / "data"), download=False), batches)
    assert (home / "data" / "cifar-10-batches-bin" / TEST_BATCH).is_file()
    assert not (home / "cache").exists()


def test_download_is_verified_extracted_and_cached(home, cache, monkeypatch, server):
    batches = make_batches(np.random.default_rng(0))
    body = archive_bytes(batches)
    server.routes[f"/mirror/{ARCHIVE}"] = body
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", (ARCHIVE, md5(body)))
    base, messages = f"{server.url}/mirror/", []
    assert_same(cifar.cifar10(mirror=base, log=messages.append), batches)
    assert server.requests == [f"/mirror/{ARCHIVE}"]
    assert messages == [f"downloading {ARCHIVE} from {base}", f"extracting {ARCHIVE} into {cache}"]
    assert sorted(p.name for p in cache.iterdir()) == sorted([ARCHIVE, "cifar-10-batches-bin"])
    assert (cache / ARCHIVE).read_bytes() == body
    assert_same(cifar.cifar10(mirror=base), batches)
    assert len(server.requests) == 1, "a cached dataset was downloaded again"


def test_bad_checksum_download_is_rejected_and_not_cached(home, cache, monkeypatch, server):
    body = archive_bytes(make_batches(np.random.default_rng(0)))
    server.routes[f"/bad/{ARCHIVE}"] = body
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", (ARCHIVE, md5(body[:-1])))
    with pytest.raises(RunError, match=rf"download failed: {server.url}/bad/{re.escape(ARCHIVE)}: checksum mismatch"):
        cifar.cifar10(mirror=f"{server.url}/bad/")
    assert list(cache.iterdir()) == [], "a rejected download was kept"


@pytest.mark.parametrize("damage,pattern", [
    ("truncated", r"truncated or not a CIFAR-10 binary batch: 21506 bytes is not a multiple of 3073"),
    ("empty", r"empty file"),
    ("label", r"labels must be in 0\.\.9, found \d\.\.12"),
])
def test_bad_batch_file_is_a_one_line_run_error_naming_it(home, damage, pattern):
    batches = make_batches(np.random.default_rng(0))
    if damage == "label":
        batches["data_batch_3.bin"][1][4] = 12
    write_folder(home / "cifar10" / "cifar-10-batches-bin", batches)
    path = home / "cifar10" / "cifar-10-batches-bin" / "data_batch_3.bin"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(RunError, match=re.escape(f"{path}: ") + pattern) as info:
        cifar.cifar10(root=str(home), download=False)
    assert "\n" not in str(info.value)


def bad_crc(body: bytes) -> bytes:
    """The same tar padded well past its end-of-archive blocks, with a wrong CRC in the gzip trailer.

    tarfile stops reading at the end-of-archive blocks, so only draining the stream can catch this.
    """
    padded = gzip.compress(gzip.decompress(body) + bytes(1 << 16), mtime=0)
    return padded[:-8] + bytes([padded[-8] ^ 0xFF]) + padded[-7:]


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "bad crc", "not gzip"])
@pytest.mark.parametrize("in_cache", [True, False])
def test_corrupt_archive_is_a_run_error_and_removed_only_from_the_cache(home, cache, damage, in_cache):
    body = archive_bytes(make_batches(np.random.default_rng(0)))
    body = {"truncated": body[:len(body) // 2], "flipped byte": body[:-12] + bytes([body[-12] ^ 0xFF]) + body[-11:],
            "bad crc": bad_crc(body), "not gzip": b"<html>moved</html>"}[damage]
    folder = cache if in_cache else home / "system"
    folder.mkdir(parents=True)
    (folder / ARCHIVE).write_bytes(body)
    with pytest.raises(RunError, match=re.escape(f"{folder / ARCHIVE}: corrupt or not the CIFAR-10 binary archive: "))\
            as info:
        cifar.cifar10(download=False)
    assert "\n" not in str(info.value)
    assert (folder / ARCHIVE).exists() is not in_cache, "only a cached archive is deleted, to be downloaded again"
    assert not (cache / "cifar-10-batches-bin").exists()
    assert not list(cache.glob(".*.part")), "temp folder left behind"


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member", ["../evil.bin", "cifar-10-batches-bin/../../evil.bin", "ABSOLUTE", "symlink",
                                    "hardlink"])
def test_unsafe_archive_member_is_refused_and_nothing_written_outside(home, cache, member):
    outside = home / "outside"
    outside.mkdir()
    if member == "ABSOLUTE":
        extra = [(tarfile.TarInfo(str(outside / "evil.bin")), b"x")]
    elif member == "symlink":  # a link first, then a file written through it
        extra = [(_link("cifar-10-batches-bin/escape", str(outside)), None),
                 (tarfile.TarInfo("cifar-10-batches-bin/escape/evil.bin"), b"x")]
    elif member == "hardlink":
        extra = [(_link("cifar-10-batches-bin/evil.bin", str(outside / "target"), tarfile.LNKTYPE), None)]
    else:
        extra = [(tarfile.TarInfo(member), b"x")]
    for info, data in extra:
        info.size = len(data or b"")
    cache.mkdir(parents=True)
    (cache / ARCHIVE).write_bytes(archive_bytes(make_batches(np.random.default_rng(0)), extra))
    with pytest.raises(RunError, match=re.escape(f"{cache / ARCHIVE}: ") + r".*unsafe member") as info:
        cifar.cifar10(download=False)
    assert "\n" not in str(info.value)
    assert list(outside.iterdir()) == []
    assert not list(home.rglob("evil.bin")) and not list(home.rglob("escape"))
    assert not (cache / "cifar-10-batches-bin").exists()


def test_archive_without_all_batches_is_refused(home):
    batches = make_batches(np.random.default_rng(0))
    del batches[TEST_BATCH]
    (home / "system").mkdir()
    (home / "system" / ARCHIVE).write_bytes(archive_bytes(batches))
    with pytest.raises(RunError, match=re.escape(
            f"{home / 'system' / ARCHIVE}: corrupt or not the CIFAR-10 binary archive: "
            f"no cifar-10-batches-bin/test_batch.bin in it; replace it with a good copy")):
        cifar.cifar10(download=False)
    assert not (home / "cache" / "cnntrain" / "cifar10" / "cifar-10-batches-bin").exists()


def test_interrupted_extraction_leaves_no_folder(home, cache, monkeypatch):
    batches = make_batches(np.random.default_rng(0))
    (home / "system").mkdir()
    (home / "system" / ARCHIVE).write_bytes(archive_bytes(batches))
    extract, calls = tarfile.TarFile.extract, []

    def interrupted(self, member, *args, **kwargs):
        calls.append(member.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return extract(self, member, *args, **kwargs)
    monkeypatch.setattr(tarfile.TarFile, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cifar.cifar10(download=False)
    assert list(cache.iterdir()) == [], "a half-extracted folder was left"
    monkeypatch.setattr(tarfile.TarFile, "extract", extract)
    assert_same(cifar.cifar10(download=False), batches)


def test_incomplete_folder_in_the_way_of_extraction_is_named(home, cache):
    (home / "system").mkdir()
    (home / "system" / ARCHIVE).write_bytes(archive_bytes(make_batches(np.random.default_rng(0))))
    (cache / "cifar-10-batches-bin").mkdir(parents=True)
    (cache / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(b"")
    with pytest.raises(RunError, match=re.escape(f"{cache / 'cifar-10-batches-bin'} exists but lacks some of")):
        cifar.cifar10(download=False)


def test_download_off_says_what_to_put_where(home):
    with pytest.raises(RunError, match=re.escape(
            "cifar10: missing cifar-10-batches-bin/ (data_batch_1.bin..data_batch_5.bin, test_batch.bin) or "
            f"cifar-10-binary.tar.gz; put one of them in {home / 'cache' / 'cnntrain' / 'cifar10'}/ "
            "(or set data.root / CNNTRAIN_DATA); downloads are off (data.download: false)")):
        cifar.cifar10(download=False)


def fill_search_path(home, monkeypatch, batches):
    """Batches in $CNNTRAIN_DATA and the cache, and the archive in the system folder: all must be ignored."""
    monkeypatch.setenv("CNNTRAIN_DATA", str(home / "shared"))
    write_folder(home / "shared" / "cifar-10-batches-bin", batches)
    write_folder(home / "cache" / "cnntrain" / "cifar10" / "cifar-10-batches-bin", batches)
    (home / "system" / "cifar10").mkdir(parents=True)
    (home / "system" / "cifar10" / ARCHIVE).write_bytes(archive_bytes(batches))


@pytest.mark.parametrize("exists", [True, False], ids=["empty-root", "missing-root"])
def test_root_without_the_batches_never_falls_back_to_the_search_path(home, monkeypatch, exists):
    fill_search_path(home, monkeypatch, make_batches(np.random.default_rng(0)))
    root = home / "mount"
    if exists:
        root.mkdir()
    with pytest.raises(RunError) as info:
        cifar.cifar10(root=str(root), download=False)
    assert str(info.value) == (
        "cifar10: missing cifar-10-batches-bin/ (data_batch_1.bin..data_batch_5.bin, test_batch.bin) or "
        f"cifar-10-binary.tar.gz in data.root {root}; put one of them in {root / 'cifar10'}/ "
        "(only data.root is searched when it is set); downloads are off (data.download: false)")
    assert (list(root.iterdir()) == []) if exists else not root.exists()


def test_root_without_the_batches_downloads_and_extracts_into_the_root(home, cache, monkeypatch, server):
    fill_search_path(home, monkeypatch, make_batches(np.random.default_rng(1)))
    batches = make_batches(np.random.default_rng(0))
    body = archive_bytes(batches)
    server.routes[f"/mirror/{ARCHIVE}"] = body
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", (ARCHIVE, md5(body)))
    monkeypatch.setattr(cifar, "CIFAR10_MIRRORS", (f"{server.url}/mirror/",))
    root = home / "mount"
    assert_same(cifar.cifar10(root=str(root)), batches)
    assert server.requests == [f"/mirror/{ARCHIVE}"]
    assert sorted(p.name for p in (root / "cifar10").iterdir()) == sorted([ARCHIVE, "cifar-10-batches-bin"])
    assert [p.name for p in cache.iterdir()] == ["cifar-10-batches-bin"], "nothing new belongs in the cache"
    assert_same(cifar.cifar10(root=str(root), download=False), batches)
    assert len(server.requests) == 1


def test_no_network_and_no_files_names_the_cache_folder_and_the_failure(home, cache):
    with pytest.raises(RunError) as info:
        cifar.cifar10()
    message = str(info.value)
    assert "\n" not in message
    assert f"put one of them in {cache}/ " in message
    assert re.search(r"download failed: http://127\.0\.0\.1:1/cifar-10-binary\.tar\.gz: .*refused", message), message
    assert list(cache.iterdir()) == [], "a failed download left files behind"
