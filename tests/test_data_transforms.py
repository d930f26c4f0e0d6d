"""Resize arithmetic, resampling rules, crops with cat_max_ratio, pad, normalise."""

import cv2
import numpy as np
import pytest

from lcmsm_jax.data import transforms as T


@pytest.mark.parametrize(
    "size, scale, expected",
    [
        ((1052, 1914), (1280, 720), (704, 1280)),  # GTA5 -> 1280x704, not 1280x720
        ((1052, 1914), (720, 1280), (704, 1280)),  # order of the target is irrelevant
        ((760, 1280), (1280, 760), (760, 1280)),  # SYNTHIA unchanged
        ((1024, 2048), (1024, 512), (512, 1024)),  # Cityscapes
        ((1080, 1920), (1024, 512), (512, 910)),  # ACDC / Dark Zurich
        ((1052, 1914), (2560, 1440), (1407, 2560)),  # HRDA's GTA5 scale
    ],
)
def test_keep_ratio_size(size, scale, expected):
    assert T.keep_ratio_size(*size, scale) == expected


def _float_bilinear(image, size):
    """Half-pixel bilinear (no anti-aliasing, clamped borders) in float64, rounded."""

    def taps(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), pos - i0

    y0, y1, fy = taps(image.shape[0], size[0])
    x0, x1, fx = taps(image.shape[1], size[1])
    im = image.astype(np.float64)
    rows = im[y0] * (1 - fy)[:, None, None] + im[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.floor(out + 0.5)


@pytest.mark.parametrize("size", [(35, 64), (13, 20), (90, 140), (50, 100)])
def test_resize_image_is_unbiased_half_pixel_bilinear(size):
    image = np.random.default_rng(0).integers(0, 256, (50, 100, 3), dtype=np.uint8)
    out = T.resize_image(image, size)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    diff = out.astype(np.float64) - _float_bilinear(image, size)
    # Fixed-point weights (as OpenCV) differ from exact arithmetic by at most one level.
    assert np.abs(diff).max() <= 1 and abs(diff.mean()) < 0.02


def test_resize_image_known_values():
    row = np.array([[0, 100, 200, 255]], np.uint8)[..., None].repeat(3, -1)
    out = T.resize_image(row, (1, 2))[0, :, 0]
    assert out.tolist() == [50, 228]  # averages at source positions 0.5 and 2.5, rounded
    identity = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(T.resize_image(identity, (7, 9)), identity)


def test_resize_window_equals_resize_then_crop():
    image = np.random.default_rng(2).integers(0, 256, (105, 191, 3), dtype=np.uint8)
    size = T.keep_ratio_size(105, 191, (128, 72))
    full = T.resize_image(image, size)
    for box in [
        T.Box(0, 0, 32, 32),
        T.Box(size[0] - 32, size[1] - 32, 32, 32),
        T.Box(5, 17, 20, 9),
    ]:
        np.testing.assert_array_equal(T.resize_image(image, size, box), full[box.slices()])
        label = image[..., 0]
        np.testing.assert_array_equal(
            T.resize_label(label, size, box), T.resize_label(label, size)[box.slices()]
        )


def test_resize_label_is_opencv_nearest():
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    # Source index floor(dst * in / out): rows 3 -> 5 take 0,0,1,1,2; columns 4 -> 2 take 0,2.
    out = T.resize_label(label, (5, 2))
    np.testing.assert_array_equal(out, label[[0, 0, 1, 1, 2]][:, [0, 2]])


@pytest.mark.parametrize(
    "size, scale, exact",
    [
        ((1052, 1914), (1280, 720), False),  # GTA5
        ((1024, 2048), (1024, 512), True),  # Cityscapes
        ((760, 1280), (1280, 760), True),  # SYNTHIA
        ((1052, 1914), (2560, 1440), False),  # GTA5 upscaled (HRDA's scale)
    ],
    ids=["gta5", "cityscapes", "synthia", "gta5-upscale"],
)
def test_resize_against_opencv(size, scale, exact):
    """mmcv's `imresize` is `cv2.resize` with INTER_LINEAR (images) and INTER_NEAREST (labels).

    Labels are bit-exact everywhere. Images are bit-exact at integer factors. At other factors
    OpenCV's vectorised 8-bit kernel truncates its intermediate products (and computes the
    source coordinates in float32), so it is up to one level below the rounded fixed-point
    result in about 13% of the values; ours rounds, and stays unbiased (test above).
    """
    rng = np.random.default_rng(sum(size) + sum(scale))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    label = rng.integers(0, 256, size, dtype=np.uint8)
    out_size = T.keep_ratio_size(*size, scale)
    cv_size = (out_size[1], out_size[0])  # OpenCV takes (width, height)
    want_image = cv2.resize(image, cv_size, interpolation=cv2.INTER_LINEAR)
    want_label = cv2.resize(label, cv_size, interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(T.resize_label(label, out_size), want_label)
    ours = T.resize_image(image, out_size)
    diff = ours.astype(np.int32) - want_image
    if exact:
        np.testing.assert_array_equal(ours, want_image)
    else:
        assert np.abs(diff).max() == 1
        assert 0.05 < np.mean(diff != 0) < 0.15
        assert 0.05 < diff.mean() < 0.15  # OpenCV's truncation: it is the one that is low
    h, w = out_size
    for box in [
        T.Box(0, 0, 512, 512),
        T.Box(h - 512, w - 512, 512, 512),
        T.Box(int(rng.integers(h - 511)), int(rng.integers(w - 511)), 512, 512),
    ]:
        window = box.slices()
        np.testing.assert_array_equal(T.resize_label(label, out_size, box), want_label[window])
        np.testing.assert_array_equal(T.resize_image(image, out_size, box), ours[window])


def test_random_box_is_uniform_and_clipped():
    rng = np.random.default_rng(0)
    tops = [T.random_box(10, 6, (8, 8), rng) for _ in range(2000)]
    assert {b.top for b in tops} == {0, 1, 2} and {(b.left, b.width) for b in tops} == {(0, 6)}
    counts = np.bincount([b.top for b in tops])
    assert counts.min() > 600  # each offset about a third of the time


def test_cat_max_ratio_rule():
    assert not T.cat_max_ratio_ok(np.zeros((4, 4), np.uint8), 0.75)  # one class
    mostly = np.zeros((4, 4), np.uint8)
    mostly[0, :3] = 1  # 13/16 = 0.81 of class 0
    assert not T.cat_max_ratio_ok(mostly, 0.75)
    mostly[0, 3] = 1  # 12/16 = 0.75, not < 0.75
    assert not T.cat_max_ratio_ok(mostly, 0.75)
    mostly[1, 0] = 1
    assert T.cat_max_ratio_ok(mostly, 0.75)
    ignored = np.full((4, 4), 255, np.uint8)
    ignored[0, 0], ignored[0, 1] = 3, 4  # ignore pixels do not count
    assert T.cat_max_ratio_ok(ignored, 0.75)


def _expected_box(label, crop, ratio, seed):
    """Replays the draws: first draw, then up to 10 re-draws, the last one unchecked."""
    rng = np.random.default_rng(seed)
    box = T.random_box(*label.shape, crop, rng)
    for _ in range(10):
        if T.cat_max_ratio_ok(label[box.slices()], ratio):
            return box
        box = T.random_box(*label.shape, crop, rng)
    return box


def test_crop_with_cat_max_ratio_redraws_like_mmseg():
    label = np.zeros((64, 64), np.uint8)
    label[40:, 40:] = 1  # only crops reaching into the corner pass
    passed = 0
    for seed in range(300):
        box = T.crop_box_with_cat_max_ratio(label, (32, 32), 0.75, np.random.default_rng(seed))
        assert box == _expected_box(label, (32, 32), 0.75, seed)
        passed += T.cat_max_ratio_ok(label[box.slices()], 0.75)
    # Exact chance q that one uniform crop passes; 11 draws pass with 1 - (1 - q)^11.
    q = np.mean(
        [
            T.cat_max_ratio_ok(label[t : t + 32, u : u + 32], 0.75)
            for t in range(33)
            for u in range(33)
        ]
    )
    expected = 1 - (1 - q) ** 11
    sigma = np.sqrt(expected * (1 - expected) / 300)
    assert q < 0.2 and abs(passed / 300 - expected) < 4 * sigma


def test_crop_without_a_passing_window_uses_the_eleventh_draw():
    label = np.zeros((20, 20), np.uint8)
    rng = np.random.default_rng(5)
    box = T.crop_box_with_cat_max_ratio(label, (8, 8), 0.75, rng)
    replay = np.random.default_rng(5)
    draws = [T.random_box(20, 20, (8, 8), replay) for _ in range(11)]
    assert box == draws[-1]
    assert rng.integers(1 << 30) == replay.integers(1 << 30)  # same number of draws used
    once = T.crop_box_with_cat_max_ratio(label, (8, 8), 1.0, np.random.default_rng(5))
    assert once == draws[0]  # cat_max_ratio 1.0: no check


def test_normalize_and_pad():
    image = np.full((2, 3, 3), 255, np.uint8)
    out = T.normalize(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], (255 - T.MEAN_RGB) / T.STD_RGB, rtol=1e-6)
    padded, label = T.pad(out, np.zeros((2, 3), np.uint8), (4, 5))
    assert padded.shape == (4, 5, 3) and label.shape == (4, 5)
    assert (padded[2:] == 0).all() and (label[2:] == 255).all() and (label[:, 3:] == 255).all()
    same, _ = T.pad(out, None, (2, 3))
    assert same is out
