"""Find datasets on the data search path, or download them (md5-verified) into the cache; the image_folder dataset.

Search order: data.root alone when it is given (a wrong root must fail, not fall back to other data);
otherwise $CNNTRAIN_DATA, the cache dir, /usr/share/datasets (Debian's dataset-* packages).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..registry import DATASETS
from .idx import read_idx

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
DOWNLOAD_TIMEOUT = 30.0     # seconds without data before a mirror counts as unreachable
CHUNK = 1 << 20             # bytes per read while streaming a download to disk

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value, so compare by identity
class Dataset:
    """Train and test splits: uint8 images (N, C, H, W), int64 labels (N,), and the class names.

    val_x/val_y: a validation split of its own (an image folder's val_path); else it is held out of train.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None


@dataclass(frozen=True)
class IdxSpec:
    """Where an IDX dataset lives: folder names to search, public mirrors, and accepted md5s per file."""

    name: str
    folders: tuple[str, ...]            # the first is the one downloads go to
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]            # base URLs, tried in order
    md5: Mapping[str, tuple[str, ...]]  # file -> md5 of the .gz as published, or of its decompressed IDX bytes


MNIST = IdxSpec(
    name="mnist",
    folders=("mnist", "MNIST", "MNIST/raw"),  # MNIST/raw: torchvision's layout
    classes=tuple("0123456789"),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    md5={  # (.gz, decompressed): some mirrors re-compress, so the decompressed bytes are accepted too
        TRAIN_IMAGES: ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        TRAIN_LABELS: ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        TEST_IMAGES: ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        TEST_LABELS: ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    },
)

FASHION_MNIST = IdxSpec(
    name="fashion_mnist",
    folders=("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    md5={  # (.gz as published, decompressed): Debian's dataset-fashion-mnist re-compressed the .gz files
        TRAIN_IMAGES: ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        TRAIN_LABELS: ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
        TEST_IMAGES: ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
        TEST_LABELS: ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
    },
)


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/cnntrain, or ~/.cache/cnntrain."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cnntrain"


def search_dirs(root: str | None) -> list[Path]:
    """Folders searched for datasets: [root] when given, else $CNNTRAIN_DATA (os.pathsep-separated), cache, system."""
    if root:
        return [Path(root).expanduser()]
    dirs = [Path(p).expanduser() for p in os.environ.get("CNNTRAIN_DATA", "").split(os.pathsep) if p]
    return dirs + [cache_dir(), SYSTEM_DATA_DIR]


def search_hint(root: str | None) -> str:
    """What a missing-data message says after the folder to fill: where else the files may go."""
    return "(only data.root is searched when it is set)" if root else "(or set data.root / CNNTRAIN_DATA)"


def candidate_folders(spec: IdxSpec, root: str | None) -> list[Path]:
    """Every folder that may hold the dataset's files, in search order; root itself may be the dataset folder."""
    folders = []
    for i, base in enumerate(search_dirs(root)):
        folders += [base / name for name in spec.folders]
        if root and i == 0:
            folders.append(base)
    return folders


def find_file(folder: Path, name: str) -> Path | None:
    """folder/name (uncompressed, faster to read) or folder/name.gz, whichever exists first."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def find_complete(spec: IdxSpec, root: str | None) -> dict[str, Path] | None:
    """The four files from the first folder that has all of them, or None."""
    for folder in candidate_folders(spec, root):
        paths = {name: find_file(folder, name) for name in IDX_FILES}
        if all(paths.values()):
            return paths
    return None


def download_folder(spec: IdxSpec, root: str | None) -> Path:
    """Where missing files go: root (if it is the dataset folder) or root/<folder>, else the cache."""
    if not root:
        return cache_dir() / spec.folders[0]
    root = Path(root).expanduser()
    if root.name in spec.folders or any(find_file(root, name) for name in IDX_FILES):
        return root
    return root / spec.folders[0]


class DownloadError(Exception):
    """A file could not be fetched from any mirror; the message says why, per URL."""


def _describe(exc: Exception) -> str:
    """A short reason for a failed request, without urllib's nesting."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return f"no data for {DOWNLOAD_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


def _copy_md5(src, dst) -> str:
    """Stream src into dst in chunks; the md5 of what was copied."""
    md5 = hashlib.md5()
    while chunk := src.read(CHUNK):
        md5.update(chunk)
        dst.write(chunk)
    return md5.hexdigest()


def _gunzip_md5(path: Path) -> str | None:
    """md5 of the decompressed content, or None when the file is not valid gzip."""
    md5 = hashlib.md5()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                md5.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return md5.hexdigest()


def fetch_verified(url: str, dest: Path, digests: tuple[str, ...]) -> Path:
    """Download url to a temp file beside dest, check its md5, then move it into place.

    Accepted when the md5 of the bytes or of their gunzipped content is in digests;
    a rejected or partial download is deleted, so the cache never holds a bad file.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DownloadError(f"cannot write in {dest.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            digest = _copy_md5(response, out)
        if digest not in digests and _gunzip_md5(Path(tmp)) not in digests:
            raise DownloadError(f"checksum mismatch (md5 {digest}, expected {' or '.join(digests)})")
        os.replace(tmp, dest)
        return dest
    except (OSError, HTTPException, ValueError) as exc:  # ValueError: a malformed mirror URL
        raise DownloadError(_describe(exc)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone already after os.replace


def download_file(filename: str, digests: tuple[str, ...], folder: Path, mirrors: list[str], log) -> Path:
    """folder/filename fetched from the first mirror (base URL) that serves a copy whose md5 is in digests."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {folder}: {exc.strerror or exc}") from None
    failures = []
    for base in mirrors:
        url = f"{base.rstrip('/')}/{filename}"
        if log:
            log(f"downloading {filename} from {base}")
        try:
            return fetch_verified(url, folder / filename, digests)
        except DownloadError as exc:
            failures.append(f"{url}: {exc}")
            if log:
                log(f"failed: {failures[-1]}")
    raise DownloadError("; ".join(failures) or "no mirror to download from")


def fetch_missing(spec: IdxSpec, root: str | None, download: bool, mirror: str | None, log) -> dict[str, Path]:
    """The four files, downloading those missing from the download folder; RunError saying what to put where."""
    folder = download_folder(spec, root)
    paths = {name: find_file(folder, name) for name in IDX_FILES}
    missing = [name for name in IDX_FILES if paths[name] is None]
    reason = "downloads are off (data.download: false)"
    mirrors = ([mirror] if mirror else []) + list(spec.mirrors)
    while download and missing:
        try:
            paths[missing[0]] = download_file(f"{missing[0]}.gz", spec.md5[missing[0]], folder, mirrors, log)
        except DownloadError as exc:
            reason = f"download failed: {exc}"
            break  # no mirror has this file, so stop rather than wait on every timeout again
        missing.pop(0)
    if missing:
        files = ", ".join(f"{name}.gz" for name in missing)
        at = f" in data.root {Path(root).expanduser()}" if root else ""
        raise RunError(f"{spec.name}: missing {files}{at}; put them (gzipped or not) in {folder}{os.sep} "
                       f"{search_hint(root)}; {reason}")
    return paths


def read_images(path: Path) -> np.ndarray:
    """uint8 images (N, 1, H, W): a reshaped view of the IDX array, no copy."""
    x = read_idx(path)
    if x.ndim != 3:
        raise RunError(f"{path}: expected images of shape (N, H, W), got shape {x.shape}")
    if x.dtype != np.uint8:
        raise RunError(f"{path}: expected uint8 pixels, got {x.dtype}")
    return x.reshape(x.shape[0], 1, *x.shape[1:])


def read_labels(path: Path, images: np.ndarray, images_path: Path, n_classes: int) -> np.ndarray:
    """int64 labels (N,), one per image, each in [0, n_classes)."""
    y = read_idx(path)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise RunError(f"{path}: expected integer labels of shape (N,), got {y.dtype} of shape {y.shape}")
    if len(y) != len(images):
        raise RunError(f"{path}: {len(y)} labels, but {images_path} has {len(images)} images")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise RunError(f"{path}: labels must be in 0..{n_classes - 1}, found {y.min()}..{y.max()}")
    return y.astype(np.int64)


def load_idx_dataset(spec: IdxSpec, root: str | None = None, download: bool = True, mirror: str | None = None,
                     log: Callable[[str], None] | None = None) -> Dataset:
    """The dataset from the search path, downloading missing files into the cache (or root) when allowed."""
    paths = find_complete(spec, root) or fetch_missing(spec, root, download, mirror, log)
    n_classes = len(spec.classes)
    train_x, test_x = read_images(paths[TRAIN_IMAGES]), read_images(paths[TEST_IMAGES])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise RunError(f"{paths[TEST_IMAGES]}: images of shape {test_x.shape[2:]}, "
                       f"but {paths[TRAIN_IMAGES]} has {train_x.shape[2:]}")
    train_y = read_labels(paths[TRAIN_LABELS], train_x, paths[TRAIN_IMAGES], n_classes)
    test_y = read_labels(paths[TEST_LABELS], test_x, paths[TEST_IMAGES], n_classes)
    return Dataset(train_x, train_y, test_x, test_y, spec.classes)


@DATASETS.register("mnist")
def mnist(root: str | None = None, download: bool = True, mirror: str | None = None, log=None) -> Dataset:
    """MNIST handwritten digits: 60,000 train and 10,000 test images, 1x28x28, classes '0'..'9'."""
    return load_idx_dataset(MNIST, root, download, mirror, log)


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str | None = None, download: bool = True, mirror: str | None = None, log=None) -> Dataset:
    """Fashion-MNIST (Zalando): 60,000 train and 10,000 test clothing images, 1x28x28, 10 classes."""
    return load_idx_dataset(FASHION_MNIST, root, download, mirror, log)


# What `cnntrain summary` needs to know without reading any file.
for _loader, _spec in ((mnist, MNIST), (fashion_mnist, FASHION_MNIST)):
    _loader.input_shape, _loader.classes = (1, 28, 28), _spec.classes


TEST_SPLIT_STREAM = 3  # spawn_key component of the test hold-out of an image folder (0-2: model, shuffle, augment)


@DATASETS.register("image_folder")
def image_folder(path: str, val_path: str | None = None, test_path: str | None = None, test_split=0,
                 split_seed: int = 0, channels: int = 3, image_size=(32, 32), strict: bool = False,
                 cache: bool = True, log=None) -> Dataset:
    """One sub-folder of JPG/PNG/BMP images per class, converted to `channels` and resized to image_size (H, W).

    Validation and test images come from their own folders, or test_split of path is held out
    (seeded by split_seed); the class names are the training folder's sub-folder names.
    """
    from ..errors import ConfigError
    from .folder import load_image_folder
    from .loader import holdout

    def load(folder, classes=None):
        return load_image_folder(folder, channels, tuple(image_size), strict=strict, log=log, classes=classes,
                                 cache=cache)

    train = load(path)
    x, y = train.x, train.y
    if test_path is not None:
        test = load(test_path, train.classes)
        test_x, test_y = test.x, test.y
    else:
        try:
            keep, held = holdout(len(y), test_split, np.random.SeedSequence(split_seed, spawn_key=(TEST_SPLIT_STREAM,)),
                                 "test_split")
        except ValueError as exc:
            raise ConfigError(f"data.test_split: {exc}") from None
        x, y, test_x, test_y = x[keep], y[keep], x[held], y[held]
    val = load(val_path, train.classes) if val_path is not None else None
    return Dataset(x, y, test_x, test_y, train.classes, None if val is None else val.x, None if val is None else val.y)


def _describe_folder(data) -> tuple[tuple[int, ...], tuple[str, ...]]:
    from .folder import class_folders

    return (data.channels, *data.image_size), tuple(name for name, _ in class_folders(data.path))


image_folder.describe = _describe_folder
