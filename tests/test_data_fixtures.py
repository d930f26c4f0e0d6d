"""Writers for tiny datasets in each dataset's true on-disk format, and checks of the writers.

Other data tests import these helpers. Label maps are random rectangles of ids, returned so
tests can compute the expected trainIds and pixel counts independently.
"""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lcmsm_jax.data import labels, pngio

CS_IDS = np.arange(34)
SYNTHIA_IDS = np.arange(23)


def random_ids(rng: np.random.Generator, size, ids, rects: int = 12) -> np.ndarray:
    """`[H, W]` id map: a random background plus `rects` random rectangles of random ids."""
    h, w = size
    out = np.full((h, w), rng.choice(ids), np.int64)
    for _ in range(rects):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = y0 + rng.integers(1, h // 2 + 2), x0 + rng.integers(1, w // 2 + 2)
        out[y0:y1, x0:x1] = rng.choice(ids)
    return out


def random_rgb(rng: np.random.Generator, size) -> np.ndarray:
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def encode_png(arr: np.ndarray, bit_depth: int = 16) -> bytes:
    """PNG bytes of `[H, W]` or `[H, W, C]` (C = 1..4) samples, cycling row filters 0..4.

    Pillow cannot write 16-bit colour PNGs, so this writes them by hand; cycling all five
    filter types makes readers undo Sub/Average/Paeth with the 16-bit bytes-per-pixel.
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


def _save_rgb(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rgb, "RGB").save(path)


def _save_gray(path: str, ids: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), "L").save(path)


def save_palette(path: str, ids: np.ndarray) -> None:
    # A full 256-entry palette: with a short one Pillow writes fewer bits per pixel and
    # silently changes large indices.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), "P")
    palette = np.zeros((256, 3), np.uint8)
    palette[7 : 7 + 19] = labels.CITYSCAPES_PALETTE  # any colours: readers use the index
    im.putpalette(palette.ravel().tolist())
    im.save(path)


def write_gta5(root, n=4, size=(24, 40), seed=0, ids=CS_IDS) -> dict[str, np.ndarray]:
    """GTA5: images/00001.png (RGB) + labels/00001.png (palette, index = id)."""
    rng = np.random.default_rng(seed)
    written = {}
    for i in range(1, n + 1):
        lab = random_ids(rng, size, ids)
        _save_rgb(os.path.join(root, "images", f"{i:05d}.png"), random_rgb(rng, size))
        save_palette(os.path.join(root, "labels", f"{i:05d}.png"), lab)
        written[f"labels/{i:05d}.png"] = lab
    return written


def write_synthia(root, n=4, size=(24, 40), seed=0, channels=3) -> dict[str, np.ndarray]:
    """SYNTHIA: RGB/0000000.png + GT/LABELS/0000000.png, 16-bit, id in channel 0."""
    rng = np.random.default_rng(seed)
    written = {}
    os.makedirs(os.path.join(root, "GT", "LABELS"), exist_ok=True)
    for i in range(n):
        lab = random_ids(rng, size, SYNTHIA_IDS)
        gt = np.zeros((*size, channels), np.uint16)
        gt[..., 0] = lab
        gt[..., 1] = rng.integers(0, 5000, size)  # instance ids, may exceed 255
        if channels == 4:
            gt[..., 3] = 65535
        _save_rgb(os.path.join(root, "RGB", f"{i:07d}.png"), random_rgb(rng, size))
        with open(os.path.join(root, "GT", "LABELS", f"{i:07d}.png"), "wb") as f:
            f.write(encode_png(gt))
        written[f"GT/LABELS/{i:07d}.png"] = lab
    return written


def write_cityscapes(
    root, split="train", cities=("aachen", "bremen"), per_city=2, size=(16, 32), seed=0
) -> dict[str, np.ndarray]:
    """Cityscapes: leftImg8bit/{split}/{city}/X_leftImg8bit.png + gtFine/.../X_gtFine_*.png."""
    rng = np.random.default_rng(seed)
    written = {}
    for city in cities:
        for j in range(per_city):
            stem = f"{city}_{j:06d}_000019"
            lab = random_ids(rng, size, CS_IDS)
            _save_rgb(
                os.path.join(root, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"),
                random_rgb(rng, size),
            )
            gt = os.path.join(root, "gtFine", split, city, stem)
            _save_gray(gt + "_gtFine_labelIds.png", lab)
            _save_gray(
                gt + "_gtFine_labelTrainIds.png",
                labels.lookup_table(labels.CITYSCAPES_ID_TO_TRAIN_ID)[lab],
            )
            _save_rgb(gt + "_gtFine_color.png", random_rgb(rng, size))  # must be ignored
            written[f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"] = lab
    return written


def write_acdc(
    root, conditions=("fog", "night"), split="train", per_seq=2, size=(16, 32), seed=0
) -> dict[str, np.ndarray]:
    """ACDC: rgb_anon/{cond}/{split}/{seq}/X_rgb_anon.png + gt/.../X_gt_labelIds.png."""
    rng = np.random.default_rng(seed)
    written = {}
    for cond in conditions:
        seq = f"GOPR{len(cond):04d}"
        for j in range(per_seq):
            stem = f"{seq}_frame_{j:06d}"
            lab = random_ids(rng, size, CS_IDS)
            _save_rgb(
                os.path.join(root, "rgb_anon", cond, split, seq, f"{stem}_rgb_anon.png"),
                random_rgb(rng, size),
            )
            # Reference images of the same place must not be picked up as the split.
            _save_rgb(
                os.path.join(
                    root, "rgb_anon", cond, f"{split}_ref", seq, f"{stem}_rgb_ref_anon.png"
                ),
                random_rgb(rng, size),
            )
            _save_gray(os.path.join(root, "gt", cond, split, seq, f"{stem}_gt_labelIds.png"), lab)
            written[f"gt/{cond}/{split}/{seq}/{stem}_gt_labelIds.png"] = lab
    return written


def write_darkzurich(root, per_seq=2, size=(16, 32), seed=0) -> dict[str, np.ndarray]:
    """Dark Zurich: labelled val/night and unlabelled train/night (and train/day)."""
    rng = np.random.default_rng(seed)
    written = {}
    for j in range(per_seq):
        stem = f"GOPR0356_frame_{j:06d}"
        lab = random_ids(rng, size, CS_IDS)
        _save_rgb(
            os.path.join(root, "rgb_anon", "val", "night", "GOPR0356", f"{stem}_rgb_anon.png"),
            random_rgb(rng, size),
        )
        _save_gray(
            os.path.join(root, "gt", "val", "night", "GOPR0356", f"{stem}_gt_labelIds.png"), lab
        )
        written[f"gt/val/night/GOPR0356/{stem}_gt_labelIds.png"] = lab
        for cond in ("night", "day"):
            _save_rgb(
                os.path.join(
                    root,
                    "rgb_anon",
                    "train",
                    cond,
                    "GOPR0351",
                    f"GOPR0351_frame_{j:06d}_rgb_anon.png",
                ),
                random_rgb(rng, size),
            )
    return written


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_writer_round_trips_through_the_label_reader(tmp_path, channels):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (9, 13, channels)).astype(np.uint16)
    arr[..., 0] = rng.integers(0, 23, (9, 13))
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(arr))
    np.testing.assert_array_equal(pngio.read_channel0_label(str(path)), arr[..., 0])
    np.testing.assert_array_equal(pngio.read_channel0_label(str(path), exact=True), arr[..., 0])


def test_16bit_reader_sees_ids_above_255_only_when_exact(tmp_path):
    arr = np.zeros((4, 6, 3), np.uint16)
    arr[..., 0] = 3
    arr[0, 0, 0] = 256 + 3  # low byte alone would read as road
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(arr))
    assert pngio.read_channel0_label(str(path))[0, 0] == 3
    assert pngio.read_channel0_label(str(path), exact=True)[0, 0] == 259


def test_8bit_writer_matches_pillow(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (7, 5, 3)).astype(np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(arr, bit_depth=8))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)


def test_pillow_alone_cannot_read_synthia_labels(tmp_path):
    # Why pngio exists: Pillow keeps the high byte of 16-bit colour samples.
    write_synthia(str(tmp_path), n=1)
    with Image.open(tmp_path / "GT" / "LABELS" / "0000000.png") as im:
        assert im.mode == "RGB" and np.asarray(im)[..., 0].max() == 0
