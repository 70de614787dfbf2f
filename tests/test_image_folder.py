"""Image folders: decoding against Pillow's own conversions, labels by folder name, unreadable files, the npz cache.

Every test gets HOME and XDG_CACHE_HOME inside tmp_path, so the real ~/.cache is never touched.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

from cnntrain.data import folder
from cnntrain.data.folder import (IMAGE_SUFFIXES, FolderData, UnreadableImage, class_folders, decode_image,
                                  list_images, load_image_folder)
from cnntrain.errors import RunError
from make_example_images import CLASSES, make_shapes


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def rgb(H, W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def save(path, arr, mode=None, **kwargs):
    """Write arr with Pillow (format from the suffix), creating folders; the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    img.save(path, **kwargs)
    return path


def chw(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def make_folder(root, counts, size=(8, 10), seed=0):
    """root/<class>/<i>.png with random RGB pixels, counts = {class: n}; the paths in sorted order."""
    paths = []
    for k, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            paths.append(save(root / name / f"{i}.png", rgb(*size, seed=seed + 100 * k + i)))
    return paths


def bytes_of(arr, fmt, **kwargs):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kwargs)
    return buf.getvalue()


class Counter:
    """decode_image, counting calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return decode_image(*args, **kwargs)


@pytest.fixture
def count_decodes(monkeypatch):
    counter = Counter()
    monkeypatch.setattr(folder, "decode_image", counter)
    return counter


def no_decoding(*args, **kwargs):
    raise AssertionError("decode_image called on a cache hit")


# decode_image


def test_grey_file_gives_three_equal_channels(tmp_path):
    grey = rgb(12, 9)[..., 0]
    x = decode_image(save(tmp_path / "g.png", grey, "L"), 3, (12, 9))
    assert x.shape == (3, 12, 9) and x.dtype == np.uint8, f"{x.shape} {x.dtype}"
    for c in range(3):
        assert np.array_equal(x[c], grey), f"channel {c} differs from the grey pixels, shape {x.shape}"


def test_colour_file_to_one_channel_equals_pil_convert_L(tmp_path):
    path = save(tmp_path / "c.png", rgb(12, 9))
    x = decode_image(path, 1, (12, 9))
    expected = np.asarray(Image.open(path).convert("L"))
    assert x.shape == (1, 12, 9), f"{x.shape}"
    assert np.array_equal(x[0], expected), f"max diff {np.abs(x[0].astype(int) - expected).max()}"


def test_colour_file_keeps_rgb_order(tmp_path):
    arr = rgb(6, 7)
    x = decode_image(save(tmp_path / "c.png", arr), 3, (6, 7))
    assert np.array_equal(x, arr.transpose(2, 0, 1)), f"{x.shape} vs {arr.shape}"


def test_transparent_pixels_are_composited_over_black(tmp_path):
    colour = rgb(6, 8)
    alpha = np.zeros((6, 8), np.uint8)
    alpha[:, 4:] = 255
    alpha[0, 4] = 128
    path = save(tmp_path / "a.png", np.dstack([colour, alpha]), "RGBA")
    x = decode_image(path, 3, (6, 8))
    assert np.all(x[:, :, :4] == 0), f"transparent half not black: max {x[:, :, :4].max()}, shape {x.shape}"
    assert np.array_equal(x[:, 1:, 4:], colour[1:, 4:].transpose(2, 0, 1)), "opaque pixels changed"
    half = colour[0, 4].astype(int) * 128 / 255  # pixel * alpha / 255
    assert np.all(np.abs(x[:, 0, 4] - half) <= 1), f"{x[:, 0, 4]} vs {half}"
    grey = decode_image(path, 1, (6, 8))
    assert np.all(grey[0, :, :4] == 0), f"1-channel transparent half not black, shape {grey.shape}"


def test_palette_and_la_transparency_are_black(tmp_path):
    pal = np.zeros((5, 5), np.uint8)
    pal[2:, :] = 1
    img = Image.fromarray(pal, "P")
    img.putpalette([200, 50, 90, 10, 220, 30] + [0] * 762)
    img.info["transparency"] = 0  # palette index 0 (the top rows) is transparent
    x = decode_image(save(tmp_path / "p.png", img, transparency=0), 3, (5, 5))
    assert np.all(x[:, :2] == 0), f"transparent palette entry not black: {x[:, 0, 0]}"
    assert np.all(x[:, 2:] == np.array([10, 220, 30])[:, None, None]), f"opaque palette colour wrong: {x[:, 4, 4]}"
    la = np.dstack([np.full((5, 5), 180, np.uint8), np.where(pal == 1, 255, 0).astype(np.uint8)])
    x = decode_image(save(tmp_path / "la.png", la, "LA"), 1, (5, 5))
    assert np.all(x[0, :2] == 0) and np.all(x[0, 2:] == 180), f"LA over black wrong: {x[0, :, 0]}"


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    img = Image.fromarray(levels * 257)  # 8-bit value v stored as 16-bit v * 257
    path = save(tmp_path / "g16.png", img)
    assert Image.open(path).mode.startswith("I"), Image.open(path).mode
    x = decode_image(path, 1, (16, 16))
    assert np.array_equal(x[0], levels), f"16-bit grey not scaled by 1/257: max diff {np.abs(x[0] - levels).max()}"


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_equals_pil_bilinear_to_height_width(tmp_path, channels):
    path = save(tmp_path / "big.png", rgb(37, 23))
    x = decode_image(path, channels, (20, 30))
    mode = "L" if channels == 1 else "RGB"
    expected = chw(Image.open(path).convert(mode).resize((30, 20), Image.Resampling.BILINEAR))
    assert x.shape == (channels, 20, 30), f"{x.shape}: size is (H, W), PIL's is (W, H)"
    assert np.array_equal(x, expected), f"max diff {np.abs(x.astype(int) - expected).max()}"


def test_bmp_is_exact_and_jpg_matches_pil(tmp_path):
    arr = rgb(10, 14)
    bmp = decode_image(save(tmp_path / "a.bmp", arr), 3, (10, 14))
    assert np.array_equal(bmp, arr.transpose(2, 0, 1)), f"BMP pixels changed, shape {bmp.shape}"
    smooth = np.repeat(np.linspace(0, 255, 14, dtype=np.uint8)[None, :, None], 10, axis=0).repeat(3, axis=2)
    path = save(tmp_path / "a.jpg", smooth, quality=95)
    jpg = decode_image(path, 3, (10, 14))
    assert np.array_equal(jpg, chw(Image.open(path).convert("RGB"))), f"JPG differs from Pillow, shape {jpg.shape}"
    assert np.abs(jpg.astype(int) - smooth.transpose(2, 0, 1)).mean() < 4, "JPG far from the saved pixels"


def unreadable_files(root):
    """name -> bytes of files that are not readable images."""
    png, jpg = bytes_of(rgb(40, 50), "PNG"), bytes_of(rgb(40, 50), "JPEG")
    return {"random.png": np.random.default_rng(0).bytes(300), "half.png": png[: len(png) // 2],
            "half.jpg": jpg[: len(jpg) // 2], "empty.png": b"", "notes.jpeg": b"not an image\n"}


@pytest.mark.parametrize("name", ["random.png", "half.png", "half.jpg", "empty.png", "notes.jpeg", "missing.png"])
def test_unreadable_files_raise_with_a_one_line_reason(tmp_path, name):
    data = unreadable_files(tmp_path).get(name)
    if data is not None:
        (tmp_path / name).write_bytes(data)
    with pytest.raises(UnreadableImage) as info:
        decode_image(tmp_path / name, 3, (8, 8))
    reason = str(info.value)
    assert reason and "\n" not in reason and str(tmp_path) not in reason, repr(reason)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES, "decoding must not allow truncated images"


def test_reasons_say_empty_truncated_and_missing(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "half.png").write_bytes(unreadable_files(tmp_path)["half.png"])
    for name, word in (("empty.png", "empty"), ("half.png", "truncated"), ("missing.png", "no such file")):
        with pytest.raises(UnreadableImage, match=word):
            decode_image(tmp_path / name, 1, (4, 4))


def test_bad_channels_or_size_are_a_value_error_not_an_unreadable_file(tmp_path):
    path = save(tmp_path / "a.png", rgb(4, 4))
    with pytest.raises(ValueError, match="channels"):
        decode_image(path, 2, (4, 4))
    with pytest.raises(ValueError, match="size"):
        decode_image(path, 3, (0, 4))


def test_importing_the_module_does_not_import_pillow():
    code = "import sys, cnntrain.data.folder; assert 'PIL' not in sys.modules, sorted(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# listing and labels


def test_labels_follow_sorted_folder_names_and_other_files_are_ignored(tmp_path):
    save(tmp_path / "dog" / "b.PNG", rgb(4, 4))
    save(tmp_path / "dog" / "a.jpeg", rgb(4, 4))
    save(tmp_path / "cat" / "z.bmp", rgb(4, 4))
    save(tmp_path / "cat" / "deep" / "1.png", rgb(4, 4))  # nested: still the class of its top folder
    save(tmp_path / "ant" / "x.JPG", rgb(4, 4))
    (tmp_path / "cat" / "readme.txt").write_text("hi")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "cat" / "._z.bmp").write_bytes(b"\0\1")  # macOS resource fork: hidden, not an image
    save(tmp_path / ".hidden" / "h.png", rgb(4, 4))
    save(tmp_path / "loose.png", rgb(4, 4))
    files, y, classes = list_images(tmp_path)
    assert classes == ("ant", "cat", "dog"), classes
    rel = [f.relative_to(tmp_path).as_posix() for f in files]
    assert rel == ["ant/x.JPG", "cat/deep/1.png", "cat/z.bmp", "dog/a.jpeg", "dog/b.PNG"], rel
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 1, 2, 2], f"{y.dtype} {y}"
    assert [name for name, _ in class_folders(tmp_path)] == ["ant", "cat", "dog"]
    assert IMAGE_SUFFIXES == (".png", ".jpg", ".jpeg", ".bmp")


def test_given_classes_map_by_name_and_allow_a_subset(tmp_path):
    make_folder(tmp_path / "test", {"dog": 2, "ant": 1})  # no "cat" folder: fine
    data = load_image_folder(tmp_path / "test", 3, (8, 10), classes=("ant", "cat", "dog"), cache_dir=tmp_path / "c")
    assert data.classes == ("ant", "cat", "dog"), data.classes
    assert data.y.tolist() == [0, 2, 2], f"labels {data.y} for files {data.files}"
    assert data.files == ("ant/0.png", "dog/0.png", "dog/1.png"), data.files


def test_an_unknown_class_folder_is_a_run_error_naming_it(tmp_path):
    make_folder(tmp_path / "test", {"cat": 1, "emu": 1})
    with pytest.raises(RunError, match=r"emu.*'emu'.*ant, cat, dog"):
        list_images(tmp_path / "test", classes=("ant", "cat", "dog"))


def test_an_empty_class_folder_is_kept_with_a_warning(tmp_path):
    make_folder(tmp_path, {"a": 1, "c": 1})
    (tmp_path / "b").mkdir()
    lines = []
    data = load_image_folder(tmp_path, 1, (8, 10), log=lines.append, cache_dir=tmp_path / ".cache")
    assert data.classes == ("a", "b", "c") and data.y.tolist() == [0, 2], f"{data.classes} {data.y}"
    assert any(line.startswith("warning:") and "'b'" in line for line in lines), lines


@pytest.mark.parametrize("case", ["missing", "file", "no class folders", "no images"])
def test_folder_errors_name_the_path(tmp_path, case):
    path = tmp_path / "data"
    if case == "file":
        path.write_text("x")
    elif case == "no class folders":
        save(path / "loose.png", rgb(4, 4))
    elif case == "no images":
        (path / "cat").mkdir(parents=True)
        (path / "cat" / "notes.txt").write_text("x")
    with pytest.raises(RunError) as info:
        load_image_folder(path, 3, (4, 4), cache_dir=tmp_path / "c")
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    if case == "no class folders":
        assert "one sub-folder per class" in message and "1 images directly" in message, message


# unreadable files in a folder


def corrupt_folder(root):
    """root/a with 2 good images and the unreadable files, root/b with 1 good image; the unreadable paths."""
    make_folder(root, {"a": 2, "b": 1})
    bad = []
    for name, data in unreadable_files(root).items():
        bad.append(root / "a" / name)
        bad[-1].write_bytes(data)
    return bad


def test_unreadable_files_are_skipped_with_a_warning_each(tmp_path):
    bad = corrupt_folder(tmp_path / "d")
    lines = []
    data = load_image_folder(tmp_path / "d", 3, (8, 10), log=lines.append, cache_dir=tmp_path / "c")
    assert data.x.shape == (3, 3, 8, 10) and data.y.tolist() == [0, 0, 1], f"{data.x.shape} {data.y}"
    assert data.files == ("a/0.png", "a/1.png", "b/0.png"), data.files
    assert sorted(data.skipped) == sorted(f"a/{p.name}" for p in bad), data.skipped
    warnings = [line for line in lines if line.startswith("warning:")]
    for path in bad:
        assert any(f"{path}: skipped, not a readable image (" in line for line in warnings), (path, warnings)
    assert np.array_equal(data.x[2], decode_image(tmp_path / "d" / "b" / "0.png", 3, (8, 10)))

    lines.clear()  # the cache remembers the skipped files, and says so again
    again = load_image_folder(tmp_path / "d", 3, (8, 10), log=lines.append, cache_dir=tmp_path / "c")
    assert again.skipped == data.skipped and sum("skipped" in line for line in lines) == len(bad), lines


@pytest.mark.parametrize("cached", [False, True])
def test_strict_makes_an_unreadable_file_a_run_error_naming_it(tmp_path, cached):
    make_folder(tmp_path / "d", {"a": 2})
    (tmp_path / "d" / "a" / "bad.png").write_bytes(b"")
    if cached:  # a non-strict load first: the cached result must not hide the bad file
        load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    with pytest.raises(RunError, match=r"bad\.png: not a readable image \(empty file\); remove it or set "
                                       r"data\.strict: false"):
        load_image_folder(tmp_path / "d", 3, (8, 10), strict=True, cache_dir=tmp_path / "c")


def test_a_folder_of_only_unreadable_files_is_a_run_error(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(RunError, match="none of the 1 images"):
        load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")


# the cache


def test_second_load_reads_the_cache_and_returns_identical_arrays(tmp_path, monkeypatch):
    make_folder(tmp_path / "d", {"a": 2, "b": 3})
    lines = []
    first = load_image_folder(tmp_path / "d", 3, (8, 10), log=lines.append, cache_dir=tmp_path / "c")
    (cache,) = (tmp_path / "c").iterdir()
    assert lines == [f"decoded 5 images from {tmp_path / 'd'} (cached in {cache})"], lines
    assert isinstance(first, FolderData) and first.x.shape == (5, 3, 8, 10) and first.x.dtype == np.uint8
    monkeypatch.setattr(folder, "decode_image", no_decoding)
    lines.clear()
    second = load_image_folder(tmp_path / "d", 3, (8, 10), log=lines.append, cache_dir=tmp_path / "c")
    assert lines == [f"read 5 images from {tmp_path / 'd'} (from cache {cache})"], lines
    assert np.array_equal(second.x, first.x) and second.x.dtype == np.uint8, f"{second.x.shape} {second.x.dtype}"
    assert np.array_equal(second.y, first.y) and second.y.dtype == np.int64, f"{second.y} {first.y}"
    assert (second.classes, second.files, second.skipped) == (first.classes, first.files, first.skipped)
    with np.load(cache, allow_pickle=False) as z:  # arrays only: readable without pickle
        assert z["files"].dtype.kind == "U" and z["x"].shape == (5, 3, 8, 10), f"{z['files'].dtype} {z['x'].shape}"


def test_default_cache_dir_is_read_at_call_time(tmp_path, monkeypatch):
    make_folder(tmp_path / "d", {"a": 1})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    load_image_folder(tmp_path / "d", 1, (8, 10))
    files = list((tmp_path / "elsewhere" / "cnntrain" / "image_folder").glob("*.npz"))
    assert len(files) == 1, files


def test_a_changed_file_is_decoded_again_with_its_new_pixels(tmp_path, count_decodes):
    paths = make_folder(tmp_path / "d", {"a": 2, "b": 1})
    load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    mtime = paths[1].stat().st_mtime_ns
    save(paths[1], rgb(8, 10, seed=99))
    os.utime(paths[1], ns=(mtime + 10**9, mtime + 10**9))
    count_decodes.calls = 0
    data = load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    assert count_decodes.calls == 3, f"{count_decodes.calls} decodes after a change"
    assert np.array_equal(data.x[1], rgb(8, 10, seed=99).transpose(2, 0, 1)), "stale pixels from the cache"
    assert len(list((tmp_path / "c").iterdir())) == 1, "the stale cache file was not removed"


def test_touching_a_file_is_enough_to_decode_again(tmp_path, count_decodes):
    paths = make_folder(tmp_path / "d", {"a": 2})
    load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    mtime = paths[0].stat().st_mtime_ns
    os.utime(paths[0], ns=(mtime + 1, mtime + 1))
    count_decodes.calls = 0
    load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    assert count_decodes.calls == 2, f"{count_decodes.calls} decodes after touching a file"


@pytest.mark.parametrize("change", ["add", "remove", "rename", "size", "channels"])
def test_added_removed_renamed_files_and_other_shapes_decode_again(tmp_path, count_decodes, change):
    paths = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    count_decodes.calls = 0
    size, channels, n = (8, 10), 3, 4
    if change == "add":
        save(tmp_path / "d" / "b" / "new.png", rgb(8, 10, seed=7))
        n = 5
    elif change == "remove":
        paths[0].unlink()
        n = 3
    elif change == "rename":
        paths[0].rename(paths[0].with_name("renamed.png"))
    elif change == "size":
        size = (5, 6)
    else:
        channels = 1
    data = load_image_folder(tmp_path / "d", channels, size, cache_dir=tmp_path / "c")
    assert count_decodes.calls == n, f"{change}: {count_decodes.calls} decodes, expected {n}"
    assert data.x.shape == (n, channels) + size and len(data.files) == n, f"{change}: {data.x.shape} {data.files}"
    (cache,) = (tmp_path / "c").iterdir()  # the old entry of this folder is gone
    count_decodes.calls = 0
    load_image_folder(tmp_path / "d", channels, size, cache_dir=tmp_path / "c")
    assert count_decodes.calls == 0, f"{change}: the new cache entry was not used"


def test_other_folders_keep_their_cache_files(tmp_path):
    make_folder(tmp_path / "one", {"a": 1})
    make_folder(tmp_path / "two", {"a": 1})
    load_image_folder(tmp_path / "one", 3, (8, 10), cache_dir=tmp_path / "c")
    load_image_folder(tmp_path / "two", 3, (8, 10), cache_dir=tmp_path / "c")
    load_image_folder(tmp_path / "two", 1, (8, 10), cache_dir=tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(names) == 2 and names[0][:16] != names[1][:16], names


def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, count_decodes):
    make_folder(tmp_path / "d", {"a": 2})
    first = load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    (cache,) = (tmp_path / "c").iterdir()
    cache.write_bytes(cache.read_bytes()[:100])
    count_decodes.calls = 0
    data = load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    assert count_decodes.calls == 2 and np.array_equal(data.x, first.x), f"{count_decodes.calls} {data.x.shape}"
    count_decodes.calls = 0
    load_image_folder(tmp_path / "d", 3, (8, 10), cache_dir=tmp_path / "c")
    assert count_decodes.calls == 0, "the corrupt cache file was not rewritten"


def test_an_unwritable_cache_dir_still_loads_with_a_warning(tmp_path):
    make_folder(tmp_path / "d", {"a": 2})
    (tmp_path / "blocked").write_text("a file where the cache folder should be")  # fails even as root
    lines = []
    data = load_image_folder(tmp_path / "d", 3, (8, 10), log=lines.append, cache_dir=tmp_path / "blocked" / "c")
    assert data.x.shape == (2, 3, 8, 10), f"{data.x.shape}"
    assert lines[0].startswith("warning: image cache") and lines[-1].endswith("(not cached)"), lines


# the example dataset


def test_make_shapes_writes_every_format_and_mode_and_loads(tmp_path):
    written = make_shapes(tmp_path / "shapes", per_class_train=12, per_class_test=2, seed=1)
    assert len(written) == 3 * 14, len(written)
    for split in ("train", "test"):
        assert sorted(p.name for p in (tmp_path / "shapes" / split).iterdir()) == sorted(CLASSES), split
    assert {p.suffix for p in written} == {".png", ".jpg", ".bmp"}, {p.suffix for p in written}
    modes = {Image.open(p).mode for p in written}
    assert modes == {"L", "RGB"}, modes
    sizes = {Image.open(p).size for p in written}
    assert len(sizes) > 10 and any(w != h for w, h in sizes), sizes
    train = load_image_folder(tmp_path / "shapes" / "train", 3, (32, 32), cache_dir=tmp_path / "c")
    test = load_image_folder(tmp_path / "shapes" / "test", 3, (32, 32), cache_dir=tmp_path / "c",
                             classes=train.classes)
    assert train.x.shape == (36, 3, 32, 32) and test.x.shape == (6, 3, 32, 32), f"{train.x.shape} {test.x.shape}"
    assert train.classes == CLASSES and np.bincount(train.y).tolist() == [12, 12, 12], f"{train.y}"
    assert train.skipped == () and test.skipped == ()
    again = make_shapes(tmp_path / "shapes", per_class_train=3, per_class_test=1, seed=1)  # replaces, not adds
    assert len(list((tmp_path / "shapes" / "train" / "circle").iterdir())) == 3, again


def test_cache_off_decodes_every_time_and_writes_nothing(tmp_path, count_decodes):
    make_folder(tmp_path / "d", {"a": 2, "b": 1})
    lines = []
    for _ in range(2):
        data = load_image_folder(tmp_path / "d", 1, (8, 10), log=lines.append, cache_dir=tmp_path / "c", cache=False)
        assert data.x.shape == (3, 1, 8, 10), data.x.shape
    assert count_decodes.calls == 6, f"{count_decodes.calls} decodes for two loads of 3 images"
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())
    assert lines[-1] == f"decoded 3 images from {tmp_path / 'd'} (data.cache is off)", lines
