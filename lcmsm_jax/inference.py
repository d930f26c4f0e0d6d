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
`model_logits_fn` is the network's `logits_fn`: the segmentor's head, or for a
multi-resolution model HRDA's inference on each input (docs/method.md §8.7): the context
pass on the whole input at x0.5 and the detail pass over `detail_windows`, fused at stride 4.
Sizes are (height, width).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lcmsm_jax.models import layers
from lcmsm_jax.models.hrda import BOX_DIVISIBLE, MultiResSegmentor
from lcmsm_jax.models.segmentor import Segmentor

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


def network_logits(
    logits_fn: LogitsFn,
    images: jax.Array,
    *,
    mode: str = "slide",
    crop: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (256, 256),
) -> jax.Array:
    """images [B, h, w, 3] -> logits [B, h, w, K] float32 at the network input's size,
    by `slide_logits` or `whole_logits`. `crop` and `stride` (height, width) are used only
    in "slide" mode."""
    if mode == "slide":
        return slide_logits(logits_fn, images, tuple(crop), tuple(stride))
    if mode == "whole":
        return whole_logits(logits_fn, images)
    raise ValueError(f"inference mode must be one of {MODES}, got {mode!r}")


def predict_labels(
    logits_fn: LogitsFn,
    images: jax.Array,
    out_size: tuple[int, int],
    *,
    mode: str = "slide",
    crop: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (256, 256),
) -> jax.Array:
    """images [B, h, w, 3] -> trainId predictions [B, *out_size] int32: `network_logits`
    resized bilinearly to `out_size`, then the arg-max."""
    logits = network_logits(logits_fn, images, mode=mode, crop=crop, stride=stride)
    logits = layers.resize_bilinear(logits, tuple(out_size))
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- the network


def detail_windows(
    image_hw: tuple[int, int], detail_size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Top-left corners of HRDA's detail windows over one input `image_hw`: `detail_size`
    windows at stride half the window, on the grid of `windows` (docs/method.md §8.4). A
    1024 x 1024 input with 512 x 512 windows: origins 0, 256 and 512 on each axis, 9
    windows in row order."""
    stride = tuple(max(int(s) // 2, 1) for s in detail_size)
    return windows(tuple(image_hw), tuple(int(s) for s in detail_size), stride)[0]


def model_logits_fn(
    model: Segmentor, head: str, text_features: jax.Array | None = None
) -> LogitsFn:
    """The `logits_fn` of `model` for test time (BatchNorm running statistics, no dropout):
    images [N, h, w, 3] -> the head's logits [N, h/4, w/4, K].

    A `Segmentor` runs its `head`. A `MultiResSegmentor` runs HRDA's inference on each
    input (each outer slide window, or the whole image): `forward_inference` with the
    context pass on the whole input at x0.5 and the detail pass over `detail_windows`; the
    fused logits have stride 4 of the input (docs/method.md §8.7). `text_features`
    [K, D_head] are the projected text features of the "lcmsm" head (None for "decode").
    """
    if not isinstance(model, MultiResSegmentor):

        def single(x: jax.Array) -> jax.Array:
            return model(x, text_features=text_features, heads=(head,), train=False)[head]

        return single

    def multires(x: jax.Array) -> jax.Array:
        h, w = x.shape[1:3]
        if h % BOX_DIVISIBLE or w % BOX_DIVISIBLE:
            raise ValueError(
                f"multi-resolution inference needs inputs with sides that are multiples of "
                f"{BOX_DIVISIBLE}, got {h} x {w} (height x width): choose config.data.eval.scale "
                "and config.eval.crop so that the resized image and its windows are"
            )
        grid = detail_windows((h, w), model.detail_size)
        out = model.forward_inference(
            x, windows=grid, text_features=text_features, heads=(head,), train=False
        )
        return out[head][0]  # (fused, attenuated context, detail canvas)

    return multires
