"""Pictures people look at: captions stay within their tile, and class colours come with a
legend naming every class."""

import numpy as np
from PIL import Image, ImageDraw

from lcmsm_jax import visualize
from lcmsm_jax.data import labels


def test_captions_wrap_within_the_tile_width():
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for text in ("student on mixed", "classmix mask", "masked target", "source"):
        lines = visualize._wrap(draw, text, 60)
        assert all(draw.textlength(line) <= 60 for line in lines), lines
        assert " ".join(lines).split() == text.split()  # every word kept, in order
    assert len(visualize._wrap(draw, "student on mixed", 60)) > 1  # wider than 60 px


def test_grid_with_legend_shows_every_class_colour():
    rng = np.random.default_rng(0)
    tiles = [(name, labels.colorize(rng.integers(0, 19, (64, 64))))
             for name in ("source", "classmix mask", "student on mixed")]  # fmt: skip
    plain = visualize.tile_grid([tiles, tiles])
    grid = visualize.tile_grid([tiles, tiles], legend=True)
    legend = visualize.legend_image(3 * 64)
    assert grid.shape == (plain.shape[0] + legend.shape[0], 3 * 64, 3)
    np.testing.assert_array_equal(grid[plain.shape[0]:], legend)
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert set(labels.CITYSCAPES_PALETTE) <= colours
