"""Training main: `lcmsm-train --config configs/X.py --workdir runs/X [--config.a.b=v ...]`.

Read top to bottom: mesh, data, model and initial weights, optimiser and state, jit,
restore, loop. The loop logs (console, metrics.jsonl, TensorBoard), saves debug pictures,
evaluates on the target validation split, and checkpoints (async orbax: state + data
iterator positions + config). A non-finite loss stops the run without saving the bad state.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lcmsm_jax import checkpoint, convert, metrics_log, models, optim, sharding, text, visualize
from lcmsm_jax.data import datasets
from lcmsm_jax.uda import step as uda_step


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


def _initial_weights(config: ml_collections.ConfigDict, model: nnx.Module) -> str:
    """Fill `model` from config.train.init (an lcmsm-convert workdir) or
    config.train.pretrained (a PyTorch/safetensors/npz backbone); describe what was used."""
    if config.train.init:
        init = Path(config.train.init)
        target = init / checkpoint.CONVERTED if (init / checkpoint.CONVERTED).is_dir() else init
        checkpoint.restore_model(target, model)
        return f"weights from {target}"
    if config.train.pretrained:
        report = convert.load_torch_state_dict(
            model, convert.read_state_dict(config.train.pretrained)
        )
        filled = {name.split(".")[0] for name, _ in report.loaded}
        return f"{', '.join(sorted(filled))} from {config.train.pretrained} ({report.summary()})"
    return f"random initialisation (seed {config.seed})"


def _next_batch(source_it, target_it, batch_sharding, target_labels: bool) -> dict:
    source, target = next(source_it), next(target_it)
    local = {
        "source_image": source["image"],
        "source_label": source["label"],
        "target_image": target["image"],
    }
    if target_labels:
        local["target_label"] = target["label"]
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}


def _save(manager, state, source_it, target_it, config) -> None:
    step = int(jax.device_get(state["step"]))
    manager.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(
                {"params": state["params"], "batch_stats": state["batch_stats"]}
            ),
            teacher=ocp.args.StandardSave(
                {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]}
            ),
            train=ocp.args.StandardSave(_train_item(state)),
            source_iter=grain.checkpoint.CheckpointSave(source_it),
            target_iter=grain.checkpoint.CheckpointSave(target_it),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        ),
    )


def _train_item(state: dict) -> dict:
    keys = ("step", "opt_state", "imnet_params", "text_embeddings")
    return {k: state[k] for k in keys}


def _restore(manager, state, source_it, target_it) -> dict:
    step = manager.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(
                {"params": abstract["params"], "batch_stats": abstract["batch_stats"]}
            ),
            teacher=ocp.args.StandardRestore(
                {"params": abstract["ema_params"], "batch_stats": abstract["ema_batch_stats"]}
            ),
            train=ocp.args.StandardRestore(_train_item(abstract)),
            source_iter=grain.checkpoint.CheckpointRestore(source_it),
            target_iter=grain.checkpoint.CheckpointRestore(target_it),
        ),
    )
    return {
        **restored["train"],
        "params": restored["model"]["params"],
        "batch_stats": restored["model"]["batch_stats"],
        "ema_params": restored["teacher"]["params"],
        "ema_batch_stats": restored["teacher"]["batch_stats"],
    }


def _check_finite(metrics: dict, step: int, manager) -> None:
    bad = {k: v for k, v in metrics.items() if k.startswith("loss/") and not math.isfinite(v)}
    if bad:
        last = manager.latest_step()
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {bad}. Stopped without saving; the last good "
            f"checkpoint is {'step ' + str(last) if last is not None else 'none'}."
        )


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Run (or resume) training; returns the last logged metrics and evaluation results."""
    sharding.initialize_distributed()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *a, **k: None)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    log = metrics_log.MetricsLog(workdir)

    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(config.mesh.data)
    replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    sharding.check_batch_size(config.data.batch_size, mesh, "config.data.batch_size")
    say(f"mesh: {mesh.devices.size} devices ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)")  # fmt: skip

    # ------------------------------------------------------------------ data
    target_labels = bool(config.uda.target_supervised)
    source_it, target_it = datasets.train_iterators(config, target_labels=target_labels)
    class_names = datasets.class_names(config)

    # ------------------------------------------------------------------ model, weights, text
    model = models.Segmentor(config.model, rngs=nnx.Rngs(config.seed))
    say(f"initial weights: {_initial_weights(config, model)}")
    text_embeddings, text_description = text.resolve(
        config.text.embeddings, class_names, config.model.text_dim
    )
    say(f"text embeddings: {text_description}")
    graphdef, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    imnet_graphdef = nnx.split(model.backbone)[0]

    # ------------------------------------------------------------------ optimiser and state
    tx, schedule = optim.make_optimizer(config.optim, params.to_pure_dict(), config.train.steps)
    state = jax.device_put(uda_step.init_state(model, tx, text_embeddings), replicated)
    del model, params

    # ------------------------------------------------------------------ jit
    step_fn = uda_step.make_train_step(
        config, graphdef, imnet_graphdef, tx, schedule, with_images=config.train.image_every > 0
    )
    train_step = jax.jit(
        step_fn,
        in_shardings=(replicated, batch_sharding, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    evaluator = None
    if config.train.eval_every >= 0:  # -1 disables evaluation
        from lcmsm_jax import evaluate

        evaluator = evaluate.make_evaluator(config, graphdef, mesh)

    # ------------------------------------------------------------------ restore
    manager = checkpoint.run_manager(workdir, max_to_keep=config.train.keep_checkpoints)
    if manager.latest_step() is not None:
        state = jax.device_put(_restore(manager, state, source_it, target_it), replicated)
        say(f"resumed from {manager.directory / str(manager.latest_step())}")
    start = int(jax.device_get(state["step"]))

    # ------------------------------------------------------------------ loop
    rng = jax.random.key(config.seed)
    steps = config.train.steps
    progress = metrics_log.Progress(steps, start, 2 * config.data.batch_size)
    last, results = {}, {}
    # stop_at ends this session early (time-limited jobs); resuming continues to `steps`.
    end = min(steps, config.train.stop_at) if config.train.stop_at > 0 else steps
    for done in range(start + 1, end + 1):  # `done` = steps completed after this one
        batch = _next_batch(source_it, target_it, batch_sharding, target_labels)
        state, metrics = train_step(state, batch, rng)
        images = metrics.pop("images", None)
        at = functools.partial(_due, done)
        if at(config.train.log_every) or done in (steps, end) or at(config.train.checkpoint_every):
            last = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _check_finite(last, done, manager)
            say(progress.line(done, last), flush=True)
            log.write(done, last, prefix="train/")
        if images is not None and at(config.train.image_every):
            _save_panel(workdir, done, batch, jax.device_get(images), is_main)
        if evaluator is not None and (at(config.train.eval_every) or done == steps):
            results = _evaluate(evaluator, state, config, workdir, done)
            log.write(done, {"mIoU": results["mIoU"]}, prefix="eval/")
        if at(config.train.checkpoint_every) or done in (steps, end):
            _save(manager, state, source_it, target_it, config)
    manager.wait_until_finished()
    manager.close()
    log.close()
    return {"metrics": last, "eval": results, "step": end}


def _evaluate(evaluator, state: dict, config, workdir: Path, step: int) -> dict:
    """Evaluate the student (or the teacher, config.eval.weights) with the shared evaluator."""
    teacher = config.eval.weights == "teacher"
    return evaluator.run(
        state["ema_params"] if teacher else state["params"],
        state["ema_batch_stats"] if teacher else state["batch_stats"],
        state["params"],  # the text projection is the student's in both cases
        state["text_embeddings"],
        workdir=workdir,
        step=step,
        weights=config.eval.weights,
    )


def _due(done: int, every: int) -> bool:
    return every > 0 and done % every == 0


def _save_panel(workdir: Path, step: int, batch: dict, images: dict, is_main: bool) -> None:
    if not is_main:
        return
    host = {k: np.asarray(jax.device_get(v)) for k, v in batch.items()}
    panel = visualize.debug_panel(host, images, images.get("mix_prediction"))
    visualize.save_png(workdir / "images" / f"step_{step:07d}.png", panel)


def main(argv: list[str] | None = None) -> int:
    """`lcmsm-train --config C.py --workdir DIR [--config.a.b=v ...]`."""
    from absl import flags

    from lcmsm_jax import config_cli

    def define(fv: flags.FlagValues) -> None:
        flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, pictures).",
                            flag_values=fv)  # fmt: skip

    try:
        fv = config_cli.parse("lcmsm-train", argv, define, required=("workdir",))
    except config_cli.UsageError as err:
        print(err)
        return 2
    try:
        result = train(fv.config, fv.workdir)
    except NonFiniteLossError as err:
        print(f"lcmsm-train: {err}")
        return 1
    if result["eval"]:
        print(f"final mIoU {result['eval']['mIoU']:.2f} at step {result['step']}")
    if fv.config.train.compare_with and result["step"] == fv.config.train.steps:
        from lcmsm_jax import ladder

        try:
            ladder.compare(fv.config, fv.workdir, result["eval"] or None)
        except NonFiniteLossError as err:
            print(f"lcmsm-train: comparison run: {err}")
            return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
