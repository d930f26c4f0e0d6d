"""The scenes written to disk as a GTA5 or Cityscapes dataset (`export`), and a preview.

Each scene is written by `lcmsm_jax/data/layout_writer.py`, in the real datasets' formats,
so an export exercises the real-data path (readers, `lcmsm-prepare`) end to end.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TextIO

import numpy as np
from PIL import Image

from lcmsm_jax import atomic
from lcmsm_jax.data import labels as label_tables
from lcmsm_jax.data import layout_writer, manifest
from lcmsm_jax.data.synthetic.geometry import IGNORE
from lcmsm_jax.data.synthetic.look import render
from lcmsm_jax.data.synthetic.scene import DEFAULT_SIZE, DOMAINS, _check_domain
from lcmsm_jax.data.synthetic.source import SyntheticSource
from lcmsm_jax.progress import Progress

EXPORT_LAYOUTS = ("gta5", "cityscapes")
CITIES = ("alderby", "brookton", "corwen")  # invented, so exports never pass for real data
_STALE = (manifest.MANIFEST_NAME, manifest.STATS_NAME)  # lcmsm-prepare's outputs


def _train_to_label_ids() -> np.ndarray:
    """`[256]` uint8 table trainId -> Cityscapes labelId; ignore and unknown -> 0."""
    lut = np.zeros(256, np.uint8)
    for label_id, (_, train_id) in label_tables.CITYSCAPES_LABEL_IDS.items():
        if train_id != IGNORE:
            lut[train_id] = label_id
    return lut


def _write_example(
    root: str, layout: str, index: int, num_images: int, split: str, image: np.ndarray,
    label: np.ndarray,
) -> None:  # fmt: skip
    """Scene `index` of `num_images`: RGB `image` `[H, W, 3]` and trainIds `label` `[H, W]`
    (written as labelIds, ignore -> 0; Cityscapes also gets the trainIds, 255 kept)."""
    ids = _train_to_label_ids()[label.astype(np.uint8)]
    # Level 1: the noisy images hardly compress better at higher levels, only slower.
    if layout == "gta5":
        digits = max(5, len(str(num_images)))
        layout_writer.write_gta5(root, index, image, ids, digits=digits, compress_level=1)
    else:
        # Cities take consecutive blocks of frames: sorted paths follow the index order, as
        # the readers list them.
        city = CITIES[index * len(CITIES) // num_images]
        layout_writer.write_cityscapes(
            root, split, city, index, image, ids, train_ids=label, compress_level=1
        )


def _split_dirs(layout: str, split: str) -> tuple[str, ...]:
    """The folders one export owns, labels first (they are moved into place first)."""
    return ("labels", "images") if layout == "gta5" else (f"gtFine/{split}", f"leftImg8bit/{split}")


def _swap_in(tmp: str, out_root: str, dirs: tuple[str, ...]) -> None:
    """Move the folders written under `tmp` into an existing `out_root`, replacing any old
    ones (moved into `tmp` and deleted with it). lcmsm-prepare's files no longer describe
    the folders, so they go first."""
    for name in _STALE:
        if os.path.exists(os.path.join(out_root, name)):
            os.remove(os.path.join(out_root, name))
    for k, rel in enumerate(dirs):
        target = os.path.join(out_root, rel)
        if os.path.exists(target):
            os.rename(target, os.path.join(tmp, f".old-{k}"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(os.path.join(tmp, rel), target)


def export(
    domain: str,
    out_root: str,
    num_images: int,
    *,
    layout: str = "gta5",
    split: str = "train",
    size=DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    progress: TextIO | str | None = None,
    variant: str = "default",
) -> str:
    """Write scenes 0..num_images-1 of `domain` to `out_root` in a real dataset's layout.

    layout "gta5": images/00001.png + labels/00001.png (palette PNG, index = Cityscapes
    labelId); `split` is not used (GTA5 has one). layout "cityscapes":
    leftImg8bit/{split}/{city}/X_leftImg8bit.png + gtFine/{split}/{city}/X_gtFine_labelIds.png
    and X_gtFine_labelTrainIds.png. Ignored pixels get labelId 0 (trainId files keep 255).

    Everything is written into a temporary folder next to the target and renamed into place
    at the end, so an interrupted export leaves nothing half-written. Into an existing root
    (e.g. adding a Cityscapes "val" split) only this export's split folders are replaced,
    and only with `overwrite`. `progress`: a stream for progress lines, "stdout", or None
    (quiet). `variant`: scene.VARIANTS. Returns the absolute root.
    """
    _check_domain(domain)
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {EXPORT_LAYOUTS}")
    source = SyntheticSource(domain, num_images, size, seed, variant=variant)
    out_root = os.path.abspath(out_root)
    dirs = _split_dirs(layout, split)
    fresh = not os.path.exists(out_root)
    taken = [] if fresh else [d for d in dirs if os.path.exists(os.path.join(out_root, d))]
    if taken and not overwrite:
        raise FileExistsError(
            f"{out_root} already holds {', '.join(taken)}; pass --overwrite to replace them"
        )
    parent = os.path.dirname(out_root) if fresh else out_root
    os.makedirs(parent, exist_ok=True)
    # Renamed into place when fresh: created with the permissions of an ordinary mkdir.
    tmp = atomic.make_temp_folder(parent, prefix=f".{os.path.basename(out_root)}.tmp-")
    try:
        bar = Progress(f"{domain} -> {layout} {out_root}", num_images, stream=progress)
        for i in range(num_images):
            example = source[i]
            _write_example(tmp, layout, i, num_images, split, example["image"], example["label"])
            bar.update()
        bar.finish()
        info = {"generator": "lcmsm_jax.data.synthetic", "domain": domain, "seed": seed}
        info |= {"layout": layout, "split": split if layout == "cityscapes" else "all"}
        info |= {"size": list(source.size), "num_images": num_images}
        if variant != "default":
            info["variant"] = variant
        info_name = "synthetic.json" if layout == "gta5" else f"synthetic_{split}.json"
        atomic.write_text(os.path.join(tmp, info_name), json.dumps(info, indent=1))
        if fresh:
            os.rename(tmp, out_root)
        else:
            _swap_in(tmp, out_root, dirs)
            os.replace(os.path.join(tmp, info_name), os.path.join(out_root, info_name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # also on errors and Ctrl-C
    return out_root


def preview_grid(
    num_images: int = 4, size=DEFAULT_SIZE, seed: int = 0, variant: str = "default"
) -> np.ndarray:
    """uint8 `[num_images * H, 4 * W, 3]`: per row, a source image, its colourised labels, a
    target image and its labels."""
    rows = []
    for i in range(num_images):
        row = []
        for domain in DOMAINS:
            image, label = render(domain, i, seed=seed, size=size, variant=variant)
            row += [image, label_tables.colorize(label)]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def write_preview(
    path: str, num_images: int = 4, size=DEFAULT_SIZE, seed: int = 0, variant: str = "default"
) -> str:
    """Write `preview_grid` as a picture (format from the extension, e.g. .png); returns
    `path`. The file appears complete or not at all."""
    picture_format = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if picture_format is None:
        raise ValueError(f"{path}: unknown picture format; name the file e.g. preview.png")
    grid = preview_grid(num_images, size, seed, variant)
    with atomic.replace_file(path, "wb") as f:
        Image.fromarray(grid).save(f, format=picture_format)
    return path
