"""Reading the PNG flavours the datasets ship: RGB images, 8-bit id maps, 16-bit SYNTHIA labels.

Pillow reads 16-bit RGB(A) PNGs by keeping only the high byte of each sample, which is 0 for
SYNTHIA's class ids (0..22). We therefore ask Pillow's own PNG decoder (which undoes the
PNG row filters) to unpack the *low* bytes instead, by switching the tile's raw mode from
big-endian `;16B` to `;16L` before loading; reading both halves gives the exact 16-bit value.
"""

import os
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image

# Pillow modes that hold one class id per pixel.
INDEX_MODES = ("P", "L", "I;16", "I;16B", "I;16L", "I")


class LabelFormatError(ValueError):
    """A label PNG is readable but not the kind of image the dataset expects."""


class ImageFormatError(ValueError):
    """An image is readable but not 8 bits per sample; the message names the file, its mode
    and what to do."""


# Pillow modes of more than 8 bits per sample that `convert("RGB")` clips to 255 instead of
# scaling: 16-bit greyscale PNGs ("I;16*") and 32-bit integer or float images. (16-bit RGB
# PNGs are read as "RGB" with the high byte of each sample, which is a correct 8-bit scaling.)
_WIDE_MODES = {
    "I;16": "16-bit greyscale",
    "I;16B": "16-bit greyscale",
    "I;16L": "16-bit greyscale",
    "I;16N": "16-bit greyscale",
    "I": "32-bit integer greyscale",
    "F": "32-bit float greyscale",
}


class UnreadableImageError(OSError):
    """An image or label file that is missing or cannot be decoded; the message names the
    file and what to do."""


# What Pillow raises for a missing, truncated or corrupt file: OSError ("image file is
# truncated", UnidentifiedImageError), SyntaxError ("broken PNG file"), zlib.error and
# ValueError for damaged compressed data, DecompressionBombError for absurd sizes.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError)


def read_rgb(path: str | BinaryIO) -> np.ndarray:
    """Decode an image to uint8 RGB `[H, W, 3]` (alpha or palette are converted away).

    Raises ImageFormatError for greyscale images of more than 8 bits per sample, which
    would come out white where their values exceed 255.
    """
    with Image.open(path) as im:
        if im.mode in _WIDE_MODES:
            named = f"{path} is a" if isinstance(path, (str, os.PathLike)) else "a"  # not a stream
            raise ImageFormatError(
                f"{named} {_WIDE_MODES[im.mode]} image (mode {im.mode!r}); expected an 8-bit "
                "RGB, palette or greyscale image. Convert it to 8 bits per sample (for 16-bit "
                "values: divide by 257) and read it again"
            )
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im)


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the PNG header, without decoding pixels."""
    with Image.open(path) as im:
        return im.height, im.width


def verify_png(path: str) -> tuple[tuple[int, int], str]:
    """Check chunk CRCs and completeness without decoding; returns ((height, width), mode).

    Raises whatever Pillow raises for a truncated or corrupt file.
    """
    with Image.open(path) as im:
        size, mode = (im.height, im.width), im.mode
        im.verify()
    return size, mode


def read_index_label(path: str | BinaryIO) -> np.ndarray:
    """An id map stored as palette ('P', index = id) or grey-level PNG -> `[H, W]` ids.

    Raises LabelFormatError for colour images, which usually means the colour
    visualisation files were unpacked instead of the id files.
    """
    with Image.open(path) as im:
        if im.mode not in INDEX_MODES:
            raise LabelFormatError(
                f"{path}: expected a palette (P) or grey-level (L) PNG of class ids, got mode "
                f"{im.mode!r}; this looks like a colour visualisation, not an id map"
            )
        ids = np.asarray(im)
    return ids if ids.dtype == np.uint8 else ids.astype(np.int64)


def _load_with_rawmode(path: str, suffix_from: str, suffix_to: str) -> np.ndarray:
    with Image.open(path) as im:
        codec, extents, offset, rawmode = im.tile[0][:4]
        tile = (codec, extents, offset, rawmode.replace(suffix_from, suffix_to))
        # Pillow >= 11 keeps tiles as a named tuple; older versions as plain tuples.
        im.tile = [type(im.tile[0])(*tile) if hasattr(im.tile[0], "_replace") else tile]
        return np.asarray(im)


def read_channel0_label(path: str, exact: bool = False) -> np.ndarray:
    """Class ids from the first channel of a (16- or 8-bit) colour PNG -> `[H, W]`.

    SYNTHIA's `GT/LABELS/*.png` are 16-bit RGB(A) PNGs with the class id in channel 0. By
    default only the low byte is decoded (one pass, uint8; ids < 256 are exact). With
    `exact=True` both bytes are decoded and combined (two passes, int64), which is what
    validation uses to catch ids >= 256.
    """
    with Image.open(path) as im:
        mode, tile = im.mode, im.tile
        if mode in INDEX_MODES:
            ids = np.asarray(im)
            return ids if ids.dtype == np.uint8 else ids.astype(np.int64)
    rawmode = tile[0][3] if tile and isinstance(tile[0][3], str) else ""
    if not rawmode.endswith(";16B"):
        # 8-bit colour PNG: channel 0 is the id as stored.
        with Image.open(path) as im:
            return np.asarray(im)[..., 0]
    low = _load_with_rawmode(path, ";16B", ";16L")[..., 0]
    if not exact:
        return low
    with Image.open(path) as im:
        high = np.asarray(im)[..., 0]  # Pillow's default unpacking keeps the high byte.
    return high.astype(np.int64) * 256 + low
