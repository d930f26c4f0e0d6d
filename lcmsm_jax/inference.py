"""Test-time inference as the reference runs it (docs/method.md §6.5): whole image or sliding
window.

Pure functions of a `logits_fn` (images [N, h, w, 3] -> head logits [N, h/4, w/4, K]), so
they trace into any jitted function:
  * `slide`: mmseg's window grid over the network-size image; each window's logits are
    upsampled bilinearly to the window, summed into a canvas in mmseg's order and divided
    by the number of windows covering each pixel (1024x512 with 512 / 256: x offsets 0,
    256, 512, coverage 1, 2, 2, 1 over the four 256-px column bands);
  * `whole`: the logits are upsampled to the input size;
  * then the logits are resized bilinearly (align_corners=False, no antialiasing) to the
    label's resolution and the arg-max is the prediction. The reference takes the arg-max
    of the softmax, which is the same up to floating-point ties.
Sizes are (height, width).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lcmsm_jax.models import layers

LogitsFn = Callable[[jax.Array], jax.Array]
MODES = ("slide", "whole")


def window_offsets(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of mmseg's sliding windows along one axis of length `size`.

    grids = max(size - crop + stride - 1, 0) // stride + 1; window i starts at i * stride
    and the last one is moved back to end at the border. An image smaller than the crop
    gets one window of its own size. 1024 with crop 512 / stride 256 -> [0, 256, 512].
    """
    if crop < 1 or stride < 1:
        raise ValueError(f"crop and stride must be positive, got crop={crop}, stride={stride}")
    grids = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(grids)]


def windows(
    size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """[(top, left)] in mmseg's order (rows outer) and the window size (h, w)."""
    tops = window_offsets(size[0], crop[0], stride[0])
    lefts = window_offsets(size[1], crop[1], stride[1])
    return [(y, x) for y in tops for x in lefts], (min(crop[0], size[0]), min(crop[1], size[1]))


def coverage(size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """[H, W] float32: how many windows cover each pixel (never 0 by construction)."""
    boxes, (ch, cw) = windows(size, crop, stride)
    count = np.zeros(size, np.float32)
    for y, x in boxes:
        count[y : y + ch, x : x + cw] += 1
    return count


def whole_logits(logits_fn: LogitsFn, images: jax.Array) -> jax.Array:
    """images [B, h, w, 3] -> logits [B, h, w, K] float32 (head output upsampled to input)."""
    logits = logits_fn(images).astype(jnp.float32)
    return layers.resize_bilinear(logits, images.shape[1:3])


def slide_logits(
    logits_fn: LogitsFn, images: jax.Array, crop: tuple[int, int], stride: tuple[int, int]
) -> jax.Array:
    """images [B, h, w, 3] -> window-averaged logits [B, h, w, K] float32.

    All windows of all images go through `logits_fn` as one batch [B * N, ch, cw, 3]
    (image-major, so a batch sharded over images stays sharded). Windows are added to the
    canvas in mmseg's order, so the float sums match the reference's loop.
    """
    b, h, w, c = images.shape
    boxes, (ch, cw) = windows((h, w), crop, stride)
    count = coverage((h, w), crop, stride)
    if count.min() == 0:  # mmseg asserts the same
        raise ValueError(f"slide inference: stride {stride} > crop {crop} leaves pixels uncovered")
    n = len(boxes)
    crops = jnp.stack([images[:, y : y + ch, x : x + cw] for y, x in boxes], axis=1)
    logits = logits_fn(crops.reshape(b * n, ch, cw, c)).astype(jnp.float32)
    logits = layers.resize_bilinear(logits, (ch, cw))
    logits = logits.reshape(b, n, ch, cw, logits.shape[-1])
    canvas = jnp.zeros((b, h, w, logits.shape[-1]), jnp.float32)
    for i, (y, x) in enumerate(boxes):
        canvas = canvas.at[:, y : y + ch, x : x + cw].add(logits[:, i])
    return canvas / count[None, :, :, None]


def predict_labels(
    logits_fn: LogitsFn,
    images: jax.Array,
    out_size: tuple[int, int],
    *,
    mode: str = "slide",
    crop: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (256, 256),
) -> jax.Array:
    """images [B, h, w, 3] -> trainId predictions [B, *out_size] int32.

    `crop` and `stride` are (height, width); they are used only in "slide" mode.
    """
    if mode == "slide":
        logits = slide_logits(logits_fn, images, tuple(crop), tuple(stride))
    elif mode == "whole":
        logits = whole_logits(logits_fn, images)
    else:
        raise ValueError(f"inference mode must be one of {MODES}, got {mode!r}")
    logits = layers.resize_bilinear(logits, tuple(out_size))
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
