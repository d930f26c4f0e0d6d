"""Synthetic training batches of a given size: what the benchmarks feed every model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Classes of the synthetic label maps: road, sidewalk, building, vegetation, sky, person,
# car (person and car are "thing" classes, so the feature distance has cells to work on).
SYNTHETIC_CLASSES = (0, 1, 2, 8, 10, 11, 13)


def synthetic_labels(batch: int, size: Sequence[int], seed: int = 0) -> np.ndarray:
    """[B, H, W] int32 label maps of 8 x 8 blocks drawn from `SYNTHETIC_CLASSES`."""
    rng = np.random.default_rng(seed)
    height, width = size
    cells = rng.choice(np.asarray(SYNTHETIC_CLASSES, np.int32), (batch, 8, 8))
    rows, cols = math.ceil(height / 8), math.ceil(width / 8)
    return np.repeat(np.repeat(cells, rows, axis=1), cols, axis=2)[:, :height, :width]


def synthetic_batch(batch: int, size: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """A training batch: normalised random source/target images [B, H, W, 3] float32 and
    source labels [B, H, W] int32."""
    rng = np.random.default_rng(seed)
    shape = (batch, *size, 3)
    return {
        "source_image": rng.standard_normal(shape, np.float32),
        "source_label": synthetic_labels(batch, size, seed),
        "target_image": rng.standard_normal(shape, np.float32),
    }
