"""IDX reading and writing: round trips, and one clear RunError naming the file for each kind of damage."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from cnntrain.data.idx import read_idx, write_idx
from cnntrain.errors import RunError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _random(rng, dtype, shape):
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_raw_and_gzip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = _random(rng, dtype, (12, 7, 5))
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative, back.dtype
    np.testing.assert_array_equal(back, array)


def test_big_endian_input_and_one_dimension(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=12).astype(">i4")
    write_idx(tmp_path / "labels", labels)
    back = read_idx(tmp_path / "labels")
    assert back.shape == (12,) and back.dtype == np.int32 and back.dtype.isnative
    np.testing.assert_array_equal(back, labels)


def test_gzip_is_detected_by_content_not_extension(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    write_idx(tmp_path / "packed.idx", images, compress=True)
    write_idx(tmp_path / "plain.gz", images, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.idx"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), images)


def test_uint8_is_a_read_only_view_without_copy(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "x", rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8))
    x = read_idx(tmp_path / "x")
    assert x.dtype == np.uint8 and not x.flags.writeable
    base = x
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, bytes), f"expected a view of the file's bytes, found a copy ({type(base)})"


def test_gzip_output_is_reproducible(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 3, 3), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "b.gz", images)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_write_rejects_types_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "x", np.uint8(3))


def _valid_bytes(rng) -> bytes:
    """A valid raw IDX file: 12 uint8 images of 4x4 (16-byte header + 192-byte payload)."""
    header = bytes([0, 0, 0x08, 3]) + (12).to_bytes(4, "big") + (4).to_bytes(4, "big") + (4).to_bytes(4, "big")
    return header + rng.integers(0, 256, size=12 * 16, dtype=np.uint8).tobytes()


def _damaged(rng) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, regex the RunError must match)."""
    good = _valid_bytes(rng)
    packed = gzip.compress(good, mtime=0)
    return {
        "truncated_raw": (good[:-5], r"truncated payload: .* needs 192 bytes, found 187"),
        "trailing_bytes": (good + b"\x00\x00\x00", r"3 trailing bytes .* needs 192 bytes, found 195"),
        "truncated_gz": (packed[: len(packed) // 2], r"truncated gzip stream"),
        "garbage_gz": (b"\x1f\x8b" + rng.integers(0, 256, size=64, dtype=np.uint8).tobytes(), r"corrupt gzip"),
        "bad_crc_gz": (packed[:-8] + b"\x00" * 8, r"corrupt gzip"),
        "trailing_garbage_gz": (packed + b"not gzip", r"corrupt gzip"),
        "wrong_magic": (b"\x01\x02" + good[2:], r"not an IDX file: magic starts with 0x01 0x02"),
        "unknown_dtype": (good[:2] + b"\x07" + good[3:], r"unknown IDX data type 0x07"),
        "zero_dims": (b"\x00\x00\x08\x00", r"0 dimensions"),
        "short_header": (good[:10], r"truncated IDX header: 3 dimensions need 16 header bytes, found 10"),
        "tiny": (b"\x00\x00", r"not an IDX file"),
        "empty": (b"", r"not an IDX file"),
        "truncated_payload_in_gz": (gzip.compress(good[:-1], mtime=0), r"truncated payload"),
    }


@pytest.mark.parametrize("case", list(_damaged(np.random.default_rng(0))))
def test_damaged_files_raise_one_line_run_error_naming_the_file(tmp_path, case):
    content, pattern = _damaged(np.random.default_rng(0))[case]
    path = tmp_path / f"{case}-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(RunError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert re.search(pattern, message), message
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), "traceback leaks"


def test_missing_file_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match=re.escape(f"{tmp_path / 'nope'}: cannot read")):
        read_idx(tmp_path / "nope")
