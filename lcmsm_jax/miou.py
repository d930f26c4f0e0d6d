"""Confusion matrices and mmseg's segmentation metrics (docs/method.md §6.6).

Per class c over the whole split: I_c = #(pred = c and gt = c), U_c = #pred + #gt - I_c,
gt = 255 excluded; IoU_c = I_c / U_c, NaN when U_c = 0 (a class absent from both), and the
means skip NaN. aAcc = sum I / sum gt; mAcc = nanmean of I_c / #gt_c.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lcmsm_jax import atomic
from lcmsm_jax.data import labels as label_tables

EVAL_CLASSES = ("cityscapes19", "synthia16")

# ----------------------------------------------------------------------------- counting
#
# Counts stay exact without 64-bit JAX types: the per-batch matrix is int32 (a batch has far
# fewer than 2**31 pixels; checked when tracing) and the running total is a pair of int32
# matrices (high, low) with total = high * 2**20 + low and 0 <= low < 2**20, carried after
# every batch. That is exact up to 2**51 pixels per cell; the host turns it into int64.

_LOW_BITS = 20
_MAX_BATCH_PIXELS = 2**31 - 2**_LOW_BITS

Counts = tuple[jax.Array, jax.Array]


def confusion_matrix(
    pred: jax.Array, label: jax.Array, valid: jax.Array, num_classes: int
) -> jax.Array:
    """Per-batch confusion matrix [K, K] int32, rows = ground truth, columns = prediction.

    pred, label: [B, H, W] (label 255 = ignore; any label >= K is ignored);
    valid: [B] bool, False for padding images, which count nothing.
    """
    if pred.size >= _MAX_BATCH_PIXELS:
        raise ValueError(
            f"an evaluation batch of {pred.shape} has too many pixels for int32 counts; "
            "lower config.data.eval.batch_size"
        )
    keep = (label >= 0) & (label < num_classes) & valid[:, None, None]
    cell = jnp.where(keep, label * num_classes + pred, num_classes * num_classes)
    counts = jnp.bincount(cell.ravel(), length=num_classes * num_classes + 1)
    return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def zero_counts(num_classes: int) -> Counts:
    """Empty running total (high, low), each [K, K] int32."""
    zeros = jnp.zeros((num_classes, num_classes), jnp.int32)
    return zeros, zeros


def add_counts(total: Counts, counts: jax.Array) -> Counts:
    """total + counts with the carry from low to high (see the note above)."""
    high, low = total
    low = low + counts
    return high + (low >> _LOW_BITS), low & ((1 << _LOW_BITS) - 1)


def counts_to_numpy(total: Counts) -> np.ndarray:
    """Running total -> [K, K] int64 on the host."""
    high, low = (np.asarray(jax.device_get(x)).astype(np.int64) for x in total)
    return (high << _LOW_BITS) + low


# ----------------------------------------------------------------------------- metrics


def class_subsets(eval_classes: str) -> dict[str, tuple[int, ...]]:
    """Extra means to report: {} for cityscapes19; mIoU16 / mIoU13 for synthia16."""
    if eval_classes == "cityscapes19":
        return {}
    if eval_classes == "synthia16":
        return {
            "mIoU16": label_tables.SYNTHIA16_TRAIN_IDS,
            "mIoU13": label_tables.SYNTHIA13_TRAIN_IDS,
        }
    raise ValueError(
        f"config.data.eval_classes must be one of {EVAL_CLASSES}, got {eval_classes!r}"
    )


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def metrics_from_confusion(
    confusion: np.ndarray,
    class_names: Sequence[str] = label_tables.CITYSCAPES_CLASSES,
    subsets: dict[str, Sequence[int]] | None = None,
) -> dict:
    """mmseg's metrics from a [K, K] confusion matrix (rows gt, columns prediction).

    Returns percentages (x100, unrounded): "mIoU", "aAcc", "mAcc", per-class "IoU" and "Acc"
    (name -> value, NaN for a class with U_c = 0 or no gt pixels), one mean per `subsets`
    entry (over those trainIds' IoUs), "num_pixels" (labelled) and "confusion" (lists).
    """
    conf = np.asarray(confusion, np.float64)
    intersection = np.diag(conf)
    gt = conf.sum(axis=1)
    union = gt + conf.sum(axis=0) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        acc = np.where(gt > 0, intersection / gt, np.nan)
    total = gt.sum()
    results = {
        "mIoU": 100 * _nanmean(iou),
        "aAcc": 100 * float(intersection.sum() / total) if total > 0 else math.nan,
        "mAcc": 100 * _nanmean(acc),
    }
    for name, ids in (subsets or {}).items():
        results[name] = 100 * _nanmean(iou[list(ids)])
    results["IoU"] = {n: 100 * float(v) for n, v in zip(class_names, iou, strict=True)}
    results["Acc"] = {n: 100 * float(v) for n, v in zip(class_names, acc, strict=True)}
    results["num_pixels"] = int(total)
    results["confusion"] = np.asarray(confusion, np.int64).tolist()
    return results


def format_table(results: dict, subsets: dict[str, Sequence[int]] | None = None) -> str:
    """The per-class table and the summary line, values rounded to 2 decimals."""
    names = list(results["IoU"])
    width = max(len(n) for n in names + ["class"])
    fmt = lambda v: "  nan" if v is None or math.isnan(v) else f"{v:5.2f}"  # noqa: E731
    lines = [f"{'class':<{width}}    IoU    Acc", "-" * (width + 15)]
    for index, name in enumerate(names):
        row = f"{name:<{width}}  {fmt(results['IoU'][name])}  {fmt(results['Acc'][name])}"
        # Classes outside a reported subset (SYNTHIA: terrain, truck, train) are marked.
        row += "".join(
            f"  (not in {key})" for key, ids in (subsets or {}).items() if index not in ids
        )
        lines.append(row)
    summary = ["mIoU", *(subsets or {}), "mAcc", "aAcc"]
    lines.append("  ".join(f"{key} {fmt(results[key])}" for key in summary))
    return "\n".join(lines)


def to_json_safe(value):
    """NaN -> None recursively (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    return value


def write_results(workdir: str | os.PathLike, tag: str, results: dict) -> Path:
    """Write `<workdir>/eval_<tag>.json` atomically; returns its path."""
    path = Path(workdir) / f"eval_{tag}.json"
    return atomic.write_text(path, json.dumps(to_json_safe(results), indent=1) + "\n")
