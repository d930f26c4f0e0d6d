"""Sharded inference and the confusion matrix over a dataset: the `Evaluator`.

As the reference evaluates (docs/method.md §6.4-6.6): the network sees the keep-ratio
resized image (Cityscapes 1024x512), `inference.predict_labels` (slide or whole) predicts at
the label's native resolution (2048x1024) and `miou` turns the confusion matrix into the
metrics. A multi-resolution model (`MultiResSegmentor`, config.model.hrda.enabled) runs
HRDA's inference in each window instead of the single forward (`inference.model_logits_fn`,
docs/method.md §8.7); the windows are still averaged at the input's full resolution.

Prediction and the confusion matrix run on the devices in one jitted function over a batch
sharded along the mesh axis "data" (so across processes too); padded batch entries
(valid = False) and label 255 count nothing. An `Evaluator` keeps that function, so a
training run that evaluates every few thousand steps compiles it once per input shape.
It takes weights, text features and batches; `lcmsm_jax/evaluate.py` maps a config onto it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lcmsm_jax import inference, miou, peers, sharding
from lcmsm_jax.data import labels as label_tables
from lcmsm_jax.data import pipeline
from lcmsm_jax.progress import Progress

HEADS = ("decode", "lcmsm")
DATA_AXIS = sharding.DATA_AXIS


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """How to run the network at test time (config.eval). Sizes are (height, width)."""

    mode: str = "slide"
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (256, 256)
    head: str = "decode"

    def __post_init__(self):
        if self.mode not in inference.MODES:
            raise ValueError(
                f"config.eval.mode must be one of {inference.MODES}, got {self.mode!r}"
            )
        if self.head not in HEADS:
            raise ValueError(f"config.eval.head must be one of {HEADS}, got {self.head!r}")
        for key in ("crop", "stride"):
            value = getattr(self, key)
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"config.eval.{key} must be two positive ints, got {value!r}")

    @classmethod
    def from_config(
        cls, eval_config: ml_collections.ConfigDict, head: str | None = None
    ) -> InferenceSpec:
        return cls(
            mode=eval_config.mode,
            crop=tuple(int(v) for v in eval_config.crop),
            stride=tuple(int(v) for v in eval_config.stride),
            head=head or eval_config.head,
        )


def global_batch_size(requested: int, mesh: Mesh) -> int:
    """`requested` rounded up to a multiple of the data-axis size (shards must be equal)."""
    n = mesh.shape[DATA_AXIS]
    return -(-max(int(requested), 1) // n) * n


def same_size_parts(batch: dict) -> list[dict]:
    """The same-size batches of one evaluation batch (`pipeline.stack_by_size`), in an order
    every process shares: with several processes, each runs one part per size present on
    any process (all padding where it has none), since they step together."""
    parts = batch["parts"] if "parts" in batch else [batch]
    if jax.process_count() == 1:
        return parts
    from jax.experimental import multihost_utils

    rows = len(parts[0]["valid"])
    keys = np.full((rows, 4), -1, np.int64)  # at most one size per row
    keys[: len(parts)] = [pipeline.size_key(_row(part)) for part in parts]
    everywhere = np.asarray(multihost_utils.process_allgather(keys)).reshape(-1, 4)
    mine = {pipeline.size_key(_row(part)): part for part in parts}
    ordered = []
    for key in sorted({tuple(int(v) for v in k) for k in everywhere if k[0] >= 0}):
        if key not in mine:
            h, w, label_h, label_w = key
            row = {"image": np.zeros((h, w, 3), np.float32)}
            if label_h:
                row["label"] = np.zeros((label_h, label_w), np.int32)
            padding = pipeline.padding_like(row)
            mine[key] = {k: np.stack([v] * rows) for k, v in padding.items()}
        ordered.append(mine[key])
    return ordered


def _row(batch: dict) -> dict:
    return {k: v[0] for k, v in batch.items()}


def process_local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in the order of its host-local batch."""
    shards = {}
    for shard in array.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard)
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


def _split_across_processes(x) -> bool:
    return (
        isinstance(x, jax.Array)
        and not x.is_fully_addressable
        and not x.sharding.is_fully_replicated
    )


class Evaluator:
    """Evaluation of a model's weights over a dataset, with one jitted step per input shape.

    `graphdef` comes from `nnx.split(model, nnx.Param, nnx.BatchStat)`; `class_names` give
    the number of classes K (labels >= K, such as 255, are ignored); `subsets` name extra
    means over some classes' IoUs (`miou.class_subsets`). Every call reuses the same jitted
    functions, so evaluating during training compiles once.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        mesh: Mesh,
        spec: InferenceSpec,
        *,
        class_names: Sequence[str] = label_tables.CITYSCAPES_CLASSES,
        subsets: dict[str, Sequence[int]] | None = None,
    ):
        self.graphdef, self.mesh, self.spec = graphdef, mesh, spec
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.subsets = dict(subsets or {})
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
        self._step = jax.jit(
            self._step_impl,
            static_argnames=("with_predictions",),
            out_shardings=((self.replicated, self.replicated), self.batch_sharding),
        )
        self._predict = jax.jit(
            self._predict_impl, static_argnames=("out_size",), out_shardings=self.batch_sharding
        )
        self._gather = jax.jit(lambda tree: tree, out_shardings=self.replicated)
        self._logits = jax.jit(self._logits_impl, out_shardings=self.batch_sharding)
        self._compiled = {}  # multi-process: the step compiled per batch shape

    def _run_step(self, weights, batch, total, with_predictions: bool):
        """`self._step`; with several processes, each new batch shape is compiled first and
        the processes wait for each other before running it (`lcmsm_jax/peers.py`)."""
        if jax.process_count() == 1:
            return self._step(*weights, batch, total, with_predictions=with_predictions)
        key = (batch["image"].shape, batch["label"].shape, with_predictions)
        if key not in self._compiled:
            lowered = self._step.lower(*weights, batch, total, with_predictions=with_predictions)
            self._compiled[key] = peers.compile_and_wait(lowered, "the evaluation step")
        return self._compiled[key](*weights, batch, total)

    def _logits_fn(self, params, batch_stats, text_features) -> inference.LogitsFn:
        """The network of `graphdef` with these weights as a `logits_fn` (single- or
        multi-resolution, `inference.model_logits_fn`)."""
        model = nnx.merge(self.graphdef, params, batch_stats)
        return inference.model_logits_fn(model, self.spec.head, text_features)

    def _logits_impl(self, params, batch_stats, text_features, images):
        """images [B, h, w, 3] -> slide- or whole-image logits [B, h, w, K] float32."""
        spec = self.spec
        return inference.network_logits(
            self._logits_fn(params, batch_stats, text_features), images,
            mode=spec.mode, crop=spec.crop, stride=spec.stride,
        )  # fmt: skip

    def _predict_impl(self, params, batch_stats, text_features, images, out_size):
        """images [B, h, w, 3] -> trainIds [B, *out_size] int32."""
        spec = self.spec
        return inference.predict_labels(
            self._logits_fn(params, batch_stats, text_features), images, out_size,
            mode=spec.mode, crop=spec.crop, stride=spec.stride,
        )  # fmt: skip

    def _step_impl(self, params, batch_stats, text_features, batch, total, *, with_predictions):
        out_size = tuple(batch["label"].shape[1:3])
        pred = self._predict_impl(params, batch_stats, text_features, batch["image"], out_size)
        counts = miou.confusion_matrix(pred, batch["label"], batch["valid"], self.num_classes)
        return miou.add_counts(total, counts), (
            pred.astype(jnp.uint8) if with_predictions else None
        )

    def put_weights(self, params, batch_stats, text_features):
        """Replicate the weights over the mesh (a no-op for arrays already placed so)."""
        tree = (params, batch_stats, text_features)
        if any(_split_across_processes(x) for x in jax.tree.leaves(tree)):
            # Weights split over processes (config.mesh.fsdp) are gathered by one jitted
            # copy: device_put's cross-process reshard of each array hangs on CPU (gloo).
            return self._gather(tree)
        return jax.device_put(tree, self.replicated)

    def __call__(
        self,
        params,
        batch_stats,
        text_features: jax.Array | None,
        dataset: Iterable[dict[str, np.ndarray]],
        *,
        num_images: int | None = None,
        on_predictions: Callable[[np.ndarray, np.ndarray], None] | None = None,
        stream: TextIO | str | None = "stdout",
    ) -> dict:
        """Run over `dataset` (host-local batches of `pipeline.eval_dataset`); return metrics.

        Args:
          params, batch_stats: pure dicts (or nnx.State) of the weights to evaluate.
          text_features: [K, D_head] projected text features for the "lcmsm" head, else None.
          dataset: batches {image [b, h, w, 3], label [b, H, W], valid [b], index [b]}, b =
            this process's share of a global batch divisible by the mesh's data axis.
          num_images: size of the split, for the progress line.
          on_predictions: called per batch with this process's valid rows
            (trainIds [n, H, W] uint8, source indices [n]) (exports).
          stream: where the progress line goes (process 0 only); None = silent.
        Returns:
          `miou.metrics_from_confusion` of the whole split plus "num_images".
        """
        weights = self.put_weights(params, batch_stats, text_features)
        total = jax.device_put(miou.zero_counts(self.num_classes), self.replicated)
        # The first batch's time includes compilation: the rate leaves it out.
        progress = Progress("eval", num_images, stream=stream, skip_first=True, tenths=False)
        images = 0
        for batch_of_sizes in dataset:
            n = 0
            for local in same_size_parts(batch_of_sizes):
                batch = {
                    k: jax.make_array_from_process_local_data(self.batch_sharding, local[k])
                    for k in ("image", "label", "valid")
                }
                previous = total
                total, pred = self._run_step(weights, batch, total, on_predictions is not None)
                if on_predictions is not None:
                    keep = np.asarray(local["valid"], bool)
                    on_predictions(
                        process_local_rows(pred)[keep], np.asarray(local["index"])[keep]
                    )
                # Wait for the previous batch only: one stays in flight, the queue bounded.
                jax.block_until_ready(previous)
                n += int(np.sum(local["valid"])) * jax.process_count()
            images += n
            progress.update(n)
        results = miou.metrics_from_confusion(
            miou.counts_to_numpy(total), self.class_names, self.subsets
        )
        progress.finish()
        results["num_images"] = min(images, num_images) if num_images else images
        return results

    def logits(self, params, batch_stats, text_features, images: np.ndarray) -> np.ndarray:
        """Single-process logits at the network input's size (before the resize to the
        label's): images [B, h, w, 3] -> [B, h, w, K] float32. B as for `predict`."""
        weights = self.put_weights(params, batch_stats, text_features)
        images = jax.device_put(np.asarray(images, np.float32), self.batch_sharding)
        return np.asarray(self._logits(*weights, images))

    def predict(
        self, params, batch_stats, text_features, images: np.ndarray, out_size: tuple[int, int]
    ) -> np.ndarray:
        """Single-process prediction: images [B, h, w, 3] -> trainIds [B, *out_size] uint8.

        B must be a multiple of the mesh's data axis (pad the batch).
        """
        weights = self.put_weights(params, batch_stats, text_features)
        images = jax.device_put(np.asarray(images, np.float32), self.batch_sharding)
        pred = self._predict(*weights, images, out_size=tuple(int(v) for v in out_size))
        return np.asarray(pred).astype(np.uint8)
