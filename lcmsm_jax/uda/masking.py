"""Block mask of masked image modelling (MIC's `block` generator, docs/method.md §3.12)."""

import jax
import jax.numpy as jnp
import numpy as np


def mask_grid_shape(height: int, width: int, block_size: int) -> tuple[int, int]:
    """Cells per axis: round(side / block) with Python's rounding, as the reference; at least 1."""
    return max(1, round(height / block_size)), max(1, round(width / block_size))


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source cell of each output pixel for nearest upsampling: floor(i * n_in / n_out).

    This is PyTorch's `interpolate(mode="nearest")` rule. When the side is a multiple of the
    block it simply repeats every cell block x block times; otherwise cells near the end are
    stretched or shrunk by at most a pixel per cell instead of being cropped.
    """
    return np.minimum(np.arange(n_out) * n_in // n_out, n_in - 1)


def sample_block_mask(
    key: jax.Array,
    batch_size: int,
    height: int,
    width: int,
    *,
    block_size: int = 32,
    mask_ratio: float = 0.5,
) -> jax.Array:
    """Random keep-mask `[B, H, W]` float32 of square blocks (1 = keep, 0 = masked).

    Per image a grid of round(H/block) x round(W/block) uniforms is drawn; a cell is kept when
    its number exceeds `mask_ratio`, so about 1 - mask_ratio of the cells survive. The grid is
    upsampled with nearest neighbour (see `_nearest_index`): 16 x 16 cells of 32 px at 512.
    """
    grid_h, grid_w = mask_grid_shape(height, width, block_size)
    grid = jax.random.uniform(key, (batch_size, grid_h, grid_w)) > mask_ratio
    grid = grid.astype(jnp.float32)
    rows = jnp.asarray(_nearest_index(height, grid_h))
    cols = jnp.asarray(_nearest_index(width, grid_w))
    return grid[:, rows][:, :, cols]


def apply_block_mask(images: jax.Array, mask: jax.Array) -> jax.Array:
    """Zero the masked blocks of normalised images `[B, H, W, C]` with a mask `[B, H, W]`.

    On normalised images 0 is the dataset mean colour; one mask covers all channels.
    """
    return images * mask[..., None].astype(images.dtype)
