"""Pictures of what a training step sees: one row per image, one tile per intermediate."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from lcmsm_jax import atomic
from lcmsm_jax.data import labels
from lcmsm_jax.data.transforms import MEAN_RGB, STD_RGB


def to_uint8_image(normalized: np.ndarray) -> np.ndarray:
    """Normalised image [H, W, 3] -> displayable uint8 RGB."""
    return np.clip(normalized * STD_RGB + MEAN_RGB, 0, 255).astype(np.uint8)


def to_uint8_gray(values: np.ndarray, vmax: float = 1.0) -> np.ndarray:
    """[H, W] values in [0, vmax] -> uint8 gray RGB."""
    gray = np.clip(np.asarray(values, np.float32) / vmax, 0, 1) * 255
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=-1)


def _tiles(batch: dict, aux: dict, prediction: np.ndarray | None, b: int) -> list:
    """(caption, uint8 [H, W, 3]) tiles for image b; absent intermediates are left out."""
    tiles = [
        ("source", to_uint8_image(batch["source_image"][b])),
        ("source label", labels.colorize(batch["source_label"][b])),
        ("target", to_uint8_image(batch["target_image"][b])),
    ]
    optional = [
        ("pseudo-label", "pseudo_label", labels.colorize),
        ("confidence", "pseudo_confidence", to_uint8_gray),
        ("classmix mask", "classmix_mask", to_uint8_gray),
        ("mixed", "mixed_image", to_uint8_image),
        ("mixed label", "mixed_label", labels.colorize),
        ("mixed weight", "mixed_weight", to_uint8_gray),
        ("masked source", "masked_source_image", to_uint8_image),
        ("masked mixed", "masked_mix_image", to_uint8_image),
        ("masked target", "masked_target_image", to_uint8_image),
    ]
    for caption, key, paint in optional:
        if key in aux:
            tiles.append((caption, paint(np.asarray(aux[key][b]))))
    if prediction is not None:
        tiles.append(("student on mixed", labels.colorize(prediction[b])))
    return tiles


def debug_panel(batch: dict, aux: dict, prediction: np.ndarray | None = None) -> np.ndarray:
    """A grid: rows = images of the batch, columns = source, labels, target, pseudo-labels,
    mix, masks, ... (whatever `aux` holds). Returns uint8 [rows * (h + 14), cols * w, 3]."""
    return tile_grid([_tiles(batch, aux, prediction, b) for b in range(len(batch["source_image"]))])


def tile_grid(rows: list[list[tuple[str, np.ndarray]]], caption_height: int = 14) -> np.ndarray:
    """Rows of (caption, uint8 [h, w, 3]) tiles, all the same size, captioned above each tile.
    Returns uint8 [rows * (h + caption_height), cols * w, 3]."""
    height, width = rows[0][0][1].shape[:2]
    columns = max(len(tiles) for tiles in rows)
    canvas = Image.new("RGB", (width * columns, (height + caption_height) * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, tiles in enumerate(rows):
        for c, (text, tile) in enumerate(tiles):
            x, y = c * width, r * (height + caption_height)
            draw.text((x + 2, y + 1), text, fill="black")
            canvas.paste(Image.fromarray(tile), (x, y + caption_height))
    return np.asarray(canvas)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write uint8 RGB [H, W, 3] (or gray [H, W]) atomically."""
    with atomic.replace_file(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")
