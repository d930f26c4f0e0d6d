"""Prediction PNGs: the Cityscapes benchmark format, colour maps and overlays.

Benchmark files are full-resolution 8-bit grey PNGs of Cityscapes labelIds (not trainIds),
named after the image (`<city>_<seq>_<frame>_leftImg8bit.png`); the official script and
the server match a prediction to `<city>_<seq>_<frame>_gtFine_labelIds.png` by the pattern
`<city>_<seq>_<frame>*.png`, searched recursively, and reject more than one match.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lcmsm_jax import atomic
from lcmsm_jax.data import labels as label_tables

# trainId -> Cityscapes labelId, for the benchmark's labelIds PNGs; 255 -> 0 (unlabeled).
TRAIN_ID_TO_LABEL_ID = np.zeros(256, np.uint8)
for _label_id, (_, _train_id) in label_tables.CITYSCAPES_LABEL_IDS.items():
    if _train_id != label_tables.IGNORE_INDEX:
        TRAIN_ID_TO_LABEL_ID[_train_id] = _label_id


def benchmark_names(source, count: int) -> list[str]:
    """One output file name per source index: the image's file name (Cityscapes keeps
    `<city>_<seq>_<frame>_leftImg8bit.png`, which the benchmark matches as
    `<city>_<seq>_<frame>*.png`), or `<index>.png` for sources without file names."""
    images = getattr(source, "images", None)
    if images is None:
        return [f"{i:06d}.png" for i in range(count)]
    return [os.path.splitext(os.path.basename(p))[0] + ".png" for p in images[:count]]


class BenchmarkExporter:
    """Writes full-resolution labelId PNGs to `<dir>/labelIds/` and colour PNGs to `<dir>/color/`.

    Two folders because the official script searches its results folder recursively for
    `<city>_<seq>_<frame>*.png` and fails on more than one match: point CITYSCAPES_RESULTS
    (or the server upload) at `labelIds/` only. Files are written by a small thread pool.
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        names: Sequence[str],
        threads: int = 4,
        flag: str = "--export-dir",
    ):
        """`flag`: the command-line flag `export_dir` came from, named by errors."""
        self.root = atomic.make_output_folder(export_dir, flag)
        self.names = list(names)
        for sub in ("labelIds", "color"):
            atomic.make_output_folder(self.root / sub, flag)
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)
        self.pending: list[concurrent.futures.Future] = []
        self.written = 0

    def _write(self, train_ids: np.ndarray, name: str) -> None:
        Image.fromarray(TRAIN_ID_TO_LABEL_ID[train_ids], "L").save(self.root / "labelIds" / name)
        Image.fromarray(label_tables.colorize(train_ids), "RGB").save(self.root / "color" / name)

    def __call__(self, preds: np.ndarray, indices: np.ndarray) -> None:
        """preds [b, H, W] uint8 trainIds of source items `indices` [b]."""
        for pred, index in zip(preds, indices, strict=True):
            self.pending.append(self.pool.submit(self._write, pred, self.names[int(index)]))
        self.written += len(indices)
        # Surface write errors early and keep the backlog (and its memory) small.
        while len(self.pending) > 32:
            self.pending.pop(0).result()

    def close(self) -> None:
        for future in self.pending:
            future.result()
        self.pending.clear()
        self.pool.shutdown()


def overlay(image: np.ndarray, colour: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 [H, W, 3] blend: (1 - alpha) * image + alpha * colour."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def write_prediction(out_dir: Path, path: Path, image: np.ndarray, train_ids: np.ndarray) -> None:
    """`<stem>_trainIds.png`, `<stem>_color.png` and `<stem>_overlay.png` of one image."""
    colour = label_tables.colorize(train_ids)
    Image.fromarray(train_ids, "L").save(out_dir / f"{path.stem}_trainIds.png")
    Image.fromarray(colour, "RGB").save(out_dir / f"{path.stem}_color.png")
    Image.fromarray(overlay(image, colour), "RGB").save(out_dir / f"{path.stem}_overlay.png")
