"""Tiny datasets in each dataset's true on-disk format, and checks of the writers.

Other data tests import these helpers. GTA5, SYNTHIA and Cityscapes pairs are written by
`lcmsm_jax/data/layout_writer.py` (the package's one statement of those formats, independent
of the readers' layout tables); ACDC and Dark Zurich, which only the tests write, here. Label
maps are random rectangles of ids, returned so tests can compute the expected trainIds and
pixel counts independently.
"""

import os

import numpy as np
import pytest
from PIL import Image

from lcmsm_jax.data import labels, layout_writer, pngio
from lcmsm_jax.data.layout_writer import encode_png

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


# Rewrites one GTA5 label (tests that break a dataset after writing it).
save_palette = layout_writer.save_gta5_label


def write_gta5(root, n=4, size=(24, 40), seed=0, ids=CS_IDS) -> dict[str, np.ndarray]:
    """GTA5: images/00001.png (RGB) + labels/00001.png (palette, index = id)."""
    rng = np.random.default_rng(seed)
    written = {}
    for i in range(n):
        lab = random_ids(rng, size, ids)
        paths = layout_writer.write_gta5(root, i, random_rgb(rng, size), lab)
        written[paths["ids"]] = lab
    return written


def write_synthia(root, n=4, size=(24, 40), seed=0, channels=3) -> dict[str, np.ndarray]:
    """SYNTHIA: RGB/0000000.png + GT/LABELS/0000000.png, 16-bit, id in channel 0."""
    rng = np.random.default_rng(seed)
    written = {}
    for i in range(n):
        lab = random_ids(rng, size, SYNTHIA_IDS)
        gt = np.zeros((*size, channels), np.uint16)
        gt[..., 0] = lab
        gt[..., 1] = rng.integers(0, 5000, size)  # instance ids, may exceed 255
        if channels == 4:
            gt[..., 3] = 65535
        paths = layout_writer.write_synthia(root, i, random_rgb(rng, size), gt)
        written[paths["ids"]] = lab
    return written


def write_cityscapes(
    root, split="train", cities=("aachen", "bremen"), per_city=2, size=(16, 32), seed=0
) -> dict[str, np.ndarray]:
    """Cityscapes: leftImg8bit/{split}/{city}/X_leftImg8bit.png + gtFine/.../X_gtFine_*.png."""
    rng = np.random.default_rng(seed)
    to_train = labels.lookup_table(labels.CITYSCAPES_ID_TO_TRAIN_ID)
    written = {}
    for city in cities:
        for j in range(per_city):
            lab = random_ids(rng, size, CS_IDS)
            image = random_rgb(rng, size)
            color = random_rgb(rng, size)  # the dataset's colour file: must be ignored
            paths = layout_writer.write_cityscapes(
                root, split, city, j, image, lab, train_ids=to_train[lab], color=color
            )
            written[paths["ids"]] = lab
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
            layout_writer.save_rgb(
                os.path.join(root, "rgb_anon", cond, split, seq, f"{stem}_rgb_anon.png"),
                random_rgb(rng, size),
            )
            # Reference images of the same place must not be picked up as the split.
            layout_writer.save_rgb(
                os.path.join(
                    root, "rgb_anon", cond, f"{split}_ref", seq, f"{stem}_rgb_ref_anon.png"
                ),
                random_rgb(rng, size),
            )
            layout_writer.save_gray(
                os.path.join(root, "gt", cond, split, seq, f"{stem}_gt_labelIds.png"), lab
            )
            written[f"gt/{cond}/{split}/{seq}/{stem}_gt_labelIds.png"] = lab
    return written


def write_darkzurich(root, per_seq=2, size=(16, 32), seed=0) -> dict[str, np.ndarray]:
    """Dark Zurich: labelled val/night and unlabelled train/night (and train/day)."""
    rng = np.random.default_rng(seed)
    written = {}
    for j in range(per_seq):
        stem = f"GOPR0356_frame_{j:06d}"
        lab = random_ids(rng, size, CS_IDS)
        layout_writer.save_rgb(
            os.path.join(root, "rgb_anon", "val", "night", "GOPR0356", f"{stem}_rgb_anon.png"),
            random_rgb(rng, size),
        )
        layout_writer.save_gray(
            os.path.join(root, "gt", "val", "night", "GOPR0356", f"{stem}_gt_labelIds.png"), lab
        )
        written[f"gt/val/night/GOPR0356/{stem}_gt_labelIds.png"] = lab
        for cond in ("night", "day"):
            layout_writer.save_rgb(
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
