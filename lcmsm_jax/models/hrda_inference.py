"""Slide inference of the multi-resolution detail branch (docs/method.md §8.4), NHWC.

At inference the detail logits cover the whole HR image: `detail_size` windows on a grid
(`lcmsm_jax.inference.windows`, stride half the window) run as one window-major batch
(`window_batch`); their stride-4 logits are summed into a canvas in window order and
divided by the number of windows covering each cell (`average_windows`, `window_count`).
Window corners are static Python ints. Sizes are (height, width).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

OUTPUT_STRIDE = 4  # the heads' logits against their own input


def window_count(
    windows: Sequence[tuple[int, int]], size: Sequence[int], image_hw: Sequence[int]
) -> np.ndarray:
    """`[H/4, W/4]` float32: how many detail windows (top-left corners `windows`, each
    `size`) cover each canvas cell. Raises unless every cell is covered and the windows lie
    on the stride-4 grid inside the image."""
    s = OUTPUT_STRIDE
    count = np.zeros((image_hw[0] // s, image_hw[1] // s), np.float32)
    for y, x in windows:
        inside = 0 <= y <= image_hw[0] - size[0] and 0 <= x <= image_hw[1] - size[1]
        if y % s or x % s or not inside:
            raise ValueError(
                f"detail window at {(y, x)} of size {tuple(size)} is not on the stride-{s} "
                f"grid inside {tuple(image_hw)}"
            )
        count[y // s : (y + size[0]) // s, x // s : (x + size[1]) // s] += 1
    if count.min() == 0:
        raise ValueError(
            f"detail windows {list(windows)} leave part of {tuple(image_hw)} uncovered"
        )
    return count


def window_batch(
    images: jax.Array, windows: Sequence[tuple[int, int]], size: Sequence[int]
) -> jax.Array:
    """`[B, H, W, C]` -> `[N * B, h, w, C]`, window-major: rows [i B, (i + 1) B) are window i."""
    return jnp.concatenate([images[:, y : y + size[0], x : x + size[1]] for y, x in windows], 0)


def average_windows(
    logits: jax.Array, windows: Sequence[tuple[int, int]], image_hw: Sequence[int]
) -> jax.Array:
    """Window logits `[N * B, h/4, w/4, K]` (window-major) -> canvas `[B, H/4, W/4, K]`:
    each window's logits summed at its place in window order, divided by the count."""
    n = len(windows)
    b = logits.shape[0] // n
    lh, lw, k = logits.shape[1:]
    size = (lh * OUTPUT_STRIDE, lw * OUTPUT_STRIDE)
    count = window_count(windows, size, image_hw)
    canvas = jnp.zeros((b, *count.shape, k), jnp.float32)
    for i, (y, x) in enumerate(windows):
        y, x = y // OUTPUT_STRIDE, x // OUTPUT_STRIDE
        canvas = canvas.at[:, y : y + lh, x : x + lw].add(logits[i * b : (i + 1) * b])
    return canvas / count[None, :, :, None]
