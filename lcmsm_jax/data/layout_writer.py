"""Writing image/label pairs in the datasets' true on-disk formats, one pair at a time.

The synthetic export (`lcmsm-synthetic --export`), the throughput benchmark's true-size PNGs
and the tests' small datasets all write through this module. Paths and formats are spelled
out here literally, not taken from the readers' layout tables in `sources.py`, so that data
written here checks the readers against an independent statement of each format:

  GTA5        images/00001.png                  RGB
              labels/00001.png                  palette PNG, index = Cityscapes labelId
  Cityscapes  leftImg8bit/{split}/{city}/{city}_{frame:06d}_000019_leftImg8bit.png   RGB
              gtFine/{split}/{city}/{city}_{frame:06d}_000019_gtFine_labelIds.png     grey ids
              ..._gtFine_labelTrainIds.png (optional, 255 = ignore), ..._gtFine_color.png
              (optional; readers must skip it)
  SYNTHIA     RGB/0000000.png                   RGB
              GT/LABELS/0000000.png             16-bit RGB(A), class id in channel 0,
                                                instance id in channel 1

Pillow cannot write 16-bit colour PNGs, so `encode_png` writes SYNTHIA's labels by hand.
Each `write_*` returns the relative paths it wrote, keyed "image", "ids" (and "trainids",
"color" where written).
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from PIL import Image

from lcmsm_jax.data import labels as label_tables


def save_rgb(path: str, image: np.ndarray, compress_level: int = 6) -> None:
    """uint8 RGB `[H, W, 3]` as an RGB PNG (6: Pillow's default level); makes the folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image, "RGB").save(path, compress_level=compress_level)


def save_gray(path: str, ids: np.ndarray) -> None:
    """An id map `[H, W]` (values 0..255) as an 8-bit greyscale PNG; makes the folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), "L").save(path)


# ----------------------------------------------------------------------------------- GTA5


def gta5_paths(index: int, digits: int = 5) -> dict[str, str]:
    """Relative paths of pair `index` (0-based; file names count from 00001)."""
    name = f"{index + 1:0{digits}d}.png"
    return {"image": f"images/{name}", "ids": f"labels/{name}"}


def gta5_palette() -> list[int]:
    """GTA5's label palette, 256 RGB entries flat: labelId -> the colour of its trainId
    (ids without a trainId black)."""
    palette = np.zeros((256, 3), np.uint8)
    for label_id, (_, train_id) in label_tables.CITYSCAPES_LABEL_IDS.items():
        if train_id != label_tables.IGNORE_INDEX:
            palette[label_id] = label_tables.CITYSCAPES_PALETTE[train_id]
    return palette.ravel().tolist()


def save_gta5_label(path: str, ids: np.ndarray) -> None:
    """Cityscapes labelIds `[H, W]` as a GTA5 label: a palette PNG whose index is the id."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), "P")
    # All 256 entries: with a short palette Pillow writes fewer bits per pixel and silently
    # changes large indices.
    im.putpalette(gta5_palette())
    im.save(path)


def write_gta5(
    root: str,
    index: int,
    image: np.ndarray,
    ids: np.ndarray,
    *,
    digits: int = 5,
    compress_level: int = 6,
) -> dict[str, str]:
    """Pair `index` under `root`: RGB `image` `[H, W, 3]` uint8 and labelIds `ids` `[H, W]`.

    digits: of the file names (GTA5 has 24966 images, 00001..24966); compress_level: of
    the image PNG."""
    paths = gta5_paths(index, digits)
    save_rgb(os.path.join(root, paths["image"]), image, compress_level)
    save_gta5_label(os.path.join(root, paths["ids"]), ids)
    return paths


# ----------------------------------------------------------------------------- Cityscapes


def cityscapes_paths(split: str, city: str, frame: int) -> dict[str, str]:
    """Relative paths of frame `frame` of `city` in `split`."""
    stem = f"{city}_{frame:06d}_000019"
    gt = f"gtFine/{split}/{city}/{stem}_gtFine_"
    return {
        "image": f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
        "ids": gt + "labelIds.png",
        "trainids": gt + "labelTrainIds.png",
        "color": gt + "color.png",
    }


def write_cityscapes(
    root: str,
    split: str,
    city: str,
    frame: int,
    image: np.ndarray,
    ids: np.ndarray,
    *,
    train_ids: np.ndarray | None = None,
    color: np.ndarray | None = None,
    compress_level: int = 6,
) -> dict[str, str]:
    """One frame under `root`: RGB `image` `[H, W, 3]` uint8 and labelIds `ids` `[H, W]`;
    with `train_ids` `[H, W]` also the labelTrainIds file (what Cityscapes' scripts make),
    with `color` (RGB `[H, W, 3]`) also the colour file the dataset ships.

    compress_level: of the image PNG."""
    paths = cityscapes_paths(split, city, frame)
    written = {key: paths[key] for key in ("image", "ids")}
    save_rgb(os.path.join(root, paths["image"]), image, compress_level)
    save_gray(os.path.join(root, paths["ids"]), ids)
    if train_ids is not None:
        save_gray(os.path.join(root, paths["trainids"]), train_ids)
        written["trainids"] = paths["trainids"]
    if color is not None:
        save_rgb(os.path.join(root, paths["color"]), color)
        written["color"] = paths["color"]
    return written


# -------------------------------------------------------------------------------- SYNTHIA


def synthia_paths(index: int) -> dict[str, str]:
    """Relative paths of pair `index` (file names count from 0000000)."""
    name = f"{index:07d}.png"
    return {"image": f"RGB/{name}", "ids": f"GT/LABELS/{name}"}


def write_synthia(root: str, index: int, image: np.ndarray, gt: np.ndarray) -> dict[str, str]:
    """Pair `index` under `root`: RGB `image` `[H, W, 3]` uint8 and the label planes `gt`
    `[H, W, C]` (C = 3, or 4 with alpha) written as a 16-bit PNG: class id in channel 0,
    instance id in channel 1."""
    paths = synthia_paths(index)
    save_rgb(os.path.join(root, paths["image"]), image)
    label_path = os.path.join(root, paths["ids"])
    os.makedirs(os.path.dirname(label_path), exist_ok=True)
    with open(label_path, "wb") as f:
        f.write(encode_png(gt))
    return paths


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def encode_png(arr: np.ndarray, bit_depth: int = 16) -> bytes:
    """PNG bytes of `[H, W]` or `[H, W, C]` (C = 1..4) samples, cycling row filters 0..4.

    Cycling all five filter types makes readers undo Sub/Average/Paeth with the 16-bit
    bytes-per-pixel, as they must for real files, whatever filters their encoder chose.
    """
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = arr.astype(dtype).reshape(h, -1).view(np.uint8).astype(np.int64)
    bpp = c * bit_depth // 8
    out = bytearray()
    for y in range(h):
        x = rows[y]
        a = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        b = rows[y - 1] if y > 0 else np.zeros_like(x)
        cc = np.concatenate([np.zeros(bpp, np.int64), b[:-bpp]])
        kind = y % 5
        pred = [0, a, b, (a + b) // 2, _paeth(a, b, cc)][kind]
        out += bytes([kind]) + ((x - pred) % 256).astype(np.uint8).tobytes()
    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(out)))
        + _chunk(b"IEND", b"")
    )
