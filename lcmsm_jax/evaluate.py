"""`lcmsm-eval`: mIoU of a run's weights on config.data.eval, its table, its JSON, exports.

`make_evaluator` maps a config onto an `Evaluator` (`lcmsm_jax/evaluator.py`: the sharded
inference and confusion matrix); its `run` evaluates config.data.eval
(`lcmsm_jax/data/eval_source.py`), prints the per-class table and writes
`<workdir>/eval_<tag>.json`. A multi-resolution model (config.model.hrda.enabled) is
evaluated with HRDA's inference in each window (docs/method.md §8.7). The training loop
evaluates through it every config.train.eval_every steps; `lcmsm-eval` (`main`) restores a
run's weights (`lcmsm_jax/restore.py`) and does the same. `lcmsm-predict` lives in
`lcmsm_jax/predict.py`.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from lcmsm_jax import atomic, compile_cache, export, miou, restore, sharding
from lcmsm_jax.data import eval_source
from lcmsm_jax.evaluator import DATA_AXIS, HEADS, Evaluator, InferenceSpec, global_batch_size
from lcmsm_jax.evaluator import process_local_rows as process_local_rows  # for train.py
from lcmsm_jax.models import hrda
from lcmsm_jax.progress import say
from lcmsm_jax.restore import WEIGHTS
from lcmsm_jax.restore import load_weights as load_weights  # for scripts and tests


class SplitEvaluator(Evaluator):
    """An `Evaluator` of config.data.eval that prints the table and writes the JSON."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        graphdef: nnx.GraphDef,
        mesh: Mesh,
        spec: InferenceSpec,
        *,
        subsets: dict[str, tuple[int, ...]] | None = None,
    ):
        super().__init__(graphdef, mesh, spec, subsets=subsets)
        self.config = config
        self._source = None  # config.data.eval, opened on the first evaluation

    def run(
        self,
        params,
        batch_stats,
        text_params,
        text_embeddings,
        *,
        workdir: str | os.PathLike,
        step: int | None,
        weights: str = "student",
        source=None,
        export_dir: str | os.PathLike | None = None,
    ) -> dict:
        """Evaluate config.data.eval, print the table and write `eval_<tag>.json`.

        The training loop's entry point. `text_params` (the student's params) project the
        raw `text_embeddings` [K, D_text] for the "lcmsm" head; both are ignored for
        "decode". Returns what `evaluate_split` returns.
        """
        features = None
        if self.spec.head == "lcmsm":
            if text_params is None or text_embeddings is None:
                raise ValueError("the lcmsm head needs text_params and text_embeddings")
            features = restore.project_text(
                self.graphdef, text_params, batch_stats, text_embeddings
            )
        return self.evaluate_split(
            params, batch_stats, features, workdir=workdir, step=step, weights=weights,
            source=source, export_dir=export_dir,
        )  # fmt: skip

    def evaluate_split(
        self,
        params,
        batch_stats,
        text_features,
        *,
        workdir: str | os.PathLike,
        step: int | None,
        weights: str,
        source=None,
        export_dir: str | os.PathLike | None = None,
    ) -> dict:
        """Evaluate config.data.eval (or `source`, opened once and kept otherwise) with
        `text_features` [K, D_head] (None for "decode"); also export the predictions as
        benchmark PNGs to `export_dir`. Returns the metrics plus what was evaluated;
        `results["json"]` is the written file (None without labelled pixels or off
        process 0)."""
        if source is None:
            if self._source is None:
                self._source = eval_source.open_eval_source(self.config)
            source = self._source
        exporter = None
        if export_dir:
            exporter = export.BenchmarkExporter(
                export_dir, export.benchmark_names(source, len(source))
            )
        batch = global_batch_size(self.config.data.eval.batch_size, self.mesh)
        try:
            results = self(
                params, batch_stats, text_features,
                eval_source.eval_batches(self.config, source, batch),
                num_images=len(source), on_predictions=exporter,
            )  # fmt: skip
        finally:
            if exporter is not None:
                exporter.close()
        if exporter is not None:
            say(f"wrote {exporter.written} labelId and colour PNGs to {export_dir}")
        return self._report(results, workdir, step, weights)

    def _report(self, results: dict, workdir, step, weights: str) -> dict:
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
            say("no labelled pixels in the evaluation split: no metrics")
        elif jax.process_index() == 0:
            say(miou.format_table(results, self.subsets))
            path = miou.write_results(workdir, results_tag(step, weights, self.spec.head), results)
            say(f"wrote {path}")
        results["json"] = None if path is None else str(path)
        return results


def make_evaluator(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    mesh: Mesh,
    *,
    head: str | None = None,
) -> SplitEvaluator:
    """The evaluator of config.data.eval with config.eval's inference (mode, crop, stride,
    head unless `head`) and config.data.eval_classes' extra means."""
    return SplitEvaluator(
        config,
        graphdef,
        mesh,
        InferenceSpec.from_config(config.eval, head),
        subsets=miou.class_subsets(config.data.eval_classes),
    )


def results_tag(step: int | None, weights: str, head: str) -> str:
    """`<step>` or "converted", plus `_teacher` / `_lcmsm` for the non-default choices."""
    tag = "converted" if step is None else str(step)
    tag += "" if weights == "student" else f"_{weights}"
    return tag + ("" if head == "decode" else f"_{head}")


# ----------------------------------------------------------------------------- command line


def define_weight_flags(fv) -> None:
    """--workdir, --step, --weights, --head: which weights of which run, through which head
    (`lcmsm-eval` and `lcmsm-predict`)."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory (training checkpoints or converted/).",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("step", None, "Training step (default: the latest).", flag_values=fv)
    flags.DEFINE_enum("weights", None, list(WEIGHTS),
                      "student or EMA teacher weights (default: config.eval.weights).",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_enum("head", None, list(HEADS),
                      "decode (DAFormer head) or lcmsm (LC head) (default: config.eval.head).",
                      flag_values=fv)  # fmt: skip


def _define_eval_flags(fv) -> None:
    from absl import flags

    define_weight_flags(fv)
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
) -> dict:
    """What `lcmsm-eval` does: restore a run's weights, then evaluate config.data.eval.

    Runs on any process and device count (the checkpoint's own does not matter)."""
    sharding.initialize_distributed(config.mesh)  # first: before anything touches a device
    compile_cache.enable(config.get("compile_cache_dir", ""))
    loaded = restore.load_for_inference(config, workdir, step=step, weights=weights, head=head)
    mesh = sharding.make_mesh(config.mesh.data)
    evaluator = make_evaluator(config, loaded.graphdef, mesh, head=loaded.head)
    source = eval_source.open_eval_source(config)
    data_eval = config.data.eval
    mode = evaluator.spec.mode + (", multi-resolution" if hrda.is_enabled(config.model) else "")
    say(
        f"evaluating {'converted checkpoint' if loaded.step is None else f'step {loaded.step}'} "
        f"({loaded.weights} weights, {loaded.head} head, {mode}) on "
        f"{data_eval.dataset}/{data_eval.split}: {len(source)} images, batch "
        f"{global_batch_size(data_eval.batch_size, mesh)} over {mesh.shape[DATA_AXIS]} devices"
    )
    return evaluator.evaluate_split(
        loaded.params, loaded.batch_stats, loaded.text_features, workdir=workdir, step=loaded.step,
        weights=loaded.weights, source=source, export_dir=export_dir,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`lcmsm-eval --config C.py --workdir DIR [--step N] [--weights ...] [--head ...]
    [--export-dir DIR] [--config.a.b=v ...]`."""
    from lcmsm_jax import config_checks, config_cli

    try:
        fv = config_cli.parse(
            "lcmsm-eval", argv, _define_eval_flags, required=("workdir",),
            description="mIoU of a run's checkpoint on config.data.eval.",
            examples=[
                "lcmsm-eval --config configs/gta2cs_lcmsm.py --workdir runs/gta2cs "
                "--config.data.eval.root=/data/cityscapes",
                "lcmsm-eval --config configs/gta2cs_lcmsm.py --workdir runs/gta2cs "
                "--config.data.eval.root=/data/cityscapes --config.data.eval.split=test "
                "--export-dir submit",
            ],
        )  # fmt: skip
        config_checks.check_eval_config(fv.config)
    except config_cli.UsageError as err:
        return config_cli.report_usage("lcmsm-eval", err)
    try:
        if fv.export_dir:  # named before any weights are read
            atomic.check_output_folder(fv.export_dir, "--export-dir")
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
