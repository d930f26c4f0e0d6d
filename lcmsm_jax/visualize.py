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
    mix, masks, ... (whatever `aux` holds), and the colour legend of the classes below.
    Returns uint8 [H, W, 3]."""
    rows = [_tiles(batch, aux, prediction, b) for b in range(len(batch["source_image"]))]
    return tile_grid(rows, legend=True)


_LINE = 11  # pixels per caption line of PIL's default font
_SWATCH = 10


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int) -> list[str]:
    """`text` broken at spaces into lines at most `width` pixels wide (a single word wider
    than that is cut), so that captions of narrow tiles do not run into their neighbours."""
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(joined) <= width:
            lines[-1] = joined
            continue
        while draw.textlength(word) > width and len(word) > 1:
            word = word[:-1]
        lines.append(word)
    return lines


def tile_grid(rows: list[list[tuple[str, np.ndarray]]], legend: bool = False) -> np.ndarray:
    """Rows of (caption, uint8 [h, w, 3]) tiles, all the same size, each captioned above
    (wrapped to the tile's width); with `legend`, the classes' colours below the grid.
    Returns uint8 [rows * (h + caption) + legend, cols * w, 3]."""
    height, width = rows[0][0][1].shape[:2]
    columns = max(len(tiles) for tiles in rows)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [[_wrap(measure, text, width - 4) for text, _ in tiles] for tiles in rows]
    caption_height = max(len(lines) for row in captions for lines in row) * _LINE + 3
    key = legend_image(width * columns) if legend else None
    legend_height = 0 if key is None else key.shape[0]
    canvas = Image.new(
        "RGB", (width * columns, (height + caption_height) * len(rows) + legend_height), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for r, tiles in enumerate(rows):
        for c, (_, tile) in enumerate(tiles):
            x, y = c * width, r * (height + caption_height)
            for i, line in enumerate(captions[r][c]):
                draw.text((x + 2, y + 1 + i * _LINE), line, fill="black")
            canvas.paste(Image.fromarray(tile), (x, y + caption_height))
    if key is not None:
        canvas.paste(Image.fromarray(key), (0, (height + caption_height) * len(rows)))
    return np.asarray(canvas)


def legend_image(width: int) -> np.ndarray:
    """The colour of each class (Cityscapes trainIds; white = ignored) as swatches with their
    names, flowing over lines `width` pixels wide. Returns uint8 [h, width, 3]."""
    entries = [*zip(labels.CITYSCAPES_CLASSES, labels.CITYSCAPES_PALETTE, strict=True),
               ("ignored", (255, 255, 255))]  # fmt: skip
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    places, x, y = [], 2, 2
    for name, colour in entries:
        step = _SWATCH + 4 + int(measure.textlength(name)) + 8
        if x > 2 and x + step > width:
            x, y = 2, y + _LINE + 3
        places.append((x, y, name, colour))
        x += step
    image = Image.new("RGB", (max(width, 1), y + _LINE + 4), "white")
    draw = ImageDraw.Draw(image)
    for x, y, name, colour in places:
        draw.rectangle((x, y, x + _SWATCH, y + _SWATCH), fill=tuple(colour), outline="black")
        draw.text((x + _SWATCH + 4, y), name, fill="black")
    return np.asarray(image)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write uint8 RGB [H, W, 3] (or gray [H, W]) atomically."""
    with atomic.replace_file(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")
