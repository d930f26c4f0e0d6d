"""Block mask: layout, keep rule, ratio, non-multiple sides, application (docs/method.md §3.12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcmsm_jax.uda import masking

sample = jax.jit(
    masking.sample_block_mask,
    static_argnums=(1, 2, 3),
    static_argnames=("block_size", "mask_ratio"),
)


def test_layout_at_512():
    key = jax.random.key(0)
    mask = np.asarray(sample(key, 2, 512, 512))
    assert mask.shape == (2, 512, 512) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    cells = mask.reshape(2, 16, 32, 16, 32)
    # Every 32 x 32 cell is constant ...
    assert (cells.min(axis=(2, 4)) == cells.max(axis=(2, 4))).all()
    # ... and equals "uniform > ratio" of a 16 x 16 grid drawn from the same key.
    grid = np.asarray(jax.random.uniform(key, (2, 16, 16)) > 0.5)
    np.testing.assert_array_equal(cells[:, :, 0, :, 0], grid)
    assert not (grid[0] == grid[1]).all()  # independent per image


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_kept_fraction(ratio):
    mask = np.asarray(sample(jax.random.key(1), 64, 64, 64, block_size=8, mask_ratio=ratio))
    assert abs(mask.mean() - (1 - ratio)) < 0.03  # 4096 cells
    assert mask.reshape(64, -1).mean(1).std() > 0  # not one draw for the whole batch


def test_non_multiple_sides_use_nearest_rule():
    key = jax.random.key(2)
    mask = np.asarray(sample(key, 1, 100, 70))
    assert masking.mask_grid_shape(100, 70, 32) == (3, 2)  # round(3.125), round(2.1875)
    grid = np.asarray(jax.random.uniform(key, (1, 3, 2)) > 0.5).astype(np.float32)
    # Output pixel i takes cell floor(i * cells / side) (PyTorch "nearest").
    rows = np.arange(100) * 3 // 100
    cols = np.arange(70) * 2 // 70
    np.testing.assert_array_equal(mask[0], grid[0][rows][:, cols])
    assert np.bincount(rows).tolist() == [34, 33, 33]
    assert masking.mask_grid_shape(8, 8, 32) == (1, 1)  # never an empty grid


def test_nearest_rule_matches_torch():
    torch = pytest.importorskip("torch")
    grid = torch.rand(1, 1, 3, 5)
    for out in [(100, 70), (96, 160), (17, 9)]:
        expected = torch.nn.functional.interpolate(grid, size=out, mode="nearest")[0, 0].numpy()
        rows = masking._nearest_index(out[0], 3)
        cols = masking._nearest_index(out[1], 5)
        np.testing.assert_array_equal(grid[0, 0].numpy()[rows][:, cols], expected)


def test_apply_block_mask():
    rng = np.random.default_rng(3)
    images = rng.standard_normal((2, 8, 6, 3)).astype(np.float32)
    mask = (rng.random((2, 8, 6)) > 0.5).astype(np.float32)
    out = np.asarray(masking.apply_block_mask(jnp.asarray(images), jnp.asarray(mask)))
    np.testing.assert_array_equal(out, images * mask[..., None])
    assert (out[mask == 0] == 0).all()  # all channels of a masked pixel
    np.testing.assert_array_equal(out[mask == 1], images[mask == 1])
