"""A folder of images, one sub-folder per class (torchvision ImageFolder / Keras layout), as uint8 (N, C, H, W).

`decode_image` is the single decoder for training data and `cnntrain predict`, so both see the same pixels.
Decoded arrays are cached as .npz, keyed by the folder's file list, sizes and mtimes (a stat per file).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RunError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
RESAMPLE = "bilinear"       # the resize filter; part of the cache key
CACHE_FORMAT_VERSION = 1    # bump when decode_image's output or the cache layout changes
CACHE_SUBDIR = "image_folder"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UnreadableImage(Exception):
    """A file Pillow cannot decode: unknown format, truncated, empty or missing; the message is a one-line reason."""


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value, so compare by identity
class FolderData:
    """Images uint8 (N, C, H, W), labels int64 (N,), class names, and files and skipped files (posix, relative)."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    files: tuple[str, ...]
    skipped: tuple[str, ...]


def _reason(exc: BaseException, path: Path) -> str:
    """A one-line reason without the file name, which the caller puts in front."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, UnidentifiedImageError):  # its message repeats the path
        try:
            empty = path.stat().st_size == 0
        except OSError:
            empty = False
        return "empty file" if empty else "unknown or corrupt image format"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels (Pillow's decompression-bomb limit)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_8bit_grey(img):
    """16-bit greyscale as "L", scaled by 1/257 with rounding; Pillow's own convert("L") clips at 255 instead."""
    from PIL import Image

    arr = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)  # mode "I" is 32-bit; PNG fills only 16 of them
    return Image.fromarray(((arr + 128) // 257).astype(np.uint8), "L")


def decode_image(path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """An image file as uint8 (C, H, W): "L" for 1 channel or "RGB" for 3, bilinear-resized to size = (H, W).

    Transparent pixels are composited over black (they become 0), 16-bit grey is scaled to 8 bits, and EXIF
    orientation is ignored. Raises UnreadableImage for missing, empty, truncated and non-image files.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    H, W = size
    if H < 1 or W < 1:  # checked here, or Pillow's ValueError would blame the file
        raise ValueError(f"size must be (H, W) with both at least 1, got {size}")
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here rather than as a short array later
            if img.mode in _SIXTEEN_BIT_MODES:
                img = _to_8bit_grey(img)
            if img.has_transparency_data:  # RGBA, LA, PA, or a tRNS / "transparency" key on P, L, RGB
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size)  # black
                img.paste(rgba, mask=rgba.getchannel("A"))  # pixel * alpha/255: fully transparent -> 0
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (W, H):  # PIL sizes are (width, height)
                img = img.resize((W, H), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # SyntaxError, ValueError, EOFError: what some Pillow plugins raise for malformed headers
        raise UnreadableImage(_reason(exc, path)) from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def class_folders(path) -> list[tuple[str, Path]]:
    """Sorted (name, folder) of path's sub-folders, hidden ones (".name") skipped; RunError if path is no folder."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such folder")
    if not path.is_dir():
        raise RunError(f"{path}: not a folder; expected one sub-folder per class, e.g. {path / 'cat' / '1.png'}")
    try:
        entries = [p for p in path.iterdir() if not p.name.startswith(".") and p.is_dir()]
    except OSError as exc:
        raise RunError(f"{path}: cannot list: {exc.strerror or exc}") from None
    return sorted((p.name, p) for p in entries)


def _images_in(folder: Path) -> list[Path]:
    """Image files under folder, recursively, sorted by relative path; hidden files and folders skipped.

    Hidden files matter: macOS leaves "._name.jpg" resource forks that are not images. Symlinked files count;
    symlinked sub-folders are not followed, so a link loop cannot hang the listing.
    """
    def fail(exc: OSError):
        raise RunError(f"{exc.filename}: cannot list: {exc.strerror or exc}")

    found = []
    for root, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def list_images(path, classes=None, log: Callable[[str], None] | None = None
                ) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Every image file under path's class folders, its int64 label, and the class names.

    With classes (the training folder's names), labels index into classes and an unknown folder is a RunError.
    Non-image files are ignored; an empty class folder is reported through log as a warning.
    """
    path = Path(path)
    folders = class_folders(path)
    if not folders:
        loose = _images_in(path)  # no sub-folders, so only the files directly in path
        hint = f" (found {len(loose)} images directly in it)" if loose else ""
        raise RunError(f"{path}: no class sub-folders; expected one sub-folder per class, "
                       f"e.g. {path / 'cat' / '1.png'}{hint}")
    names = tuple(name for name, _ in folders) if classes is None else tuple(classes)
    index = {name: i for i, name in enumerate(names)}
    files, labels = [], []
    for name, folder in folders:
        if name not in index:
            raise RunError(f"{folder}: class {name!r} is not one of the training classes ({', '.join(names)})")
        found = _images_in(folder)
        if not found and log:
            log(f"warning: {folder}: class {name!r} has no images")
        files += found
        labels += [index[name]] * len(found)
    if not files:
        raise RunError(f"{path}: no images in its class folders (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files, np.array(labels, dtype=np.int64), names


def cache_key(path, channels: int, size: tuple[int, int], classes: tuple[str, ...], files: list[Path]) -> str:
    """sha256 of everything that decides the decoded arrays; one stat per file, no reading.

    A changed, added, removed or renamed file, or other channels/size/classes/Pillow version, gives a new key.
    """
    import PIL

    root = Path(path)
    stats = []
    for f in files:
        try:
            st = f.stat()
            stats.append([f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
        except OSError:  # vanished or unreadable: decoding reports it; the key just has to differ
            stats.append([f.relative_to(root).as_posix(), -1, -1])
    spec = {"version": CACHE_FORMAT_VERSION, "folder": str(root.resolve()), "channels": channels,
            "size": list(size), "resample": RESAMPLE, "pillow": PIL.__version__, "classes": list(classes),
            "files": stats}
    # ensure_ascii: file names that are not valid UTF-8 (surrogate escapes) still hash
    return hashlib.sha256(json.dumps(spec, ensure_ascii=True).encode()).hexdigest()


def cache_file(cache_dir, path, key: str) -> Path:
    """cache_dir/<sha256 of the resolved folder>[:16]-<key>[:16].npz; the prefix finds stale files of the folder."""
    return Path(cache_dir) / f"{_folder_prefix(path)}-{key[:16]}.npz"


def _folder_prefix(path) -> str:
    return hashlib.sha256(str(Path(path).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _read_cache(file: Path, key: str, n: int, shape: tuple[int, int, int]):
    """The cached (x, y, files, skipped, reasons), or None when missing, corrupt or not for this key."""
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {name: z[name] for name in ("key", "x", "y", "files", "skipped", "reasons")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    x, y = arrays["x"], arrays["y"]
    if (str(arrays["key"]) != key or x.dtype != np.uint8 or x.shape[1:] != shape or y.shape != (len(x),)
            or len(arrays["files"]) != len(x) or len(x) + len(arrays["skipped"]) != n):
        return None
    return x, y.astype(np.int64), arrays["files"].tolist(), arrays["skipped"].tolist(), arrays["reasons"].tolist()


def _write_cache(file: Path, key: str, x, y, files, skipped, reasons) -> None:
    """Atomically write the npz (arrays only, strings as numpy unicode) and delete older files of the folder."""
    from ..runs import atomic_write_bytes

    file.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), x=x, y=y, files=np.array(files, dtype=str),
             skipped=np.array(skipped, dtype=str), reasons=np.array(reasons, dtype=str))
    atomic_write_bytes(file, buf.getvalue())
    prefix = file.name.split("-")[0]
    for old in file.parent.glob(f"{prefix}-*.npz"):
        if old != file:
            old.unlink(missing_ok=True)


def load_image_folder(path, channels: int, size: tuple[int, int], strict: bool = False,
                      log: Callable[[str], None] | None = None, cache_dir=None, classes=None,
                      cache: bool = True) -> FolderData:
    """Decode every image under path's class folders to uint8 (N, C, H, W) once, then reuse the .npz cache
    (cache=False: decode every time, write nothing).

    Unreadable files are skipped with a warning (every load, cached or not), or a RunError when strict.
    Logs "decoded N images from <path> (cached in <file>)" on a miss and "read N images ... from cache" on a hit.
    """
    from . import datasets

    path = Path(path)
    H, W = size
    shape = (channels, H, W)
    files, labels, names = list_images(path, classes, log)
    key = cache_key(path, channels, size, names, files)
    cache_dir = Path(cache_dir) if cache_dir is not None else datasets.cache_dir() / CACHE_SUBDIR
    file = cache_file(cache_dir, path, key)

    cached = _read_cache(file, key, len(files), shape) if cache else None
    if cached is not None:
        x, y, rel, skipped, reasons = cached
        _report_skipped(path, skipped, reasons, strict, log)
        if log:
            log(f"read {len(x)} images from {path} (from cache {file})")
        return FolderData(x, y, names, tuple(rel), tuple(skipped))

    x = np.empty((len(files),) + shape, dtype=np.uint8)  # filled in place: no list of arrays to stack
    kept = np.zeros(len(files), dtype=bool)
    skipped, reasons = [], []
    n = 0  # readable images so far, packed to the front of x
    for i, f in enumerate(files):
        try:
            x[n] = decode_image(f, channels, size)
        except UnreadableImage as exc:
            skipped.append(f.relative_to(path).as_posix())
            reasons.append(str(exc))
            _report_skipped(path, skipped[-1:], reasons[-1:], strict, log)
        else:
            kept[i] = True
            n += 1
    if n == 0:
        raise RunError(f"{path}: none of the {len(files)} images could be read")
    if n < len(files):
        x = x[:n].copy()  # a copy, so the full-size buffer is freed
    y = labels[kept]
    rel = [f.relative_to(path).as_posix() for f, ok in zip(files, kept) if ok]

    where = "data.cache is off"
    if cache:
        try:
            _write_cache(file, key, x, y, rel, skipped, reasons)
            where = f"cached in {file}"
        except (OSError, RunError) as exc:  # a read-only cache only costs decoding again next time
            message = str(exc) if isinstance(exc, RunError) else f"{cache_dir}: cannot write: {exc.strerror or exc}"
            if log:
                log(f"warning: image cache {message}; images are decoded again next time")
            where = "not cached"
    if log:
        log(f"decoded {len(x)} images from {path} ({where})")
    return FolderData(x, y, names, tuple(rel), tuple(skipped))


def _report_skipped(path: Path, skipped, reasons, strict: bool, log) -> None:
    """RunError for the first unreadable file when strict, else one warning per file."""
    for rel, reason in zip(skipped, reasons):
        file = path / rel
        if strict:
            raise RunError(f"{file}: not a readable image ({reason}); remove it or set data.strict: false")
        if log:
            log(f"warning: {file}: skipped, not a readable image ({reason})")
