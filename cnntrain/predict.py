"""Top-k predictions for image files, decoded and preprocessed exactly as the checkpoint's training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.folder import IMAGE_SUFFIXES, UnreadableImage, decode_image
from .errors import RunError


def image_files(targets) -> list[Path]:
    """Files as given, and every JPG/PNG/BMP inside a folder argument (sorted)."""
    files = []
    for target in map(Path, targets):
        if target.is_dir():
            found = sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise RunError(f"{target}: no .png, .jpg or .bmp images in this folder")
            files += found
        else:
            files.append(target)
    return files


def load_image(path: Path, shape) -> np.ndarray:
    """An image file as uint8 (C, H, W) of the network's input shape, by the decoder image folders train with.

    Pixels are not inverted or otherwise changed: MNIST digits are light on a dark background,
    so a dark digit on white paper must be inverted by the user.
    """
    C, H, W = shape
    if C not in (1, 3):
        raise RunError(f"{path}: the network takes {C} channels; images can give 1 (grey) or 3 (RGB)")
    if not Path(path).is_file():
        raise RunError(f"{path}: no such file")
    try:
        return decode_image(path, C, (H, W))
    except UnreadableImage as exc:
        raise RunError(f"{path}: not a readable image ({exc})") from None


def predict_images(checkpoint, targets, top_k: int = 3) -> list[dict]:
    """For each image: the top-k classes with probabilities."""
    from .inspection import load_model
    from .runs import find_checkpoint

    checkpoint = find_checkpoint(checkpoint)
    exp, meta, model = load_model(checkpoint)
    shape = tuple(meta["input_shape"])
    files = image_files(targets)
    x = np.stack([load_image(p, shape) for p in files])  # every file is read before anything is predicted
    preprocess = exp.stored_preprocess(meta, shape[0])
    probs = exp.loss.probabilities(model.forward(preprocess(x), training=False))
    classes = meta["classes"]
    k = min(top_k, probs.shape[1])
    results = []
    for path, p in zip(files, probs):
        order = np.argsort(-p, kind="stable")[:k]
        results.append({"image": str(path), "top": [{"class": classes[i], "index": int(i),
                                                     "probability": float(p[i])} for i in order]})
    return results
