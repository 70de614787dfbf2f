"""Augmentation steps against per-sample loop oracles, seeding, and config entries."""

from __future__ import annotations

import numpy as np
import pytest

from cnntrain.build import experiment_from_dict
from cnntrain.data.augment import AUGMENT_STREAM, Augment, HorizontalFlip, RandomCrop, RandomShift, augment_rng, crop
from cnntrain.errors import ConfigError
from cnntrain.registry import AUGMENTATIONS

SHAPE = (6, 3, 7, 5)  # small, odd and non-square so H/W mix-ups show


def images(rng, shape=SHAPE) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def loop_crop(x_padded, oy, ox, H, W) -> np.ndarray:
    """Oracle: one slice per sample."""
    return np.stack([x_padded[i, :, oy[i]:oy[i] + H, ox[i]:ox[i] + W] for i in range(len(x_padded))])


def test_crop_kernel_matches_loop():
    rng = np.random.default_rng(0)
    x_padded = images(rng, (8, 3, 11, 13))
    H, W = 7, 5
    oy, ox = rng.integers(0, 11 - H + 1, size=8), rng.integers(0, 13 - W + 1, size=8)
    out, ref = crop(x_padded, oy, ox, H, W), loop_crop(x_padded, oy, ox, H, W)
    assert out.shape == ref.shape == (8, 3, H, W), f"{out.shape} vs {ref.shape}"
    assert np.array_equal(out, ref), f"crop differs from the loop on {x_padded.shape} -> {(H, W)}"


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_random_crop_is_a_window_of_the_padded_image(mode):
    rng = np.random.default_rng(0)
    x, p = images(rng), 3
    B, C, H, W = x.shape
    out = RandomCrop(padding=p, padding_mode=mode, fill=200)(x, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.uint8, f"{out.shape} {out.dtype} for {x.shape}"
    # The same draws as RandomCrop: oy then ox, each uniform in 0..2p.
    draws = np.random.default_rng(1)
    oy, ox = draws.integers(0, 2 * p + 1, size=B), draws.integers(0, 2 * p + 1, size=B)
    kwargs = {"constant_values": 200} if mode == "constant" else {}
    x_padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode=mode, **kwargs)
    ref = loop_crop(x_padded, oy, ox, H, W)
    assert np.array_equal(out, ref), f"{mode} crop of {x.shape} differs from np.pad + slice"


def test_random_crop_offsets_in_range_and_varied():
    # Pixel (r, c) holds 1 + W*r + c. Output pixel (p, p) is padded pixel (oy + p, ox + p), i.e. image pixel
    # (oy, ox), which lies inside the image since oy, ox <= 2p < H, W; so its value gives back the offsets.
    B, H, W, p = 400, 8, 9, 3
    x = np.broadcast_to((1 + np.arange(H * W)).reshape(1, 1, H, W).astype(np.uint8), (B, 1, H, W))
    out = RandomCrop(padding=p)(x, np.random.default_rng(0))
    oy, ox = np.divmod(out[:, 0, p, p].astype(int) - 1, W)
    assert set(oy) == set(range(2 * p + 1)), f"vertical offsets {set(oy)} in {B} crops of {x.shape}, padding {p}"
    assert set(ox) == set(range(2 * p + 1)), f"horizontal offsets {set(ox)} in {B} crops of {x.shape}, padding {p}"
    x_padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    assert np.array_equal(out, loop_crop(x_padded, oy, ox, H, W)), f"crops of {x.shape} are not the windows at (oy, ox)"


def test_random_crop_fill_and_identity():
    rng = np.random.default_rng(0)
    x = images(rng)
    out = RandomCrop(padding=0)(x, np.random.default_rng(0))
    assert out is not x and np.array_equal(out, x), f"padding 0 should copy {x.shape} unchanged"
    # Padding by the whole height and width: every output pixel is either from x or the fill value.
    big = np.zeros((200, 1, 3, 3), dtype=np.uint8) + 1
    out = RandomCrop(padding=3, fill=77)(big, np.random.default_rng(0))
    assert set(np.unique(out)) == {1, 77}, f"values {np.unique(out)} in a crop of {big.shape} padded with 77"
    n_image = (out == 1).sum(axis=(1, 2, 3))
    assert n_image.min() == 0 and n_image.max() == 9, f"image pixels per crop {np.unique(n_image)}: want 0 and 9"


def test_hflip_probabilities():
    rng = np.random.default_rng(0)
    x = images(rng, (1000, 2, 3, 4))
    assert np.array_equal(HorizontalFlip(p=0)(x, np.random.default_rng(1)), x), f"p=0 changed {x.shape}"
    assert np.array_equal(HorizontalFlip(p=1)(x, np.random.default_rng(1)), x[..., ::-1]), f"p=1 on {x.shape}"
    out = HorizontalFlip(p=0.5)(x, np.random.default_rng(1))
    same = np.all(out == x, axis=(1, 2, 3))
    flipped = np.all(out == x[..., ::-1], axis=(1, 2, 3))
    assert np.all(same | flipped), f"{np.sum(~(same | flipped))} samples of {x.shape} neither kept nor flipped"
    assert not np.any(same & flipped), "random 3x4 images should not be mirror-symmetric"
    assert 400 <= flipped.sum() <= 600, f"{flipped.sum()} of {len(x)} flipped with p=0.5"


def one_bright_pixel(B, H, W, rng):
    ys, xs = rng.integers(0, H, size=B), rng.integers(0, W, size=B)
    x = np.zeros((B, 1, H, W), dtype=np.uint8)
    x[np.arange(B), 0, ys, xs] = 255
    return x, ys, xs


def test_random_shift_moves_one_pixel_within_range():
    rng = np.random.default_rng(0)
    B, H, W, max_dx, max_dy = 500, 9, 11, 2, 3
    x, ys, xs = one_bright_pixel(B, H, W, rng)
    out = RandomShift(max_dx=max_dx, max_dy=max_dy, fill=5)(x, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.uint8, f"{out.shape} {out.dtype} for {x.shape}"
    assert set(np.unique(out)) <= {0, 5, 255}, f"values {np.unique(out)}: only image, fill and the pixel"
    bright = out[:, 0] == 255
    kept = bright.any(axis=(1, 2))
    b, new_y, new_x = np.nonzero(bright)
    dy, dx = new_y - ys[b], new_x - xs[b]
    assert np.all(np.abs(dy) <= max_dy) and np.all(np.abs(dx) <= max_dx), f"moved by dy {dy}, dx {dx}"
    assert set(dy) == set(range(-max_dy, max_dy + 1)), f"dy values {set(dy)} should cover -{max_dy}..{max_dy}"
    assert set(dx) == set(range(-max_dx, max_dx + 1)), f"dx values {set(dx)} should cover -{max_dx}..{max_dx}"
    assert kept.mean() > 0.5, f"the pixel left {np.sum(~kept)} of {B} images"
    # Uncovered pixels are exactly the fill: count them from each sample's (dy, dx).
    out_dy, out_dx = np.zeros(B, int), np.zeros(B, int)
    out_dy[b], out_dx[b] = dy, dx
    n_fill = (out[:, 0] == 5).sum(axis=(1, 2))
    expected = H * W - (H - np.abs(out_dy)) * (W - np.abs(out_dx))
    assert np.array_equal(n_fill[kept], expected[kept]), f"fill counts {n_fill[kept][:8]} vs {expected[kept][:8]}"


def test_random_shift_zero_and_asymmetric():
    rng = np.random.default_rng(0)
    x, ys, xs = one_bright_pixel(300, 6, 8, rng)
    out = RandomShift(max_dx=0, max_dy=0)(x, np.random.default_rng(1))
    assert np.array_equal(out, x), f"max_dx = max_dy = 0 changed {x.shape}"
    out = RandomShift(max_dx=3, max_dy=0)(x, np.random.default_rng(1))
    b, new_y, new_x = np.nonzero(out[:, 0] == 255)
    assert np.array_equal(new_y, ys[b]), "max_dy=0 moved a pixel vertically"
    assert np.all(np.abs(new_x - xs[b]) <= 3) and len(set(new_x - xs[b])) > 1, f"dx {set(new_x - xs[b])}"


def test_augment_is_a_function_of_seed_epoch_batch():
    rng = np.random.default_rng(0)
    x = images(rng, (16, 3, 8, 8))
    before = x.copy()
    augment = Augment([RandomCrop(padding=2), HorizontalFlip(), RandomShift(max_dx=1, max_dy=2)])
    out = augment(x, seed=3, epoch=1, batch=2)
    assert np.array_equal(x, before), "Augment modified its input"
    assert out.dtype == np.uint8 and out.shape == x.shape, f"{out.dtype} {out.shape} for {x.shape}"
    assert np.array_equal(out, augment(x, seed=3, epoch=1, batch=2)), "same (seed, epoch, batch), different output"
    for seed, epoch, batch in [(4, 1, 2), (3, 2, 2), (3, 1, 3)]:
        other = augment(x, seed=seed, epoch=epoch, batch=batch)
        assert not np.array_equal(out, other), f"(seed, epoch, batch) = {(seed, epoch, batch)} repeated (3, 1, 2)"
    # The stream is its own: steps called with the documented Generator reproduce the call.
    g = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(AUGMENT_STREAM, 1, 2)))
    by_hand = augment.steps[2](augment.steps[1](augment.steps[0](x, g), g), g)
    assert AUGMENT_STREAM == 2 and np.array_equal(out, by_hand), "Augment does not use the (2, epoch, batch) stream"
    assert np.array_equal(augment_rng(3, 1, 2).random(4), augment_rng(3, 1, 2).random(4)), "augment_rng not seeded"


def test_empty_augment_returns_input():
    x = images(np.random.default_rng(0))
    empty = Augment([])
    assert not empty and Augment([HorizontalFlip()]), "__bool__ should be true only with steps"
    assert empty(x, seed=0, epoch=0, batch=0) is x, "an empty Augment should return its input"


def test_steps_never_write_input():
    rng = np.random.default_rng(0)
    x = images(rng)
    x.flags.writeable = False  # any in-place write raises
    for step in [RandomCrop(), RandomCrop(padding=0), HorizontalFlip(p=1), RandomShift(), RandomShift(0, 0)]:
        out = step(x, np.random.default_rng(0))
        assert out.shape == x.shape and out.dtype == x.dtype, f"{type(step).__name__}: {out.shape} {out.dtype}"
        assert out.flags.writeable and not np.shares_memory(out, x), f"{type(step).__name__} returned a view"


def build_augment(entries):
    """data.augment entries -> the Augment training uses, through the config (ConfigError without the file name)."""
    try:
        exp = experiment_from_dict({"model": {"layers": ["flatten"]}, "data": {"augment": entries}}, "x.yaml")
    except ConfigError as exc:
        raise ConfigError(str(exc).removeprefix("x.yaml: ")) from None
    return exp.augment()


def test_build_augment_entries_and_config_round_trip():
    augment = build_augment(["hflip", {"random_crop": {"padding": 2, "padding_mode": "reflect"}},
                             {"random_shift": None}])
    assert [type(s) for s in augment.steps] == [HorizontalFlip, RandomCrop, RandomShift]
    assert augment.steps[1].get_config() == {"padding": 2, "padding_mode": "reflect", "fill": 0}
    assert augment.steps[2].get_config() == {"max_dx": 2, "max_dy": 2, "fill": 0}
    for name in AUGMENTATIONS.names():
        step = AUGMENTATIONS.create(name)
        again = AUGMENTATIONS.create(name, step.get_config())
        assert again.get_config() == step.get_config(), f"{name} config round trip"
    assert not build_augment([])


@pytest.mark.parametrize("entries, message", [
    (["hflip", {"random_crop": {"padding": -1}}],
     "data.augment[1].random_crop.padding: must be an integer >= 0, got -1"),
    (["hflip", {"random_crop": {"pading": 4}}], "data.augment[1].random_crop.pading: unknown option"),
    ([{"random_crop": {"padding_mode": "wrap"}}], "data.augment[0].random_crop.padding_mode: must be one of"),
    ([{"random_crop": {"fill": 256}}], "data.augment[0].random_crop.fill: must be an integer in [0, 255], got 256"),
    ([{"random_crop": {"padding": 2.5}}], "data.augment[0].random_crop.padding: must be an integer >= 0, got 2.5"),
    ([{"hflip": {"p": 1.5}}], "data.augment[0].hflip.p: must be a number in [0, 1], got 1.5"),
    ([{"hflip": {"p": True}}], "data.augment[0].hflip.p: must be a number in [0, 1], got True"),
    ([{"random_shift": {"max_dy": -2}}], "data.augment[0].random_shift.max_dy: must be an integer >= 0, got -2"),
    (["hflip", "hflipp"], "data.augment[1].hflipp: unknown augmentation 'hflipp' (did you mean 'hflip'?)"),
    ([{"hflip": {}, "random_crop": {}}], "data.augment[0]: expected an augmentation name or {name: {options}}, got"),
    ([3], "data.augment[0]: expected an augmentation name or {name: {options}}, got 3"),
    ([{"random_crop": 4}], "data.augment[0].random_crop: expected a mapping of options, got 4"),
    ("hflip", "data.augment: expected a list, got 'hflip'"),
])
def test_build_augment_errors_name_the_key_path(entries, message):
    with pytest.raises(ConfigError) as info:
        build_augment(entries)
    assert str(info.value).startswith(message), f"{str(info.value)!r} should start with {message!r}"
