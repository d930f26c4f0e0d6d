"""Evaluation of a run: restore, sharded inference + confusion matrix, tables, exports.

As the reference evaluates (docs/method.md §6.4-6.6): the network sees the keep-ratio resized image
(Cityscapes 1024x512), `inference.predict_labels` (slide or whole) predicts at the label's
native resolution (2048x1024) and `miou` turns the confusion matrix into the metrics.

Prediction and the confusion matrix run on the devices in one jitted function over a batch
sharded along the mesh axis "data" (so across processes too); padded batch entries
(valid = False) and label 255 count nothing. `Evaluator` keeps that function, so a
training run that evaluates every few thousand steps compiles it once per input shape.

Command line: `lcmsm-eval` (`main`); `lcmsm-predict` lives in `lcmsm_jax/predict.py`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lcmsm_jax import compile_cache, export, inference, miou, sharding
from lcmsm_jax.data import labels as label_tables

HEADS = ("decode", "lcmsm")
WEIGHTS = ("student", "teacher")
DATA_AXIS = sharding.DATA_AXIS

# ----------------------------------------------------------------------------- progress


class Progress:
    """Prints `<what>: done/total images (pct), images/s` at most every `every_s` seconds.

    The rate leaves out the first batch, which includes compilation.
    """

    def __init__(self, what: str, total: int | None, log: Callable[[str], None], every_s=10.0):
        self.what, self.total, self.log, self.every_s = what, total, log, every_s
        self.done = self.first = 0
        self.created = self.start = self.last = time.perf_counter()

    def rate(self) -> float:
        """Images per second after the first batch (over everything if there was one batch)."""
        now = time.perf_counter()
        if self.done > self.first:
            return (self.done - self.first) / max(now - self.start, 1e-9)
        return self.done / max(now - self.created, 1e-9)

    def line(self) -> str:
        done = f"{self.done}/{self.total} images ({100 * self.done / self.total:.0f}%)"
        if not self.total:
            done = f"{self.done} images"
        return f"{self.what}: {done}, {self.rate():.1f} images/s"

    def update(self, n: int) -> None:
        now = time.perf_counter()
        if not self.first:
            self.first, self.start, self.last = n, now, now
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        if now - self.last >= self.every_s:
            self.last = now
            self.log(self.line())

    def finish(self) -> None:
        self.log(self.line())


# ----------------------------------------------------------------------------- evaluator


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
    def from_config(cls, eval_config: ml_collections.ConfigDict, head: str | None = None):
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

    `graphdef` comes from `nnx.split(model, nnx.Param, nnx.BatchStat)`. Every call reuses
    the same jitted functions, so evaluating during training compiles once.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        mesh: Mesh,
        spec: InferenceSpec,
        *,
        class_names: Sequence[str] = label_tables.CITYSCAPES_CLASSES,
        subsets: dict[str, Sequence[int]] | None = None,
        config: ml_collections.ConfigDict | None = None,
    ):
        self.graphdef, self.mesh, self.spec, self.config = graphdef, mesh, spec, config
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
        self._source = None  # config.data.eval, opened on the first `run`

    def _predict_impl(self, params, batch_stats, text_features, images, out_size):
        """images [B, h, w, 3] -> trainIds [B, *out_size] int32."""
        model = nnx.merge(self.graphdef, params, batch_stats)
        head = self.spec.head

        def logits_fn(x: jax.Array) -> jax.Array:
            return model(x, text_features=text_features, heads=(head,), train=False)[head]

        spec = self.spec
        return inference.predict_labels(
            logits_fn, images, out_size, mode=spec.mode, crop=spec.crop, stride=spec.stride
        )

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
        log: Callable[[str], None] | None = print,
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
          log: where progress goes (process 0 only); None = silent.
        Returns:
          `miou.metrics_from_confusion` of the whole split plus "num_images".
        """
        weights = self.put_weights(params, batch_stats, text_features)
        total = jax.device_put(miou.zero_counts(self.num_classes), self.replicated)
        quiet = log is None or jax.process_index() != 0
        progress = Progress("eval", num_images, (lambda _: None) if quiet else log)
        images = 0
        for local in dataset:
            batch = {
                k: jax.make_array_from_process_local_data(self.batch_sharding, local[k])
                for k in ("image", "label", "valid")
            }
            previous = total
            total, pred = self._step(
                *weights, batch, total, with_predictions=on_predictions is not None
            )
            if on_predictions is not None:
                keep = np.asarray(local["valid"], bool)
                on_predictions(process_local_rows(pred)[keep], np.asarray(local["index"])[keep])
            # Wait for the previous batch only: one batch stays in flight, the queue bounded.
            jax.block_until_ready(previous)
            n = int(np.sum(local["valid"])) * jax.process_count()
            images += n
            progress.update(n)
        results = miou.metrics_from_confusion(
            miou.counts_to_numpy(total), self.class_names, self.subsets
        )
        progress.finish()
        results["num_images"] = min(images, num_images) if num_images else images
        return results

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

    def run(
        self,
        params,
        batch_stats,
        text_params,
        text_embeddings: np.ndarray | jax.Array | None,
        *,
        workdir: str | os.PathLike,
        step: int | None,
        weights: str = "student",
        source=None,
        export_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] = print,
    ) -> dict:
        """Evaluate config.data.eval, print the table and write `eval_<tag>.json`.

        The training loop's entry point. `text_params` (the student's params) project the
        raw `text_embeddings` [K, D_text] for the "lcmsm" head; both are ignored for
        "decode". `source` replaces config.data.eval's on-disk split (opened once and kept).
        Returns the results (metrics plus what was evaluated); `results["json"]` is the
        written file (None without labelled pixels or off process 0).
        """
        if self.config is None:
            raise ValueError("Evaluator.run needs the config: build it with make_evaluator")
        log = log if jax.process_index() == 0 else (lambda _: None)
        if source is None:
            if self._source is None:
                self._source = open_eval_source(self.config)
            source = self._source
        features = None
        if self.spec.head == "lcmsm":
            if text_params is None or text_embeddings is None:
                raise ValueError("the lcmsm head needs text_params and text_embeddings")
            features = project_text(self.graphdef, text_params, batch_stats, text_embeddings)
        exporter = None
        if export_dir:
            exporter = export.BenchmarkExporter(
                export_dir, export.benchmark_names(source, len(source))
            )
        try:
            results = self(
                params, batch_stats, features, self._dataset(source),
                num_images=len(source), on_predictions=exporter, log=log,
            )  # fmt: skip
        finally:
            if exporter is not None:
                exporter.close()
        if exporter is not None:
            log(f"wrote {exporter.written} labelId and colour PNGs to {export_dir}")
        return self._report(results, workdir, step, weights, log)

    def _dataset(self, source):
        from lcmsm_jax.data import pipeline

        data = self.config.data
        batch = global_batch_size(data.eval.batch_size, self.mesh)
        return pipeline.eval_dataset(
            source,
            batch_size=batch // jax.process_count(),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            scale=tuple(data.eval.scale),
            num_threads=data.num_threads,
            worker_count=pipeline.worker_count(data.worker_count),
        )

    def _report(self, results: dict, workdir, step, weights: str, log) -> dict:
        """Add what was evaluated; print the table and write the JSON (process 0)."""
        data_eval = self.config.data.eval
        results |= {
            "step": step,
            "weights": weights,
            "head": self.spec.head,
            "inference": dataclasses.asdict(self.spec),
            "dataset": f"{data_eval.dataset}/{data_eval.split}",
        }
        path = None
        if results["num_pixels"] == 0:
            log("no labelled pixels in the evaluation split: no metrics")
        elif jax.process_index() == 0:
            log(miou.format_table(results, self.subsets))
            path = miou.write_results(workdir, results_tag(step, weights, self.spec.head), results)
            log(f"wrote {path}")
        results["json"] = None if path is None else str(path)
        return results


def make_evaluator(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    mesh: Mesh,
    *,
    head: str | None = None,
) -> Evaluator:
    """An `Evaluator` from config.eval (mode, crop, stride, head) and config.data.eval_classes."""
    return Evaluator(
        graphdef,
        mesh,
        InferenceSpec.from_config(config.eval, head),
        subsets=miou.class_subsets(config.data.eval_classes),
        config=config,
    )


def results_tag(step: int | None, weights: str, head: str) -> str:
    """`<step>` or "converted", plus `_teacher` / `_lcmsm` for the non-default choices."""
    tag = "converted" if step is None else str(step)
    tag += "" if weights == "student" else f"_{weights}"
    return tag + ("" if head == "decode" else f"_{head}")


# ----------------------------------------------------------------------------- restoring


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
    from lcmsm_jax import checkpoint, models

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    model = nnx.eval_shape(lambda: models.Segmentor(config.model, rngs=nnx.Rngs(0)))
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
    from lcmsm_jax import text

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


# ----------------------------------------------------------------------------- data


class EvalSource:
    """The first `limit` items of a source (0 = all). Items of an unlabelled source (a test
    split) get an all-ignore label at image size, so they run through the same pipeline and
    count nothing: their predictions can be exported, their metrics are empty."""

    def __init__(self, source, limit: int = 0):
        self.source = source
        self.count = len(source) if limit <= 0 else min(int(limit), len(source))
        self.labelled = getattr(source, "has_labels", True)
        images = getattr(source, "images", None)
        self.images = None if images is None else list(images)[: self.count]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= int(index) < self.count:
            raise IndexError(index)
        example = dict(self.source[int(index)])
        if "label" not in example:
            example["label"] = np.full(example["image"].shape[:2], 255, np.uint8)
        return example


def open_eval_source(config: ml_collections.ConfigDict) -> EvalSource:
    """config.data.eval -> EvalSource; splits without labels (e.g. Cityscapes test) open
    image-only."""
    from lcmsm_jax.data import datasets, sources

    data_eval = config.data.eval
    if data_eval.dataset == "synthetic":
        source = datasets.open_domain(
            data_eval, config.data, labels_wanted=True, seed=config.seed,
            synthetic_domain="target",
        )  # fmt: skip
        return EvalSource(source, data_eval.max_images)
    if not data_eval.root:
        raise ValueError(
            "config.data.eval.root is empty: set it to the dataset folder, e.g. "
            "--config.data.eval.root=/data/cityscapes"
        )
    labelled = data_eval.split in sources.layout(data_eval.dataset).labelled_splits
    source = sources.open_source(
        data_eval.dataset, data_eval.root, data_eval.split, labels=labelled
    )
    return EvalSource(source, data_eval.max_images)


# ----------------------------------------------------------------------------- command line


def _define_eval_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory (training checkpoints or converted/).",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("step", None, "Training step to evaluate (default: the latest).",
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_enum("weights", None, list(WEIGHTS),
                      "student or EMA teacher weights (default: config.eval.weights).",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_enum("head", None, list(HEADS),
                      "decode (DAFormer head) or lcmsm (LC head) (default: config.eval.head).",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_string("export_dir", None,
                        "Also write Cityscapes-benchmark labelId PNGs (labelIds/) and colour "
                        "PNGs (color/) here.", flag_values=fv)  # fmt: skip


def evaluate_run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    step: int | None = None,
    weights: str | None = None,
    head: str | None = None,
    export_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """What `lcmsm-eval` does: restore a run's weights, then `Evaluator.run`.

    Runs on any process and device count (the checkpoint's own does not matter)."""
    sharding.initialize_distributed(config.mesh)  # first: before anything touches a device
    compile_cache.enable(config.get("compile_cache_dir", ""))
    log = log if jax.process_index() == 0 else (lambda _: None)
    weights = weights or config.eval.weights
    head = head or config.eval.head
    graphdef, params, batch_stats, step = load_weights(config, workdir, step=step, weights=weights)
    mesh = sharding.make_mesh(config.mesh.data)
    evaluator = make_evaluator(config, graphdef, mesh, head=head)
    text_params = embeddings = None
    if head == "lcmsm":
        text_params, embeddings = text_inputs(config, workdir, params, step=step, weights=weights)
    source = open_eval_source(config)
    data_eval = config.data.eval
    log(
        f"evaluating {'converted checkpoint' if step is None else f'step {step}'} "
        f"({weights} weights, {head} head, {evaluator.spec.mode}) on "
        f"{data_eval.dataset}/{data_eval.split}: {len(source)} images, batch "
        f"{global_batch_size(data_eval.batch_size, mesh)} over {mesh.shape[DATA_AXIS]} devices"
    )
    return evaluator.run(
        params, batch_stats, text_params, embeddings, workdir=workdir, step=step,
        weights=weights, source=source, export_dir=export_dir, log=log,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`lcmsm-eval --config C.py --workdir DIR [--step N] [--weights ...] [--head ...]
    [--export-dir DIR] [--config.a.b=v ...]`."""
    from lcmsm_jax import config_checks, config_cli

    try:
        fv = config_cli.parse(
            "lcmsm-eval", argv, _define_eval_flags, required=("workdir",),
            description="mIoU of a run's checkpoint on config.data.eval.",
        )  # fmt: skip
        config_checks.check_eval_config(fv.config)
    except config_cli.UsageError as err:
        return config_cli.report_usage("lcmsm-eval", err)
    try:
        evaluate_run(
            fv.config,
            fv.workdir,
            step=fv.step,
            weights=fv.weights,
            head=fv.head,
            export_dir=fv.export_dir,
        )
    except (FileNotFoundError, ValueError) as err:
        # Missing checkpoints or data, a config value out of range: the message names it.
        return config_cli.report_failure("lcmsm-eval", err)
    return 0
