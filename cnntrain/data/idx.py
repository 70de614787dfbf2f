"""IDX files (the MNIST format): big-endian header, then a flat array; gzip-compressed or raw.

Layout: 2 zero bytes, a dtype code, ndim, ndim big-endian uint32 dimensions, then the payload.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import RunError

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> the on-disk (big-endian) NumPy dtype.
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Byte-order-free name ('int16', ...) -> code, for writing arrays of either byte order.
_CODES = {dtype.newbyteorder("=").name: code for code, dtype in IDX_DTYPES.items()}


def _file_bytes(path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic (whatever the extension)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RunError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except EOFError:
        raise RunError(f"{path}: truncated gzip stream (the file ends early: an incomplete download?)") from None
    except (OSError, zlib.error) as exc:
        raise RunError(f"{path}: corrupt gzip stream: {exc}") from None


def _parse_header(data: bytes, path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(on-disk dtype, shape, payload offset) from the IDX header, checked field by field."""
    if len(data) < 4:
        raise RunError(f"{path}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic")
    if data[:2] != b"\x00\x00":
        raise RunError(f"{path}: not an IDX file: magic starts with 0x{data[0]:02x} 0x{data[1]:02x}, "
                       "expected 0x00 0x00")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise RunError(f"{path}: unknown IDX data type 0x{code:02X} (expected one of {known})")
    if ndim < 1:
        raise RunError(f"{path}: IDX header declares 0 dimensions (expected at least 1)")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise RunError(f"{path}: truncated IDX header: {ndim} dimensions need {offset} header bytes, found {len(data)}")
    return IDX_DTYPES[code], struct.unpack_from(f">{ndim}I", data, 4), offset


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file, in native byte order; RunError naming the file if it is bad.

    uint8/int8 arrays are zero-copy, read-only views of the file's bytes (call .copy() to modify);
    multi-byte types are converted to native order, and made read-only too, so both behave alike.
    """
    data = _file_bytes(path)
    dtype, shape, offset = _parse_header(data, path)
    count = math.prod(shape)
    expected, found = count * dtype.itemsize, len(data) - offset
    if found != expected:
        problem = "truncated payload" if found < expected else f"{found - expected} trailing bytes after the payload"
        raise RunError(f"{path}: {problem}: shape {shape} of {dtype.newbyteorder('=').name} "
                       f"needs {expected} bytes, found {found}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
        array.flags.writeable = False
    return array


def write_idx(path, array, compress: bool | None = None) -> None:
    """Write `array` as an IDX file; gzip it when compress is True, or when None and path ends in .gz."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("=").name)
    if code is None:
        raise ValueError(f"IDX cannot store {array.dtype}; use one of {', '.join(_CODES)}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got an array of shape {array.shape}")
    if compress is None:
        compress = str(path).endswith(".gz")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(IDX_DTYPES[code], copy=False).tobytes()
    if compress:
        data = gzip.compress(data, mtime=0)  # mtime=0: the same array always gives the same bytes (and md5)
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise RunError(f"{path}: cannot write: {exc.strerror or exc}") from None
