"""Per-image numpy transforms: keep-ratio resize, crop, flip, normalise, pad, and the
pseudo-label margin mask (docs/method.md §5.1, §5.4, §5.7).

Sizes are `(height, width)` throughout. Images are uint8 `[H, W, 3]` RGB until `normalize`;
labels are uint8 `[H, W]` trainIds with 255 = ignore.

The resize follows the reference (OpenCV via mmcv): bilinear images without anti-aliasing,
sampled at pixel centres, with OpenCV's 11-bit fixed-point weights and rounding;
nearest-neighbour labels with OpenCV's `floor(dst * in / out)` source index. Labels equal
`cv2.resize` bit for bit, and so do images at integer factors (Cityscapes 2048x1024 ->
1024x512). At other factors (GTA5) OpenCV's vectorised 8-bit kernel truncates intermediate
products, which puts its result one level lower in ~13% of the values (mean -0.13 levels);
ours stays unbiased (tests/test_data_transforms.py). Because each output pixel depends only
on its own source neighbourhood, `resize_image(..., box=...)` computes just a window of the
resized image, bit-identical to resizing everything and cropping afterwards; training only
ever resamples the final 512x512 crop.
"""

import dataclasses

import numpy as np

from lcmsm_jax.data.labels import IGNORE_INDEX

MEAN_RGB = np.array([123.675, 116.28, 103.53], np.float32)
STD_RGB = np.array([58.395, 57.12, 57.375], np.float32)

# OpenCV's INTER_LINEAR weights for 8-bit images are integers scaled by 2**11.
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


@dataclasses.dataclass(frozen=True)
class Box:
    """A crop window: rows [top, top + height), columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def keep_ratio_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Size after mmcv keep-ratio rescaling to fit inside `scale` (order of `scale` irrelevant).

    factor = min(long_target / long_side, short_target / short_side); each side becomes
    int(side * factor + 0.5), at least 1. GTA5 1052x1914 into (1280, 720) -> (704, 1280);
    1x512 into (128, 64) -> (1, 128).
    """
    long_target, short_target = max(scale), min(scale)
    factor = min(long_target / max(height, width), short_target / min(height, width))
    # mmcv would round a sliver (1 x 512 at factor 1/4) to an empty side, which cv2.resize
    # rejects; one pixel is the smallest image.
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)


def _check_sides(n_in: int, n_out: int) -> None:
    """Both axis lengths of a resize must be positive (an empty axis has no pixel centres)."""
    if n_in < 1 or n_out < 1:
        raise ValueError(
            f"resize from {n_in} to {n_out} pixels along an axis: both need at least 1 pixel"
        )


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 `[n_out]` and fixed-point weight of i1 `[n_out]` (OpenCV rule).

    A one-pixel input axis (n_in = 1) clamps both taps to pixel 0: the output is constant
    along that axis, as OpenCV's.
    """
    _check_sides(n_in, n_out)
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(pos).astype(np.intp)
    frac = pos - i0
    # Left of the first pixel centre OpenCV clamps to pixel 0 with full weight.
    frac = np.where(i0 < 0, 0.0, frac)
    i0 = np.clip(i0, 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.round(frac * _COEF_SCALE).astype(np.int32)
    return i0, i1, w1


def resize_image(image: np.ndarray, size: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """Bilinear resize of uint8 `[H, W, C]` to `size` = (h, w); returns `[h, w, C]` uint8.

    With `box`, returns only that window of the resized image, `[box.height, box.width, C]`.
    """
    (h_in, w_in), (h_out, w_out) = image.shape[:2], size
    y0, y1, wy = _linear_taps(h_in, h_out)
    x0, x1, wx = _linear_taps(w_in, w_out)
    if box is not None:
        rows, cols = box.slices()
        y0, y1, wy, x0, x1, wx = y0[rows], y1[rows], wy[rows], x0[cols], x1[cols], wx[cols]
    # Only touch the source columns this window needs.
    c0, c1 = int(x0.min()), int(x1.max()) + 1
    src = image[:, c0:c1]
    wy, wx = wy[:, None, None], wx[None, :, None]
    # Integer arithmetic with one final rounding: the pass order does not matter.
    rows_mix = src[y0].astype(np.int32) * (_COEF_SCALE - wy) + src[y1].astype(np.int32) * wy
    out = rows_mix[:, x0 - c0] * (_COEF_SCALE - wx) + rows_mix[:, x1 - c0] * wx
    return ((out + (1 << (2 * _COEF_BITS - 1))) >> (2 * _COEF_BITS)).astype(np.uint8)


def _nearest_taps(n_in: int, n_out: int) -> np.ndarray:
    _check_sides(n_in, n_out)
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.intp), n_in - 1)


def resize_label(label: np.ndarray, size: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """Nearest-neighbour resize of `[H, W]` to `size` = (h, w) (optionally only `box` of it)."""
    rows = _nearest_taps(label.shape[0], size[0])
    cols = _nearest_taps(label.shape[1], size[1])
    if box is not None:
        r, c = box.slices()
        rows, cols = rows[r], cols[c]
    return label[rows[:, None], cols[None, :]]


def random_box(height: int, width: int, crop: tuple[int, int], rng: np.random.Generator) -> Box:
    """Uniform crop offsets in [0, side - crop]; a crop larger than the image is clipped."""
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return Box(top, left, crop_h, crop_w)


def cat_max_ratio_ok(label: np.ndarray, cat_max_ratio: float) -> bool:
    """mmseg's test: >1 non-ignore class and the largest covers < cat_max_ratio of them."""
    counts = np.bincount(label.ravel(), minlength=256)[:IGNORE_INDEX]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def crop_box_with_cat_max_ratio(
    label: np.ndarray,
    crop: tuple[int, int],
    cat_max_ratio: float,
    rng: np.random.Generator,
    max_redraws: int = 10,
) -> Box:
    """Random crop box of `label [H, W]`, re-drawn until it passes `cat_max_ratio_ok`.

    As mmseg's RandomCrop: one draw plus up to `max_redraws` re-draws, the last of which is
    used unchecked. `cat_max_ratio >= 1` disables the test (one draw).
    """
    box = random_box(*label.shape, crop, rng)
    if cat_max_ratio >= 1.0:
        return box
    for _ in range(max_redraws):
        if cat_max_ratio_ok(label[box.slices()], cat_max_ratio):
            break
        box = random_box(*label.shape, crop, rng)
    return box


def valid_margin_mask(height: int, width: int, margins: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 `[height, width]`: 1, except 0 in `margins` = (top, bottom, left, right) rows
    and columns at the borders (HRDA's `valid_pseudo_mask`, docs/method.md §5.7).

    Made at the size of the loaded image, before any resize; a margin of 0 zeroes nothing.
    """
    top, bottom, left, right = (int(m) for m in margins)
    mask = np.zeros((height, width), np.uint8)
    mask[top : max(height - bottom, top), left : max(width - right, left)] = 1
    return mask


def pad_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad a 0/1 mask `[H, W]` bottom/right to at least `size` with 0: padding is never valid."""
    extra_h, extra_w = max(size[0] - mask.shape[0], 0), max(size[1] - mask.shape[1], 0)
    return np.pad(mask, ((0, extra_h), (0, extra_w)))


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 RGB `[..., 3]` -> float32 `(x - mean) / std` with the ImageNet statistics."""
    return (image.astype(np.float32) - MEAN_RGB) / STD_RGB


def pad(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad bottom/right to at least `size`: image `[H, W, C]` with 0, label `[H, W]` with 255."""
    extra_h, extra_w = max(size[0] - image.shape[0], 0), max(size[1] - image.shape[1], 0)
    if extra_h == 0 and extra_w == 0:
        return image, label
    image = np.pad(image, ((0, extra_h), (0, extra_w), (0, 0)))
    if label is not None:
        label = np.pad(label, ((0, extra_h), (0, extra_w)), constant_values=IGNORE_INDEX)
    return image, label
