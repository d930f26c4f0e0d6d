"""Training main: `lcmsm-train --config configs/X.py --workdir runs/X [--config.a.b=v ...]`.

Read top to bottom (`_run`): mesh, data, model and initial weights, optimiser and state,
jit, restore, loop. The loop logs (console, metrics.jsonl, TensorBoard), saves debug
pictures, evaluates on the target validation split, and checkpoints (async orbax: state +
data iterator positions + config).

Nothing is lost on any way out:
  * every exit (return, error, signal) waits for the checkpoint being written in the
    background and closes the checkpoint manager;
  * SIGTERM / SIGINT (preemption, Ctrl-C) finish the current step, checkpoint it and stop
    with exit status 0 (`Preempted`); a second signal stops at once. In a multi-process run
    JAX's preemption service picks a step that every process reaches;
  * a non-finite loss or training state stops the run before it is saved, naming the step,
    its batch and the last good checkpoint (all saved states are checked finite);
  * resuming compares config.json before anything is written: another model is refused, other
    changes are reported; an unreadable newest checkpoint is renamed `<step>.corrupt` and the
    one before it used; records logged after the restored step are dropped from
    metrics.jsonl (and hidden in TensorBoard), so a resumed run logs as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lcmsm_jax import (
    checkpoint,
    compile_cache,
    config_cli,
    convert,
    metrics_log,
    models,
    optim,
    sharding,
    text,
    visualize,
)
from lcmsm_jax.data import datasets
from lcmsm_jax.uda import step as uda_step

# Config subtrees the training state's shapes and frozen contents come from (the text
# embeddings are part of the state): a resumed run must keep them, or the checkpoint would
# not fit (or would silently override the new setting).
MODEL_KEYS = ("model", "text")


class NonFiniteLossError(FloatingPointError):
    """The loss or the training state became NaN/inf; the message names the step, its batch
    and the last good checkpoint."""


class Preempted(Exception):
    """SIGTERM/SIGINT stopped the run after checkpointing `step` at `path`; rerunning the same
    command resumes from there."""

    def __init__(self, step: int, path: Path):
        super().__init__(
            f"preempted at step {step}: checkpoint saved to {path}; run the same command to resume"
        )
        self.step, self.path = step, path


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


def _save(manager, state, source_it, target_it, config) -> None:
    """Queue an asynchronous save of `state` and both data iterators' positions."""
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


def _state_items(state: dict) -> dict:
    """The checkpoint items holding `state` (arrays or ShapeDtypeStructs)."""
    return {
        "model": {"params": state["params"], "batch_stats": state["batch_stats"]},
        "teacher": {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]},
        "train": _train_item(state),
    }


def _restore(manager, step: int, state, source_it, target_it) -> dict:
    """Checkpoint `step` in the shapes of `state`; sets both iterators' positions.

    The stored shapes are compared first (CheckpointMismatchError names the variables).
    """
    abstract = _state_items(jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    checkpoint.check_run_step(manager, step, abstract)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(tree) for item, tree in abstract.items()},
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


def _resume(manager, state, source_it, target_it, changes: list, say) -> tuple[dict, int] | None:
    """(restored state, step) from the newest readable checkpoint, or None when there is none.

    A checkpoint of another model is a usage error naming the variables and the config
    changes since it was written.
    """

    def restore(step: int) -> dict:
        return _restore(manager, step, state, source_it, target_it)

    try:
        found = checkpoint.restore_newest_readable(manager, restore, warn=say)
    except checkpoint.CheckpointMismatchError as err:
        since = f" Config changes since that run: {_format(changes)}." if changes else ""
        raise config_cli.UsageError(
            f"{err}.{since} Resume with the config the run was started with, or choose another "
            "--workdir; nothing was changed"
        ) from None
    if found is None:
        return None
    step, restored = found
    return restored, step


def _check_process_count(directory: Path, step: int) -> None:
    """Refuse (UsageError) to resume checkpoint `step` with another process count.

    grain saves each process's data iterator position on its own
    (`source_iter/process_<i>-of-<n>.json`); another count has no position to read. The
    model state itself restores onto any device or process count (lcmsm-eval does so).
    """
    files = [p.name for p in (directory / str(step) / "source_iter").glob("process_*-of-*.json")]
    counts = sorted({int(name.rsplit("-of-", 1)[1].removesuffix(".json")) for name in files})
    if counts and jax.process_count() not in counts:
        raise config_cli.UsageError(
            f"{directory / str(step)} was written by {counts[0]} process(es); this run has "
            f"{jax.process_count()}. The data iterators' positions are saved per process "
            f"(grain), so resume with {counts[0]} process(es) (lcmsm-eval reads the checkpoint "
            "on any count); nothing was changed"
        )


# ----------------------------------------------------------------------------- config on resume


def _flat(tree: dict, prefix: str = "config") -> dict:
    """Nested config dict -> {"config.a.b": value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}.{key}"))
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


_ABSENT = "(absent)"


def _config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old value, new value) for each leaf that differs, in key order."""
    before, after = _flat(old), _flat(new)
    return [
        (key, before.get(key, _ABSENT), after.get(key, _ABSENT))
        for key in sorted(before.keys() | after.keys())
        if before.get(key, _ABSENT) != after.get(key, _ABSENT)
    ]


def _format(changes: list[tuple[str, object, object]]) -> str:
    show = lambda v: v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    return "; ".join(f"{key}: {show(old)} -> {show(new)}" for key, old, new in changes)


def _has_checkpoint(workdir: Path) -> bool:
    # Finished orbax saves are directories named by their step; unfinished ones carry a
    # suffix (`.orbax-checkpoint-tmp*`), set-aside ones `.corrupt`.
    directory = workdir / checkpoint.RUN_CHECKPOINTS
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _check_resume_config(config: ml_collections.ConfigDict, workdir: Path, say) -> list:
    """Compare `config` with the run's config.json; called before anything is written.

    Returns the changes ((key, old, new) tuples). A changed value under MODEL_KEYS is
    refused (config_cli.UsageError listing them) when the workdir holds a checkpoint to
    resume. Keys only one side has (the config gained or lost a field since) are reported,
    not refused: the checkpoint's own shapes are compared when it is restored.
    """
    stored = workdir / "config.json"
    if not stored.is_file():
        return []
    try:
        old = json.loads(stored.read_text())
    except ValueError:
        say(f"warning: {stored} is not valid JSON; not comparing the config with it")
        return []
    changes = _config_changes(old, json.loads(config.to_json_best_effort()))
    refused = [
        (key, old, new)
        for key, old, new in changes
        if key.split(".")[1] in MODEL_KEYS and old is not _ABSENT and new is not _ABSENT
    ]
    if refused and _has_checkpoint(workdir):
        raise config_cli.UsageError(
            f"--workdir {workdir} holds checkpoints of another model: {_format(refused)}. "
            f"Resume with the same {' and '.join('config.' + k for k in MODEL_KEYS)}, or choose "
            "another --workdir; nothing was changed"
        )
    return changes


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)


def _check_train_keys(config: ml_collections.ConfigDict) -> None:
    """The train.* values this module relies on (the command line checks them as well)."""
    keep = config.train.keep_checkpoints
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise config_cli.UsageError(
            f"config.train.keep_checkpoints = {keep!r}: expected a positive integer (the "
            "number of newest checkpoints kept; 0 would delete them all, the final one "
            "included); pass --config.train.keep_checkpoints=1"
        )


# ----------------------------------------------------------------------------- divergence


def _non_finite_losses(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("loss/") and not math.isfinite(v)}


def _last_good(manager, directory: Path | None = None) -> str:
    last = manager.latest_step()
    if last is None:
        return "none"
    return f"step {last}" + (f" ({directory / str(last)})" if directory else "")


def _check_finite(
    metrics: dict, step: int, manager, *, batch: str = "", directory: Path | None = None
) -> None:
    """Raise NonFiniteLossError if a loss term of `step` is NaN/inf (naming the terms, the
    batch and the last checkpoint: all saved states were checked finite)."""
    bad = _non_finite_losses(metrics)
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {terms}{f' (batch: {batch})' if batch else ''}. "
            f"Stopped without saving; the last good checkpoint is "
            f"{_last_good(manager, directory)}."
        )


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Whether every float in `tree` is finite.

    The leaves are concatenated into chunks of at most 2**24 values and each chunk is
    reduced once: a reduction per leaf (over a thousand of them) takes far longer to
    compile, one concatenation of everything would need a copy of the whole state.
    """
    chunks, chunk, size = [], [], 0
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            chunk.append(leaf.ravel())
            size += leaf.size
            if size >= 1 << 24:
                chunks.append(chunk)
                chunk, size = [], 0
    checks = [jnp.isfinite(jnp.concatenate(c)).all() for c in [*chunks, chunk] if c]
    return jnp.stack(checks).all() if checks else jnp.bool_(True)


def _check_state(
    state: dict, step: int, manager, *, batch: Callable[[], str], directory: Path
) -> None:
    """Raise NonFiniteLossError if `state` (about to be saved) holds a NaN/inf.

    The loss of step t is computed with the weights before update t, so finite losses do
    not prove that the state after update t is finite; this check does, before it is saved.
    Every earlier loss was checked finite, so update t is the one that diverged.
    """
    if bool(jax.device_get(_all_finite(state))):
        return
    manager.wait_until_finished()  # name a checkpoint that is complete
    raise NonFiniteLossError(
        f"non-finite values in the training state after step {step}, whose loss terms are "
        f"finite: update {step} overflowed (batch: {batch()}). Stopped without saving; the "
        f"last good checkpoint is {_last_good(manager, directory)}."
    )


class _LossWatch:
    """Each step's metrics, kept on the device until they are next fetched.

    Fetching every step would stall the device queue, checking only the logged steps would
    name the wrong step; so every step's losses are checked at the next fetch and a
    non-finite one is reported at the step where it first appeared, with its batch. At most
    `limit` steps are held.
    """

    def __init__(self, limit: int = 100):
        self.limit = limit
        self._pending: list[tuple[int, dict, dict]] = []

    def add(self, step: int, metrics: dict, items: dict) -> None:
        self._pending.append((step, metrics, items))

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.limit

    def check(self, manager, describe, directory: Path) -> dict:
        """The latest step's metrics as floats; raises NonFiniteLossError naming the first
        step with a non-finite loss."""
        pending, self._pending = self._pending, []
        fetched = jax.device_get([metrics for _, metrics, _ in pending])
        values = {}
        for (step, _, items), metrics in zip(pending, fetched, strict=True):
            values = {k: float(v) for k, v in metrics.items()}
            if _non_finite_losses(values):
                manager.wait_until_finished()  # name a checkpoint that is complete
                _check_finite(values, step, manager, batch=describe(items), directory=directory)
        return values


# ----------------------------------------------------------------------------- signals


class _StopSignals:
    """SIGTERM / SIGINT during the loop: finish the step, checkpoint, stop.

    Single process: Python handlers note the signal; the loop stops after the step in
    progress. Multi-process: all processes must save the same step, so JAX's preemption
    service (started by `jax.distributed.initialize`, which owns SIGTERM) agrees on one and
    orbax's `reached_preemption` reports it; SIGINT is forwarded to it as SIGTERM. A second
    signal restores the previous handler and re-raises, stopping at once.
    """

    def __init__(self, manager):
        self._manager = manager
        self._multi = jax.process_count() > 1
        self._previous: dict[int, object] = {}
        self.received: str | None = None

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be installed from the main thread
        if not self._multi:
            wanted = (signal.SIGTERM, signal.SIGINT)
        elif jax.config.jax_enable_preemption_service and jax.distributed.is_initialized():
            wanted = (signal.SIGINT,)
        else:
            wanted = ()  # no way to agree on a step: keep the default behaviour
        for sig in wanted:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        if self._multi:
            signal.raise_signal(signal.SIGTERM)  # to the preemption service's handler

    def requested(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step`; in a multi-process run it must be
        called at every step by every process."""
        if self._multi:
            return bool(self._manager.reached_preemption(step))
        return self.received is not None


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Run (or resume) training; returns the last logged metrics and evaluation results.

    Raises Preempted (after checkpointing) on SIGTERM/SIGINT, NonFiniteLossError when the
    loss or the state diverges, config_cli.UsageError when the workdir holds a run of
    another model, checkpoint.CheckpointError when none of the run's checkpoints reads.
    """
    sharding.initialize_distributed(config.mesh)  # first: before anything touches a device
    compile_cache.enable(config.get("compile_cache_dir", ""))
    _check_train_keys(config)
    workdir = Path(workdir).absolute()
    say = print if jax.process_index() == 0 else (lambda *a, **k: None)
    changes = _check_resume_config(config, workdir, say)  # before anything is written
    workdir.mkdir(parents=True, exist_ok=True)
    _report_unfinished_saves(workdir, say)
    # Every way out of this block (return, exception, signal) waits for the save in flight
    # and closes the manager: leaving earlier would drop that checkpoint.
    with checkpoint.run_manager(
        workdir, max_to_keep=config.train.keep_checkpoints, cleanup_tmp=True
    ) as manager:
        return _run(config, workdir, manager, changes, say)


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


def _report_unfinished_saves(workdir: Path, say) -> None:
    # The manager removes them (cleanup_tmp); say so, since they may hold a later step.
    directory = workdir / checkpoint.RUN_CHECKPOINTS
    if directory.is_dir():
        for path in sorted(directory.glob("*.orbax-checkpoint-tmp*")):
            say(f"removing {path.name}: a checkpoint save that was interrupted")


def _run(config: ml_collections.ConfigDict, workdir: Path, manager, changes: list, say) -> dict:
    """Set up and run the loop with an open checkpoint manager (see the module docstring)."""
    is_main = jax.process_index() == 0
    if manager.all_steps():  # refused before any work when it cannot resume
        _check_process_count(Path(manager.directory), max(manager.all_steps()))

    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(config.mesh.data)
    batch_sharding = sharding.batch_sharded(mesh)
    sharding.check_batch_size(config.data.batch_size, mesh, "config.data.batch_size")
    say(f"mesh: {mesh.devices.size} devices ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)"
        f"{', parameters sharded (config.mesh.fsdp)' if config.mesh.fsdp else ''}")  # fmt: skip

    # ------------------------------------------------------------------ data
    target_labels = bool(config.uda.target_supervised)
    source_it, target_it = datasets.train_iterators(config, target_labels=target_labels)
    class_names = datasets.class_names(config)

    # ------------------------------------------------------------------ model, weights, text
    resuming = bool(manager.all_steps())  # then the weights come from the checkpoint
    model = models.Segmentor(config.model, rngs=nnx.Rngs(config.seed))
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
    state_sharding = sharding.state_shardings(state, mesh, config.mesh.fsdp)
    state = jax.device_put(state, state_sharding)
    del model, params

    # ------------------------------------------------------------------ jit
    train_step = _jit_train_step(
        config, graphdef, imnet_graphdef, tx, schedule, state_sharding, batch_sharding
    )
    evaluator = None
    if config.train.eval_every >= 0:  # -1 disables evaluation
        from lcmsm_jax import evaluate

        evaluator = evaluate.make_evaluator(config, graphdef, mesh)

    # ------------------------------------------------------------------ restore
    directory = Path(manager.directory)
    found = _resume(manager, state, source_it, target_it, changes, say) if resuming else None
    if found is not None:
        state = jax.device_put(found[0], state_sharding)
        say(f"initial weights: resumed from {directory / str(found[1])}")
    start = int(jax.device_get(state["step"]))
    if changes:
        say(f"config changes since the last session (accepted): {_format(changes)}")
    if is_main:
        _write_atomically(workdir / "config.json", config.to_json_best_effort(indent=2))
    log = metrics_log.MetricsLog(workdir, start_step=start)
    if log.dropped:
        say(f"metrics.jsonl: dropped {log.dropped} record(s) of steps after {start}, which the "
            "checkpoint does not include")  # fmt: skip

    # ------------------------------------------------------------------ loop
    rng = jax.random.key(config.seed)
    steps = config.train.steps
    progress = metrics_log.Progress(steps, start, 2 * config.data.batch_size)
    watch = _LossWatch()
    describe = functools.partial(_batch_names, config, target_labels=target_labels)
    last, results = {}, {}
    # stop_at ends this session early (time-limited jobs); resuming continues to `steps`.
    end = min(steps, config.train.stop_at) if config.train.stop_at > 0 else steps
    try:
        with _StopSignals(manager) as stop:
            for done in range(start + 1, end + 1):  # `done` = steps completed after this one
                batch, items = _next_batch(source_it, target_it, batch_sharding, target_labels)
                state, metrics = train_step(state, batch, rng)
                images = metrics.pop("images", None)
                watch.add(done, metrics, items)
                at = functools.partial(_due, done)
                stopping = stop.requested(done) and done < end  # `end` is saved anyway
                if stopping:
                    say(f"{stop.received or 'preemption notice'} received: checkpointing "
                        f"step {done}, then stopping", flush=True)  # fmt: skip
                saving = at(config.train.checkpoint_every) or done in (steps, end) or stopping
                if at(config.train.log_every) or saving or watch.full:
                    last = watch.check(manager, describe, directory)
                    if at(config.train.log_every) or saving:
                        say(progress.line(done, last), flush=True)
                        log.write(done, last, prefix="train/")
                if images is not None and at(config.train.image_every):
                    _save_panel(workdir, done, batch, jax.device_get(images), is_main)
                if evaluator is not None and (at(config.train.eval_every) or done == steps):
                    results = _evaluate(evaluator, state, config, workdir, done)
                    log.write(done, {"mIoU": results["mIoU"]}, prefix="eval/")
                if saving:
                    _check_state(state, done, manager, directory=directory,
                                 batch=functools.partial(describe, items))  # fmt: skip
                    _save(manager, state, source_it, target_it, config)
                if stopping:
                    manager.wait_until_finished()
                    preempted = Preempted(done, directory / str(done))
                    say(str(preempted), flush=True)
                    raise preempted
            # Still under the handlers: a signal now must not kill the final save.
            manager.wait_until_finished()
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


def parse_command(prog: str, argv: list[str] | None, description: str):
    """The flags of a training command (`--config`, `--workdir`, overrides), checked before
    any work starts; returns (flag values, warnings). Raises config_cli.UsageError naming
    the flag or key."""
    from absl import flags

    from lcmsm_jax import config_checks

    def define(fv: flags.FlagValues) -> None:
        flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, pictures).",
                            flag_values=fv)  # fmt: skip

    fv = config_cli.parse(prog, argv, define, required=("workdir",), description=description)
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
    except NonFiniteLossError as err:
        print(f"{prog}: {err}")
        return 1, {}
    except Preempted:  # checkpointed; train() said where
        return 0, {}
    except config_cli.UsageError as err:  # the workdir holds a run of another model
        return config_cli.report_usage(prog, err), {}
    if result["eval"] and jax.process_index() == 0:
        print(f"final mIoU {result['eval']['mIoU']:.2f} at step {result['step']}")
    return 0, result


def main(argv: list[str] | None = None) -> int:
    """`lcmsm-train --config C.py --workdir DIR [--config.a.b=v ...]`.

    The command line and the config are checked before any work starts (exit 2, naming the
    flag or key). Data and runtime failures are raised; `lcmsm_jax.cli` reports them.
    """
    try:
        fv, warnings = parse_command("lcmsm-train", argv, "Train (or resume) a run in --workdir.")
    except config_cli.UsageError as err:
        return config_cli.report_usage("lcmsm-train", err)
    for warning in warnings:
        print(f"lcmsm-train: warning: {warning}")
    return run_command("lcmsm-train", fv.config, fv.workdir)[0]


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
