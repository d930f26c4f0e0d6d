"""Segmentation losses of the train step (docs/method.md §3.5-3.6, §3.14). NHWC, float32 maths.

* `cross_entropy`: pixel-weighted CE with ignore, averaged over *all* pixels (mmseg 0.16).
* `feature_distance`: thing-class ImageNet feature distance (DAFormer FD), unscaled; the caller
  multiplies by its lambda.
* `pseudo_labels`: teacher arg-max labels with one batch-level confidence weight.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

IGNORE_INDEX = 255


def at_least_f32(x: jax.Array) -> jax.Array:
    """Losses are computed in float32 even for bfloat16 logits (float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def upsample_logits(logits: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize `[B, h, w, K]` -> `[B, H, W, K]` with align_corners=False semantics.

    Without anti-aliasing `jax.image.resize` samples at pixel centres and clamps at the borders,
    which is exactly PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`.
    """
    batch, h, w, k = logits.shape
    if (h, w) == tuple(size):
        return logits
    return jax.image.resize(logits, (batch, *size, k), method="bilinear", antialias=False)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Mean pixel CE: (1/(B·H·W)) Σ w · 1[y ≠ ignore] · (−log softmax(z)_y).

    logits `[B, h, w, K]` are upsampled to the label size `[B, H, W]` first. Ignored pixels count
    in the denominator (an all-ignore batch gives 0, not NaN). weights `[B, H, W]` or None.
    """
    size = labels.shape[1:]
    log_probs = jax.nn.log_softmax(upsample_logits(at_least_f32(logits), size), axis=-1)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    loss = jnp.where(valid, nll, 0.0)
    if weights is not None:
        loss = loss * weights.astype(loss.dtype)
    return loss.mean()


def downscale_label_ratio(
    labels: jax.Array,
    factor: int,
    min_ratio: float,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Majority label of each factor x factor cell: `[B, H, W]` -> `[B, H//f, W//f]` int32.

    The ignore label competes as an extra class. A cell becomes `ignore_index` when that extra
    class wins or when the winner covers less than `min_ratio` of the cell. Trailing rows or
    columns that do not fill a whole cell are dropped (average pooling's floor).
    """
    batch, height, width = labels.shape
    h, w = height // factor, width // factor
    labels = labels[:, : h * factor, : w * factor].astype(jnp.int32)
    slots = jnp.where(labels == ignore_index, num_classes, labels)
    onehot = (slots[..., None] == jnp.arange(num_classes + 1)).astype(jnp.float32)
    share = onehot.reshape(batch, h, factor, w, factor, num_classes + 1).mean(axis=(2, 4))
    winner = jnp.argmax(share, axis=-1).astype(jnp.int32)
    keep = (winner != num_classes) & (share.max(axis=-1) >= min_ratio)
    return jnp.where(keep, winner, ignore_index)


def _safe_l2(x: jax.Array) -> jax.Array:
    """L2 norm over the last axis whose gradient at x = 0 is 0 (plain sqrt gives NaN there)."""
    sq = jnp.sum(x * x, axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def feature_distance(
    student: jax.Array,
    imnet: jax.Array,
    labels: jax.Array,
    *,
    thing_classes: Sequence[int],
    min_ratio: float = 0.75,
    num_classes: int = 19,
) -> jax.Array:
    """Mean L2 distance `‖F_s − sg(F_I)‖₂` over the thing-class cells of the whole batch.

    student, imnet: `[B, h, w, C]`; labels `[B, H, W]` with H = f·h. A cell is selected when its
    `downscale_label_ratio` label is a thing class. Returns Σ m·d / max(Σ m, 1): 0 with zero
    gradient when nothing is selected (the reference logs NaN there, also with zero gradient).
    """
    _, h, w, _ = student.shape
    factor = labels.shape[1] // h
    if labels.shape[2] // w != factor:
        raise ValueError(f"labels {labels.shape} and features {student.shape} scale differently")
    cells = downscale_label_ratio(labels, factor, min_ratio, num_classes)
    things = jnp.asarray(list(thing_classes), jnp.int32)
    mask = jnp.any(cells[..., None] == things, axis=-1).astype(jnp.float32)
    diff = at_least_f32(student) - at_least_f32(jax.lax.stop_gradient(imnet))
    dist = _safe_l2(diff)
    return jnp.sum(mask * dist) / jnp.maximum(jnp.sum(mask), 1.0)


def pseudo_labels(
    logits: jax.Array,
    size: tuple[int, int],
    *,
    threshold: float = 0.968,
    ignore_top: int = 0,
    ignore_bottom: int = 0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Teacher pseudo-labels from logits `[B, h, w, K]` upsampled to `size` = (H, W).

    Returns labels `[B, H, W]` int32 (arg-max), weights `[B, H, W]` float32 and the quality q, a
    scalar: the fraction of *all* B·H·W pixels whose max probability is >= threshold. The weight
    is q everywhere except the first `ignore_top` and last `ignore_bottom` rows, which are 0
    (DAFormer's pseudo-label crop). All outputs carry no gradient.
    """
    logits = at_least_f32(jax.lax.stop_gradient(logits))
    probs = jax.nn.softmax(upsample_logits(logits, size), axis=-1)
    labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    quality = jnp.mean((probs.max(axis=-1) >= threshold).astype(jnp.float32))
    height = size[0]
    rows = jnp.arange(height)
    keep_rows = (rows >= ignore_top) & (rows < height - ignore_bottom)
    weights = jnp.broadcast_to(quality * keep_rows[None, :, None], labels.shape)
    return labels, weights.astype(jnp.float32), quality
