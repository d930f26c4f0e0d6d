"""Rare-class sampling (RCS, docs/method.md §5.5): class statistics and the class-balanced sampler.

Statistics are per-image trainId pixel counts at native resolution, `[N, C]` int64 (ignore not
counted). With class frequencies f_c = N_c / sum N over the classes that occur, a class is
drawn with P(c) = softmax((1 - f_c) / T), then an image uniformly among those with more than
`min_pixels` pixels of c.
"""

import dataclasses

import numpy as np

from lcmsm_jax.data import manifest as manifest_lib
from lcmsm_jax.data.labels import CITYSCAPES_CLASSES, NUM_CLASSES


def class_pixel_counts(train_ids: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixels per class `[num_classes]` int64 of a trainId map `[H, W]` (255 not counted)."""
    flat = np.asarray(train_ids).ravel()
    return np.bincount(flat, minlength=256)[:num_classes].astype(np.int64)


def compute_class_counts(source, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """`[len(source), num_classes]` counts by reading every label of a source (slow on
    full datasets: `lcmsm-prepare` computes the same once and `load_class_counts` reads it)."""
    rows = [class_pixel_counts(source.read_label(i), num_classes) for i in range(len(source))]
    return np.stack(rows)


def class_probabilities(
    counts: np.ndarray, temperature: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Classes that occur `[K]` and their sampling probabilities `[K]` (float64).

    counts: `[N, C]` per-image pixel counts.
    """
    totals = np.asarray(counts, np.float64).sum(axis=0)
    classes = np.flatnonzero(totals > 0)
    freq = totals[classes] / totals[classes].sum()
    logits = (1.0 - freq) / temperature
    probs = np.exp(logits - logits.max())
    return classes, probs / probs.sum()


@dataclasses.dataclass(frozen=True)
class RareClassSampler:
    """Draws (class, image index) pairs; `candidates[k]` are the images for `classes[k]`."""

    classes: np.ndarray  # [K] trainIds
    probs: np.ndarray  # [K]
    candidates: tuple[np.ndarray, ...]  # K arrays of image indices

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        k = int(rng.choice(len(self.classes), p=self.probs))
        images = self.candidates[k]
        return int(self.classes[k]), int(images[rng.integers(len(images))])


def make_sampler(
    counts: np.ndarray, temperature: float = 0.01, min_pixels: int = 3000
) -> RareClassSampler:
    """Sampler from per-image counts `[N, C]`; every occurring class needs a candidate."""
    counts = np.asarray(counts)
    classes, probs = class_probabilities(counts, temperature)
    candidates = tuple(np.flatnonzero(counts[:, c] > min_pixels) for c in classes)
    empty = [int(c) for c, cand in zip(classes, candidates, strict=True) if len(cand) == 0]
    if empty:
        names = ", ".join(f"{CITYSCAPES_CLASSES[c]} ({c})" for c in empty)
        raise ValueError(
            f"rare-class sampling: no image has more than {min_pixels} pixels of {names}; "
            "lower the minimum pixel count (rcs min_pixels) or check the class statistics"
        )
    return RareClassSampler(classes, probs, candidates)


def load_class_counts(root: str, split: str, source) -> np.ndarray:
    """Counts `[len(source), C]` from the statistics `lcmsm-prepare` wrote into `root`,
    in the source's order (matched by label file name)."""
    stats = manifest_lib.load_stats(root)
    if split not in stats["splits"]:
        raise manifest_lib.ManifestError(
            f"{root}: no class statistics for split {split!r} (have {sorted(stats['splits'])}); "
            "run lcmsm-prepare again"
        )
    entry = stats["splits"][split]
    by_label = dict(zip(entry["labels"], entry["class_pixels"], strict=True))
    missing = [f for f in source.labels if f not in by_label]
    if missing:
        raise manifest_lib.ManifestError(
            f"{len(missing)} label files of {source!r} have no class statistics (first: "
            f"{missing[0]}); the dataset changed since lcmsm-prepare ran, run it again"
        )
    return np.asarray([by_label[f] for f in source.labels], np.int64)
