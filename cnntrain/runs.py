"""The run directory: naming, atomic writes, CSV logs, npz checkpoints.

runs/<name>-<YYYYmmdd-HHMMSS>/ holds config.yaml, metrics.csv, steps.csv, the
figures, checkpoints/last.npz and best.npz, and summary.json.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from .errors import RunError

CHECKPOINT_FORMAT = "cnntrain-checkpoint"
_UMASK = os.umask(0)
os.umask(_UMASK)
CHECKPOINT_VERSION = 1


def make_run_dir(runs_dir, name: str) -> Path:
    """Create runs_dir/<name>-<timestamp>, adding -2, -3, ... when a run started in the same second."""
    runs_dir = Path(runs_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = runs_dir / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
            try:
                path.mkdir()  # atomic: two processes can never get the same directory
            except FileExistsError:
                continue
            (path / "checkpoints").mkdir()
            return path
    except OSError as exc:
        raise RunError(f"{runs_dir}: cannot create the run directory: {exc.strerror or exc}") from None
    raise RunError(f"{runs_dir}: too many runs named {name!r} in one second")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: never a half-written file."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should be as readable as any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise RunError(f"{path}: cannot write: {exc.strerror or exc}") from None


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def json_number(value: float):
    """NaN and infinities as null, so summary.json stays standard JSON."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def save_checkpoint(path, config_text: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """A self-contained .npz: the config as text, meta as JSON text, and named arrays; written atomically."""
    buf = io.BytesIO()
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta}
    np.savez(buf, config=np.array(config_text), meta=np.array(json.dumps(meta, default=_json_default)), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(config text, meta, arrays) from a checkpoint; RunError for a missing, truncated or foreign file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise RunError(f"{path}: no such checkpoint") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise RunError(f"{path}: not a readable cnntrain checkpoint ({exc})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
        config_text = str(arrays.pop("config"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("wrong format tag")
    except (KeyError, ValueError) as exc:
        raise RunError(f"{path}: not a cnntrain checkpoint (missing or bad config/meta: {exc})") from None
    return config_text, meta, arrays


def find_checkpoint(path) -> Path:
    """A checkpoint file, or a run directory's checkpoints/best.npz (else last.npz)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.npz", "last.npz"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise RunError(f"{path}: no checkpoints/best.npz or checkpoints/last.npz in this run directory")
    return path


class CsvAppender:
    """Appends rows to one CSV file, flushing each; the header is written when the file is new."""

    def __init__(self, path, columns):
        self.path, self.columns, self.file = Path(path), list(columns), None

    def append(self, row: dict) -> None:
        try:
            if self.file is None:
                new = not self.path.exists() or self.path.stat().st_size == 0
                self.file = open(self.path, "a", newline="")
                self.writer = csv.DictWriter(self.file, fieldnames=self.columns)
                if new:
                    self.writer.writeheader()
            self.writer.writerow({k: format_value(row[k]) for k in self.columns})
            self.file.flush()
        except OSError as exc:
            raise RunError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def split_state(arrays: dict) -> tuple[dict, dict]:
    """A checkpoint's arrays as (model state by stable name, optimizer state `optim/...`)."""
    optim = {k: v for k, v in arrays.items() if k.startswith("optim/")}
    return {k: v for k, v in arrays.items() if k not in optim}, optim


def format_value(value):
    """How a number is written to the CSV files: 10 significant digits, NaN as an empty cell."""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.10g}"
    if isinstance(value, np.integer):
        return int(value)
    return value


def truncate_csv(path, column: str, last: int) -> None:
    """Keep only the rows whose `column` is <= last (rows after a checkpoint are trained again on resume)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if not lines:
        return
    index = next(csv.reader([lines[0]])).index(column)

    def keep(line: str) -> bool:
        try:  # a row cut short by a kill has no newline or too few cells: drop it
            return line.endswith("\n") and int(next(csv.reader([line]))[index]) <= last
        except (ValueError, IndexError, StopIteration):
            return False

    atomic_write_text(path, "".join([lines[0]] + [line for line in lines[1:] if keep(line)]))


def read_csv(path) -> dict[str, np.ndarray]:
    """A metrics CSV as {column: float array}; empty cells are NaN."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {key: np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
            for key in rows[0]}
