"""Training main: `lcmsm-train --config configs/X.py --workdir runs/X [--config.a.b=v ...]`.

Read top to bottom (`_run`): mesh, data, model and initial weights, optimiser and state,
jit, restore, loop. The loop logs (console, metrics.jsonl, TensorBoard), saves debug
pictures, evaluates on the target validation split, and checkpoints (async orbax: state +
data iterator positions + config).

Nothing is lost on any way out (the guards are in `lcmsm_jax/guards.py`, saving, restoring
and the checks before resuming in `lcmsm_jax/run_state.py`):
  * every exit (return, error, signal) waits for the checkpoint being written in the
    background and closes the checkpoint manager;
  * SIGTERM / SIGUSR1 / SIGINT (a scheduler's notice, Ctrl-C) finish the current step,
    checkpoint it and stop with exit status 0 (`Preempted`); a repeated notice is ignored,
    Ctrl-C after one stops at once. In a multi-process run JAX's preemption service picks a
    step that every process reaches, and the processes wait for each other after compiling
    (config.mesh.peer_timeout) so that none reaches a collective minutes before another;
  * a non-finite loss or training state stops the run before it is saved, naming the step,
    its batch and the last good checkpoint (all saved states are checked finite);
  * before the first compile, the workdir and checkpoint folder must be writable with room
    for one checkpoint; a failed save is reported once and its unfinished folder removed
    (`lcmsm_jax/storage.py`);
  * resuming compares config.json before anything is written: another model is refused, other
    changes are reported; an unreadable newest checkpoint is renamed `<step>.corrupt` and the
    one before it used; records logged after the restored step are dropped from
    metrics.jsonl (and hidden in TensorBoard), so a resumed run logs as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from lcmsm_jax import (
    atomic,
    checkpoint,
    compile_cache,
    config_cli,
    convert,
    metrics_log,
    models,
    optim,
    peers,
    progress,
    run_state,
    sharding,
    storage,
    text,
    visualize,
    workdir_lock,
)
from lcmsm_jax.data import datasets
from lcmsm_jax.guards import (
    EvaluationFailed,
    LossWatch,
    NonFiniteLossError,
    Preempted,
    StopSignals,
    check_state,
)
from lcmsm_jax.progress import say
from lcmsm_jax.uda import step as uda_step


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


def _next_batch(source_it, target_it, batch_sharding, target_labels: bool) -> tuple[dict, dict]:
    """The next global batch, and this process's item indices per domain (error messages)."""
    source, target = next(source_it), next(target_it)
    local = {
        "source_image": source["image"],
        "source_label": source["label"],
        "target_image": target["image"],
    }
    if target_labels:
        local["target_label"] = target["label"]
    if "target_valid" in target:  # pseudo-label margins (data.target.pseudo_margins)
        local["target_valid"] = target["target_valid"]
    batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}
    return batch, {"source": np.asarray(source["index"]), "target": np.asarray(target["index"])}


def _batch_names(config: ml_collections.ConfigDict, items: dict, target_labels: bool) -> str:
    """This process's share of a batch: file paths where the source has files, else item
    indices. Only called once a step has failed, when reopening the sources is affordable."""
    parts = []
    for domain, indices in items.items():
        try:
            source = datasets.open_domain(
                config.data[domain], config.data, seed=config.seed, synthetic_domain=domain,
                labels_wanted=domain == "source" or target_labels,  # the training index space
            )  # fmt: skip
        except Exception:  # the indices below still identify the images
            source = None
        files, root = getattr(source, "images", None), getattr(source, "root", "")
        names = [os.path.join(root, files[i]) if files else f"item {i}" for i in indices]
        parts.append(f"{domain} ({config.data[domain].dataset}) {', '.join(names)}")
    return "; ".join(parts)


def _check_train_keys(config: ml_collections.ConfigDict) -> None:
    """The train.* values this module relies on (the command line checks them as well)."""
    keep = config.train.keep_checkpoints
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise config_cli.UsageError(
            f"config.train.keep_checkpoints = {keep!r}: expected a positive integer (the "
            "number of newest checkpoints kept; 0 would delete them all, the final one "
            "included); pass --config.train.keep_checkpoints=1"
        )


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Run (or resume) training; returns the last logged metrics and evaluation results.

    Raises Preempted (after checkpointing) on SIGTERM/SIGUSR1/SIGINT, NonFiniteLossError when the
    loss or the state diverges, config_cli.UsageError when the workdir holds a run of
    another model, checkpoint.CheckpointError when none of the run's checkpoints reads.
    """
    sharding.initialize_distributed(config.mesh)  # first: before anything touches a device
    # From here to the last save a signal is noted and acted on at the next step boundary.
    with StopSignals.installed() as stop:
        return _train(config, workdir, stop)


def _train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, stop) -> dict:
    compile_cache.enable(config.get("compile_cache_dir", ""))
    _check_train_keys(config)
    workdir = Path(workdir).absolute()
    changes = run_state.check_resume_config(config, workdir)  # before anything is written
    storage.check_writable(workdir, "--workdir")  # creates it
    # One run per workdir (process 0 holds it for the processes of a multi-process run).
    lock = workdir_lock.hold(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        run_state.report_unfinished_saves(workdir)
        storage.check_writable(workdir / checkpoint.RUN_CHECKPOINTS, "the checkpoint folder")
        with storage.quiet_background_errors():
            manager = checkpoint.run_manager(
                workdir, max_to_keep=config.train.keep_checkpoints, cleanup_tmp=True
            )
            # Every way out (return, exception, signal) waits for the save in flight and
            # closes the manager: leaving earlier would drop that checkpoint.
            try:
                result = _run(config, workdir, manager, changes, stop)
            except BaseException:
                with contextlib.suppress(Exception):  # the first error is the one reported
                    manager.close()
                raise
            with storage.saving(Path(manager.directory), result["step"]):
                manager.close()
            return result


def _jit_train_step(config, graphdef, imnet_graphdef, tx, schedule, state_sharding, batch_sharding):
    """`train_step(state, batch, rng) -> (state, metrics)`, jitted; `state` is donated and
    keeps `state_sharding` (a tree of shardings: replicated, or split with config.mesh.fsdp)."""
    step_fn = uda_step.make_train_step(
        config, graphdef, imnet_graphdef, tx, schedule, with_images=config.train.image_every > 0
    )
    replicated = sharding.replicated(batch_sharding.mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def _run(
    config: ml_collections.ConfigDict, workdir: Path, manager, changes: list, stop: StopSignals
) -> dict:
    """Set up and run the loop with an open checkpoint manager (see the module docstring)."""
    is_main = jax.process_index() == 0
    if manager.all_steps():  # refused before any work when it cannot resume
        run_state.check_process_count(Path(manager.directory), max(manager.all_steps()))

    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(config.mesh.data)
    batch_sharding = sharding.batch_sharded(mesh)
    sharding.check_batch_size(config.data.batch_size, mesh, "config.data.batch_size")
    say(f"mesh: {mesh.devices.size} devices ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)"
        f"{', parameters sharded (config.mesh.fsdp)' if config.mesh.fsdp else ''}")  # fmt: skip
    say(f"versions: {progress.versions()}")

    # ------------------------------------------------------------------ data
    target_labels = bool(config.uda.target_supervised)
    source_it, target_it = datasets.train_iterators(config, target_labels=target_labels)
    class_names = datasets.class_names(config)

    # ------------------------------------------------------------------ model, weights, text
    resuming = bool(manager.all_steps())  # then the weights come from the checkpoint
    model = models.build_segmentor(config.model, rngs=nnx.Rngs(config.seed))
    if not resuming:
        say(f"initial weights: {_initial_weights(config, model)}")
    text_embeddings, text_description = text.resolve(
        config.text.embeddings, class_names, config.model.text_dim
    )
    say(f"text embeddings: {text_description}")
    graphdef, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    imnet_graphdef = nnx.split(model.backbone)[0]

    # ------------------------------------------------------------------ optimiser and state
    tx, schedule = optim.make_optimizer(config.optim, params.to_pure_dict(), config.train.steps)
    state = uda_step.init_state(model, tx, text_embeddings)
    state_sharding = sharding.state_shardings(
        state, mesh, config.mesh.fsdp, stacked=models.is_stacked
    )
    state = jax.device_put(state, state_sharding)
    del model, params
    directory = Path(manager.directory)
    storage.check_room(directory, storage.checkpoint_bytes(state))  # before compiling

    # ------------------------------------------------------------------ jit
    train_step = _jit_train_step(
        config, graphdef, imnet_graphdef, tx, schedule, state_sharding, batch_sharding
    )
    evaluator = None
    if config.train.eval_every >= 0:  # -1 disables evaluation
        from lcmsm_jax import evaluate

        evaluator = evaluate.make_evaluator(config, graphdef, mesh)

    # ------------------------------------------------------------------ restore
    found = run_state.resume(manager, state, source_it, target_it, changes) if resuming else None
    if found is not None:
        state = jax.device_put(found[0], state_sharding)
        say(f"initial weights: resumed from {directory / str(found[1])}")
    start = int(jax.device_get(state["step"]))
    if changes:
        accepted = run_state.format_changes(changes)
        say(f"config changes since the last session (accepted): {accepted}")
    if is_main:
        atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    log = metrics_log.MetricsLog(workdir, start_step=start)
    if log.dropped:
        say(f"metrics.jsonl: dropped {log.dropped} record(s) of steps after {start}, which the "
            "checkpoint does not include")  # fmt: skip

    # ------------------------------------------------------------------ loop
    rng = jax.random.key(config.seed)
    steps = config.train.steps
    steps_done = metrics_log.TrainingLine(steps, start, 2 * config.data.batch_size)
    watch = LossWatch()
    describe = functools.partial(_batch_names, config, target_labels=target_labels)
    last, results = {}, {}
    saved = None  # the step of the last save queued
    # stop_at ends this session early (time-limited jobs); resuming continues to `steps`.
    end = min(steps, config.train.stop_at) if config.train.stop_at > 0 else steps
    try:
        if stop.received and jax.process_count() == 1:  # during set-up: nothing to save
            preempted = Preempted(start, None, stop.received)
            say(str(preempted))
            raise preempted
        if end > start:
            say(f"compiling the training step, then steps {start + 1}-{end} of {steps} (the "
                "first step includes the compile: minutes on a CPU; a rerun loads it from the "
                "compilation cache)")  # fmt: skip
        for done in range(start + 1, end + 1):  # `done` = steps completed after this one
            batch, items = _next_batch(source_it, target_it, batch_sharding, target_labels)
            if done == start + 1 and jax.process_count() > 1:
                # Compile, then wait for the slowest process: the step's first collective
                # gives up on a peer that is more than 30 s late (lcmsm_jax/peers.py).
                lowered = train_step.lower(state, batch, rng)
                train_step = peers.compile_and_wait(lowered, "the training step")
            state, metrics = train_step(state, batch, rng)
            images = metrics.pop("images", None)
            with storage.saving(directory, saved):  # a background save that failed
                manager.check_for_errors()
            watch.add(done, metrics, items)
            at = functools.partial(_due, done)
            stopping = stop.requested(done, manager) and done < end  # `end` is saved anyway
            if stopping:
                say(f"{stop.received or 'preemption notice'} received: checkpointing "
                    f"step {done}, then stopping")  # fmt: skip
            evaluating = evaluator is not None and (at(config.train.eval_every)
                                                    or done == steps)  # fmt: skip
            # An evaluation step is also a checkpoint step, saved before evaluating: a
            # failing evaluation (a bad val file, out of memory) never loses the step.
            saving = (at(config.train.checkpoint_every) or done in (steps, end)
                      or stopping or evaluating)  # fmt: skip
            if at(config.train.log_every) or saving or watch.full:
                last = watch.check(manager, describe, directory)
                if at(config.train.log_every) or saving:
                    say(steps_done.line(done, last))
                    log.write(done, last, prefix="train/")
            if images is not None and at(config.train.image_every):
                _save_panel(workdir, done, batch, jax.device_get(images), is_main)
            if saving:
                check_state(state, done, manager, directory=directory,
                            batch=functools.partial(describe, items))  # fmt: skip
                with storage.saving(directory, saved):  # the previous save, done
                    manager.wait_until_finished()
                saved = done
                with storage.saving(directory, saved):
                    run_state.save(manager, state, source_it, target_it, config)
            if evaluating:
                with storage.saving(directory, saved):  # on disk before evaluating
                    manager.wait_until_finished()
                evaluated = _evaluate_or_report(evaluator, state, config, workdir, done,
                                                directory / str(done))  # fmt: skip
                if evaluated is not None:
                    results = evaluated
                    log.write(done, {"mIoU": results["mIoU"]}, prefix="eval/")
            if stopping:
                with storage.saving(directory, saved):
                    manager.wait_until_finished()
                preempted = Preempted(done, directory / str(done))
                say(str(preempted))
                raise preempted
        # Still under the handlers: a signal now must not kill the final save.
        with storage.saving(directory, saved):
            manager.wait_until_finished()
        if stop.received:  # during the last step, its evaluation or its save
            say(f"{stop.received} received during the last step: it is saved; stopping")
            preempted = Preempted(end, directory / str(end))
            say(str(preempted))
            raise preempted
    finally:
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


def _evaluate_or_report(
    evaluator, state: dict, config, workdir: Path, step: int, checkpoint: Path
) -> dict | None:
    """`_evaluate`, with a failure reported in one line: the step is already checkpointed.

    config.train.on_eval_error = "continue" goes on training without this evaluation
    (returns None); "stop" raises EvaluationFailed (exit 1, the same command resumes).
    """
    try:
        return _evaluate(evaluator, state, config, workdir, step)
    except (KeyboardInterrupt, Preempted):
        raise
    except Exception as err:  # noqa: BLE001 - any failure is reported the same way
        if config_cli.debug_enabled():
            raise
        lines = config_cli.failure_message("", err).removeprefix(": ").splitlines() or [""]
        reason = f"{type(err).__name__}: {lines[0]}"
        message = f"evaluation at step {step} failed: {reason} (the step is saved in {checkpoint})"
        if config.train.get("on_eval_error", "stop") == "continue":
            say(f"{message}; training goes on without this evaluation "
                "(config.train.on_eval_error=continue)")  # fmt: skip
            return None
        raise EvaluationFailed(
            f"{message}; fix the evaluation data and run the same command to resume, or set "
            "--config.train.on_eval_error=continue to train on without failed evaluations"
        ) from err


def _due(done: int, every: int) -> bool:
    return every > 0 and done % every == 0


def _save_panel(workdir: Path, step: int, batch: dict, images: dict, is_main: bool) -> None:
    if not is_main:
        return
    # This process's rows: the batch is split across processes; row 0 is process 0's.
    from lcmsm_jax.evaluate import process_local_rows

    host = {k: process_local_rows(v) for k, v in batch.items()}
    panel = visualize.debug_panel(host, images, images.get("mix_prediction"))
    visualize.save_png(workdir / "images" / f"step_{step:07d}.png", panel)


def parse_command(
    prog: str, argv: list[str] | None, description: str, examples: Sequence[str] = ()
) -> tuple[flags.FlagValues, list[str]]:
    """The flags of a training command (`--config`, `--workdir`, overrides), checked before
    any work starts; returns (flag values, warnings). Raises config_cli.UsageError naming
    the flag or key; `examples` are command lines shown by `--help`."""
    from lcmsm_jax import config_checks

    def define(fv: flags.FlagValues) -> None:
        flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, pictures).",
                            flag_values=fv)  # fmt: skip

    fv = config_cli.parse(
        prog, argv, define, required=("workdir",), description=description, examples=examples
    )
    warnings = config_checks.check_train_config(fv.config)
    if os.path.exists(fv.workdir) and not os.path.isdir(fv.workdir):
        raise config_cli.UsageError(f"--workdir {fv.workdir} is a file; pass a folder")
    return fv, warnings


def run_command(prog: str, config: ml_collections.ConfigDict, workdir: str) -> tuple[int, dict]:
    """`train(config, workdir)` as a command: (exit status, its result or {}). A diverged
    run is 1, a preempted one 0 (it checkpointed; the same command resumes), a workdir of
    another model 2."""
    try:
        result = train(config, workdir)
    except (NonFiniteLossError, EvaluationFailed, storage.StorageError) as err:
        if config_cli.debug_enabled():
            raise
        say(f"{prog}: {err}")
        return 1, {}
    except Preempted:  # checkpointed; train() said where
        return 0, {}
    except config_cli.UsageError as err:  # the workdir holds a run of another model
        return config_cli.report_usage(prog, err), {}
    if result["eval"]:
        say(f"final mIoU {result['eval']['mIoU']:.2f} at step {result['step']}")
    where = Path(workdir).absolute() / checkpoint.RUN_CHECKPOINTS / str(result["step"])
    if result["step"] < config.train.steps:
        say(f"stopped at step {result['step']} of {config.train.steps} (config.train.stop_at): "
            f"checkpoint {where}; run the same command to go on")  # fmt: skip
    else:
        say(f"training done: {config.train.steps} steps, checkpoint {where}")
    return 0, result


EXAMPLES = (
    "lcmsm-train --config configs/demo.py --workdir runs/demo",
    "lcmsm-train --config configs/gta2cs_lcmsm.py --workdir runs/gta2cs "
    "--config.train.stop_at=20000",
)


def main(argv: list[str] | None = None) -> int:
    """`lcmsm-train --config C.py --workdir DIR [--config.a.b=v ...]`.

    The command line and the config are checked before any work starts (exit 2, naming the
    flag or key). Data and runtime failures are raised; `lcmsm_jax.cli` reports them.
    """
    try:
        fv, warnings = parse_command(
            "lcmsm-train", argv, "Train (or resume) a run in --workdir.", EXAMPLES
        )
    except config_cli.UsageError as err:
        return config_cli.report_usage("lcmsm-train", err)
    for warning in warnings:
        # print, not say: asking JAX for the process index now would start its backend
        # before train() joins a multi-process run.
        print(f"lcmsm-train: warning: {warning}")
    return run_command("lcmsm-train", fv.config, fv.workdir)[0]


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
