"""ClassMix: paste the pixels of half the source classes onto the target (docs/method.md §3.7).

Label values map to *slots*: class c in 0..K-1 is slot c, and every other value (the ignore
label 255) is slot K. Sets of label values are boolean vectors over the K + 1 slots, which keeps
all shapes static under `jax.jit` (no `jnp.unique`).
"""

import jax
import jax.numpy as jnp


def label_slots(labels: jax.Array, num_classes: int) -> jax.Array:
    """Slot index `[B, H, W]` int32: the class id, or `num_classes` for 255 / any other value."""
    labels = labels.astype(jnp.int32)
    valid = (labels >= 0) & (labels < num_classes)
    return jnp.where(valid, labels, num_classes)


def present_classes(labels: jax.Array, num_classes: int) -> jax.Array:
    """Batch-level set U of label values `[num_classes + 1]` bool (last slot = ignore).

    U is taken over the whole batch, as the reference does, so it can hold classes that a given
    image lacks, and it includes 255 when any pixel is ignored.
    """
    slots = label_slots(labels, num_classes)
    return jnp.any(slots[..., None] == jnp.arange(num_classes + 1), axis=(0, 1, 2))


def sample_classmix_choice(key: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Per image, ceil(|U|/2) values of U drawn uniformly without replacement.

    labels: `[B, H, W]`. Returns `[B, num_classes + 1]` bool. Each image ranks the present slots
    by iid uniform scores and keeps the top k: a uniformly random k-subset of U.
    """
    present = present_classes(labels, num_classes)
    k = (present.sum() + 1) // 2
    batch = labels.shape[0]
    scores = jax.random.uniform(key, (batch, num_classes + 1))
    scores = jnp.where(present, scores, -1.0)  # absent slots rank last
    rank = jnp.argsort(jnp.argsort(-scores, axis=1), axis=1)  # 0 = highest score
    return present & (rank < k)


def classmix_mask(labels: jax.Array, chosen: jax.Array, num_classes: int) -> jax.Array:
    """Mask `[B, H, W]` float32: 1 where the image's label value is one of its chosen values."""
    slots = label_slots(labels, num_classes)
    batch = labels.shape[0]
    flat = jnp.take_along_axis(chosen, slots.reshape(batch, -1), axis=1)
    return flat.reshape(labels.shape).astype(jnp.float32)


def mix(mask: jax.Array, source: jax.Array, target: jax.Array) -> jax.Array:
    """mask * source + (1 - mask) * target with a `[B, H, W]` mask.

    The mask broadcasts over trailing channel dims (images `[B, H, W, 3]`). Float inputs use the
    arithmetic blend in their own dtype; integer inputs (labels) select, so they stay exact
    integers of the input dtype (the mask is binary there).
    """
    extra = source.ndim - mask.ndim
    mask = mask.reshape(mask.shape + (1,) * extra)
    if jnp.issubdtype(source.dtype, jnp.integer) or source.dtype == jnp.bool_:
        return jnp.where(mask != 0, source, target)
    mask = mask.astype(source.dtype)
    return mask * source + (1 - mask) * target
