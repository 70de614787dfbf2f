"""Top-k predictions for image files, preprocessed exactly as the checkpoint's training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RunError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def image_files(targets) -> list[Path]:
    """Files as given, and every JPG/PNG/BMP inside a folder argument (sorted)."""
    files = []
    for target in map(Path, targets):
        if target.is_dir():
            found = sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise RunError(f"{target}: no .png, .jpg or .bmp images in this folder")
            files += found
        else:
            files.append(target)
    return files


def load_image(path: Path, shape) -> np.ndarray:
    """An image file as uint8 (C, H, W) of the network's input shape: converted to 1 or 3 channels, resized.

    Pixels are not inverted or otherwise changed: MNIST digits are light on a dark background,
    so a dark digit on white paper must be inverted by the user.
    """
    from PIL import Image, UnidentifiedImageError

    C, H, W = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if C == 1 else "RGB")
            if img.size != (W, H):
                img = img.resize((W, H), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RunError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    if C not in (1, 3):
        raise RunError(f"{path}: the network takes {C} channels; images can give 1 (grey) or 3 (RGB)")
    return arr[None] if C == 1 else arr.transpose(2, 0, 1)


def predict_images(checkpoint, targets, top_k: int = 3) -> list[dict]:
    """For each image: the top-k classes with probabilities."""
    from .experiment import load_model, make_preprocess
    from .runs import find_checkpoint

    checkpoint = find_checkpoint(checkpoint)
    cfg, meta, model, loss = load_model(checkpoint)
    shape = tuple(meta["input_shape"])
    files = image_files(targets)
    x = np.stack([load_image(p, shape) for p in files])  # every file is read before anything is predicted
    probs = loss.probabilities(model.forward(make_preprocess(cfg, shape[0])(x), training=False))
    classes = meta["classes"]
    k = min(top_k, probs.shape[1])
    results = []
    for path, p in zip(files, probs):
        order = np.argsort(-p, kind="stable")[:k]
        results.append({"image": str(path), "top": [{"class": classes[i], "index": int(i),
                                                     "probability": float(p[i])} for i in order]})
    return results
