"""A run's weights ready for inference: restored, with the LC head's text features.

`load_for_inference` is what `lcmsm-eval`, `lcmsm-predict` and the ladder's prediction
pictures start from: the student or EMA-teacher weights of a training run (or of an
`lcmsm-convert` result) and, for the "lcmsm" head, config.text.embeddings projected by the
student's text projection (docs/method.md §2.5).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lcmsm_jax import models, text
from lcmsm_jax.data import labels as label_tables

WEIGHTS = ("student", "teacher")


def load_weights(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    step: int | None = None,
    weights: str = "student",
) -> tuple[nnx.GraphDef, dict, dict, int | None]:
    """(graphdef, params, batch_stats, step) from a run directory (training or converted).

    The model is built abstractly (no random initialisation, which costs many small
    compilations) and filled by `checkpoint.restore_weights`; step is None when converted.
    """
    from lcmsm_jax import checkpoint  # orbax: imported when weights are read, not for --help

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    model = nnx.eval_shape(lambda: models.build_segmentor(config.model, rngs=nnx.Rngs(0)))
    restored_step = checkpoint.restore_weights(workdir, model, step=step, weights=weights)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, params.to_pure_dict(), batch_stats.to_pure_dict(), restored_step


def project_text(graphdef: nnx.GraphDef, params, batch_stats, embeddings) -> jax.Array:
    """Raw text embeddings [K, D_text] -> the LC head's text features [K, D_head]."""
    model = nnx.merge(graphdef, params, batch_stats)
    return model.project_text(jnp.asarray(embeddings, jnp.float32))


def text_inputs(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    params: dict,
    *,
    step: int | None,
    weights: str,
) -> tuple[dict, np.ndarray]:
    """(params holding the text projection, raw embeddings [K, D_text]) for the LC head.

    The embeddings are config.text.embeddings. The projection is the student's: the
    teacher has no copy of its own (docs/method.md §2.5, §7.6), so for teacher weights the
    student of the same step is restored; `params` (the student's) serve otherwise.
    """
    names = label_tables.CITYSCAPES_CLASSES
    if config.model.num_classes != len(names):
        raise ValueError(
            f"config.model.num_classes={config.model.num_classes}: the LC head is evaluated "
            f"with the {len(names)} Cityscapes class names"
        )
    embeddings, _ = text.resolve(config.text.embeddings, names, config.model.text_dim)
    if weights != "student":
        params = load_weights(config, workdir, step=step)[1]
    return params, embeddings


@dataclasses.dataclass(frozen=True)
class Restored:
    """What inference needs of a run: the weights (pure dicts, on the host) and, for the
    "lcmsm" head, the projected text features [K, D_head] (None for "decode")."""

    graphdef: nnx.GraphDef
    params: dict
    batch_stats: dict
    step: int | None  # None for a converted checkpoint
    weights: str
    head: str
    text_features: jax.Array | None


def load_for_inference(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    step: int | None = None,
    weights: str | None = None,
    head: str | None = None,
) -> Restored:
    """Restore `weights` (default config.eval.weights) of `step` (default the latest) from
    `workdir`; for `head` "lcmsm" (default config.eval.head) also project the text."""
    weights = weights or config.eval.weights
    head = head or config.eval.head
    graphdef, params, batch_stats, step = load_weights(config, workdir, step=step, weights=weights)
    features = None
    if head == "lcmsm":
        text_params, embeddings = text_inputs(config, workdir, params, step=step, weights=weights)
        features = project_text(graphdef, text_params, batch_stats, embeddings)
    return Restored(graphdef, params, batch_stats, step, weights, head, features)
