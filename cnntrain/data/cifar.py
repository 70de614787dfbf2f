"""CIFAR-10, binary version: the extracted batches or the archive from data.root or the search path, or a download.

A batch file is a run of 3073-byte records: one label byte (0..9), then 1024 red, 1024 green and
1024 blue bytes, each a 32x32 image row-major, so a record is already in (C, H, W) order.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import RunError
from ..registry import DATASETS
from .datasets import CHUNK, Dataset, DownloadError, cache_dir, download_file, search_dirs, search_hint

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_ARCHIVE = ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")  # (file name, md5 as published)
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)  # base URLs, tried in order after data.mirror

BATCHES_DIR = "cifar-10-batches-bin"  # the folder the archive extracts to
FOLDERS = ("cifar10", "cifar-10", "CIFAR10")  # parents of BATCHES_DIR; the first is where archives are extracted
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
BATCH_FILES = (*TRAIN_BATCHES, TEST_BATCH)
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32

# Python >= 3.11.4 (and backports) vet each member again on extraction; older ones rely on _member_name alone.
_EXTRACT_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def is_complete(folder: Path) -> bool:
    """True when folder holds all six batch files."""
    return all((folder / name).is_file() for name in BATCH_FILES)


def candidate_folders(root: str | None) -> list[Path]:
    """Every folder that may be the extracted cifar-10-batches-bin, in search order; root itself may be it."""
    folders = []
    for i, base in enumerate(search_dirs(root)):
        folders += [base / BATCHES_DIR] + [base / name / BATCHES_DIR for name in FOLDERS]
        if root and i == 0:
            folders.append(base)
    return folders


def find_archive(root: str | None) -> Path | None:
    """The first cifar-10-binary.tar.gz directly in a search folder or in its cifar10/, or None."""
    name = CIFAR10_ARCHIVE[0]
    for base in search_dirs(root):
        for path in (base / name, base / FOLDERS[0] / name):
            if path.is_file():
                return path
    return None


def download_folder(root: str | None) -> Path:
    """Where the archive is downloaded and extracted to: root (if a cifar10 folder) or root/cifar10, else the cache."""
    if not root:
        return cache_dir() / FOLDERS[0]
    root = Path(root).expanduser()
    if root.name in FOLDERS or (root / CIFAR10_ARCHIVE[0]).is_file():
        return root
    return root / FOLDERS[0]


def download_archive(folder: Path, mirrors: list[str], log) -> Path:
    """folder/cifar-10-binary.tar.gz fetched from the first mirror that serves a copy with the published md5."""
    name, digest = CIFAR10_ARCHIVE
    return download_file(name, (digest,), folder, mirrors, log)


class BadArchive(Exception):
    """The archive is not a complete, safe CIFAR-10 binary archive; the message says what is wrong."""


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The file name of a cifar-10-batches-bin/<name> regular file, None for entries to skip; raises on unsafe ones."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\\" in member.name:
        raise BadArchive(f"unsafe member path {member.name!r}")
    if not (member.isfile() or member.isdir()):  # links and devices: no genuine CIFAR-10 archive has them
        raise BadArchive(f"unsafe member {member.name!r} (a link or special file)")
    if member.isfile() and len(path.parts) == 2 and path.parts[0] == BATCHES_DIR:
        return path.parts[1]
    return None


def _extract_into(archive: Path, tmp: Path) -> None:
    """Extract the batch folder's regular files from archive into tmp/cifar-10-batches-bin, in one pass."""
    # gzip.open rather than tarfile's own "r|gz": GzipFile checks the CRC, so a flipped byte is caught.
    with gzip.open(archive, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        for member in tar:
            if _member_name(member):
                tar.extract(member, tmp, **_EXTRACT_FILTER)
        while gz.read(CHUNK):  # the CRC is checked only at the end of the stream
            pass
    missing = [name for name in BATCH_FILES if not (tmp / BATCHES_DIR / name).is_file()]
    if missing:
        raise BadArchive(f"no {BATCHES_DIR}/{', '.join(missing)} in it")


def extract_archive(archive: Path, dest: Path, owned: bool, log) -> Path:
    """Extract archive into dest/cifar-10-batches-bin via a temp folder and os.replace, never a half folder.

    A corrupt archive is deleted when owned (downloaded or in the cache), so the next run fetches it again.
    """
    target = dest / BATCHES_DIR
    if target.exists() and not is_complete(target):
        raise RunError(f"{target} exists but lacks some of {', '.join(BATCH_FILES)}; "
                       f"remove it to extract {archive} there")
    if log:
        log(f"extracting {archive.name} into {dest}")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{BATCHES_DIR}.", suffix=".part"))
    except OSError as exc:
        raise RunError(f"cannot extract {archive} into {dest}: {exc.strerror or exc}") from None
    try:
        try:
            _extract_into(archive, tmp)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, BadArchive) as exc:
            if owned:
                archive.unlink(missing_ok=True)
            fix = "deleted it, so the next run downloads it again" if owned else "replace it with a good copy"
            raise RunError(f"{archive}: corrupt or not the CIFAR-10 binary archive: {exc}; {fix}") from None
        except OSError as exc:
            raise RunError(f"cannot extract {archive} into {dest}: {exc.strerror or exc}") from None
        try:
            os.replace(tmp / BATCHES_DIR, target)
        except OSError as exc:
            if not is_complete(target):  # complete: another process extracted it first, so use its copy
                raise RunError(f"cannot move the extracted batches to {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_in_cache(path: Path) -> bool:
    """True for files under cache_dir(): ours to delete, unlike a copy in data.root or a system folder."""
    return path.resolve().is_relative_to(cache_dir().resolve())


def obtain_batches(root: str | None, download: bool, mirror: str | None, log) -> Path:
    """The batch folder, extracted from an archive found on the search path or downloaded.

    With neither, a RunError saying what to put where.
    """
    folder = download_folder(root)
    archive, owned = find_archive(root), False
    reason = "downloads are off (data.download: false)"
    if archive is not None:
        owned = _is_in_cache(archive)
    elif download:
        try:
            archive, owned = download_archive(folder, ([mirror] if mirror else []) + list(CIFAR10_MIRRORS), log), True
        except DownloadError as exc:
            reason = f"download failed: {exc}"
    if archive is None:
        at = f" in data.root {Path(root).expanduser()}" if root else ""
        raise RunError(f"cifar10: missing {BATCHES_DIR}/ ({TRAIN_BATCHES[0]}..{TRAIN_BATCHES[-1]}, {TEST_BATCH}) "
                       f"or {CIFAR10_ARCHIVE[0]}{at}; put one of them in {folder}{os.sep} {search_hint(root)}; "
                       f"{reason}")
    return extract_archive(archive, folder, owned, log)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32), a view of the records, and int64 labels (N,) from one binary batch."""
    try:
        size = path.stat().st_size
        records = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise RunError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise RunError(f"{path}: empty file, expected {RECORD_BYTES}-byte CIFAR-10 records")
    if size % RECORD_BYTES:
        raise RunError(f"{path}: truncated or not a CIFAR-10 binary batch: "
                       f"{size} bytes is not a multiple of {RECORD_BYTES}")
    records = records.reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    if labels.max() >= len(CIFAR10_CLASSES):
        raise RunError(f"{path}: labels must be in 0..{len(CIFAR10_CLASSES) - 1}, found {labels.min()}..{labels.max()}")
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


@DATASETS.register("cifar10")
def cifar10(root: str | None = None, download: bool = True, mirror: str | None = None,
            log: Callable[[str], None] | None = None) -> Dataset:
    """CIFAR-10 (binary version): 50,000 train and 10,000 test colour images, 3x32x32, 10 classes."""
    folder = next((f for f in candidate_folders(root) if is_complete(f)), None)
    folder = folder or obtain_batches(root, download, mirror, log)
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    test_x, test_y = read_batch(folder / TEST_BATCH)
    train_x = np.concatenate([x for x, _ in train])  # a copy, so C-contiguous
    train_y = np.concatenate([y for _, y in train])
    return Dataset(train_x, train_y, np.ascontiguousarray(test_x), test_y, CIFAR10_CLASSES)


# What `cnntrain summary` needs to know without reading any file.
cifar10.input_shape, cifar10.classes = IMAGE_SHAPE, CIFAR10_CLASSES
