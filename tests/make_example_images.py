"""Draw a small 3-class image-folder dataset (circle, square, triangle) with NumPy, saved as mixed PNG/JPG/BMP.

    python tests/make_example_images.py [OUT_DIR]     # default: examples/shapes in the repository

Images vary in size (24-44 px high, not square), position, scale, rotation, colours and noise; a third are greyscale.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle")
FORMATS = ("png", "jpg", "bmp", "jpg")  # cycled; BMP is uncompressed, so the rarest
SIZES = (24, 44)            # inclusive range of heights
MAX_ASPECT = 1.3            # width / height within [1 / MAX_ASPECT, MAX_ASPECT]: resizing to a square distorts less
SUPERSAMPLE = 4             # sub-pixels per pixel side, for anti-aliased edges
MIN_CONTRAST = 80           # least luminance by which the shape is lighter than the background (grey copies too)
NOISE = 4.0                 # std of the Gaussian pixel noise; more makes the PNGs much larger
JPEG_QUALITY = 85
OUR_FILES = re.compile(r"\d{3,}\.(png|jpg|bmp)")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "examples" / "shapes"


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def shape_coverage(name: str, H: int, W: int, rng: np.random.Generator) -> np.ndarray:
    """Fraction of each pixel (H, W) inside a randomly placed, sized and rotated circle, square or triangle."""
    ys = (np.arange(H * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    xs = (np.arange(W * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    r = rng.uniform(0.24, 0.34) * min(H, W)
    # radius of the circle around the shape, so it stays inside the image; the factors give similar areas
    extent = {"circle": r, "square": 0.85 * r * np.sqrt(2), "triangle": 1.35 * r}[name]
    cy, cx = rng.uniform(extent, H - extent), rng.uniform(extent, W - extent)
    dy, dx = yy - cy, xx - cx
    if name == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif name == "square":
        a = np.deg2rad(rng.uniform(-25, 25))
        u, v = np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy
        inside = np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    else:
        a = rng.uniform(0, 2 * np.pi)
        # inside an equilateral triangle = on the inner side of its three edges, each at distance R/2 from the centre
        normals = [a + np.pi + k * 2 * np.pi / 3 for k in range(3)]
        inside = np.all([np.cos(t) * dx + np.sin(t) * dy <= 1.35 * r / 2 for t in normals], axis=0)
    return inside.reshape(H, SUPERSAMPLE, W, SUPERSAMPLE).mean(axis=(1, 3))


def draw(name: str, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image (H, W, 3): a filled shape on a plain background, with noise."""
    H = int(rng.integers(SIZES[0], SIZES[1] + 1))
    W = int(round(H * np.exp(rng.uniform(-1, 1) * np.log(MAX_ASPECT))))
    while True:  # redraw both: a light background may leave no lighter colour
        background, colour = rng.uniform(0, 255, (2, 3))
        # always lighter, like MNIST's strokes: with 40 images a class, mixed polarity is too hard to learn
        if _luminance(colour) - _luminance(background) >= MIN_CONTRAST:
            break
    m = shape_coverage(name, H, W, rng)[..., None]
    img = background * (1 - m) + colour * m + rng.normal(0, NOISE, (H, W, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_shapes(out_dir, per_class_train: int = 40, per_class_test: int = 10, seed: int = 0) -> list[Path]:
    """Write out_dir/{train,test}/{circle,square,triangle}/NNN.{png,jpg,bmp}; the paths written.

    Formats cycle png, jpg, bmp, jpg and every 3rd image is greyscale ("L"): 12 images hold every combination.
    Earlier files of this script (NNN.png/jpg/bmp) in those folders are removed first; nothing else is touched.
    """
    from PIL import Image

    out_dir, rng, written = Path(out_dir), np.random.default_rng(seed), []
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for name in CLASSES:
            folder = out_dir / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():
                if OUR_FILES.fullmatch(old.name):
                    old.unlink()
            for i in range(count):
                img = Image.fromarray(draw(name, rng))
                if i % 3 == 2:
                    img = img.convert("L")
                fmt = FORMATS[i % len(FORMATS)]
                path = folder / f"{i:03d}.{fmt}"
                img.save(path, **({"quality": JPEG_QUALITY} if fmt == "jpg" else {}))
                written.append(path)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=DEFAULT_OUT, type=Path)
    parser.add_argument("--train", type=int, default=40, help="images per class in train/")
    parser.add_argument("--test", type=int, default=10, help="images per class in test/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_shapes(args.out_dir, args.train, args.test, args.seed)


if __name__ == "__main__":
    main()
