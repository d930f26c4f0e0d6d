"""A training run's checkpoints: what one holds, restoring it, and the checks before resuming.

A checkpoint (async orbax, `<workdir>/checkpoints/<step>`) holds the student (`model`), the
teacher (`teacher`), the rest of the training state (`train`: step, optimiser state, frozen
ImageNet weights, text embeddings), both data iterators' positions (grain, one file per
process) and the config.

Resuming compares the config with the run's config.json before anything is written: a
change of the model is refused, other changes are reported. The newest readable checkpoint
is restored (an unreadable one is set aside by `checkpoint.restore_newest_readable`).
"""

from __future__ import annotations

import json
from pathlib import Path

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from lcmsm_jax import checkpoint, config_cli, progress, storage

# Config subtrees the training state's shapes and frozen contents come from (the text
# embeddings are part of the state): a resumed run must keep them, or the checkpoint would
# not fit (or would silently override the new setting).
MODEL_KEYS = ("model", "text")


# ----------------------------------------------------------------------------- save, restore


def save(manager, state: dict, source_it, target_it, config: ml_collections.ConfigDict) -> None:
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


def _restore(manager, step: int, state: dict, source_it, target_it) -> dict:
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


def resume(manager, state: dict, source_it, target_it, changes: list) -> tuple[dict, int] | None:
    """(restored state, step) from the newest readable checkpoint, or None when there is none.

    A checkpoint of another model is a usage error naming the variables and the config
    changes since it was written.
    """

    def restore(step: int) -> dict:
        return _restore(manager, step, state, source_it, target_it)

    try:
        found = checkpoint.restore_newest_readable(manager, restore, warn=progress.say)
    except checkpoint.CheckpointMismatchError as err:
        since = f" Config changes since that run: {format_changes(changes)}." if changes else ""
        raise config_cli.UsageError(
            f"{err}.{since} Resume with the config the run was started with, or choose another "
            "--workdir; nothing was changed"
        ) from None
    if found is None:
        return None
    step, restored = found
    return restored, step


# ----------------------------------------------------------------------------- before resuming


def check_process_count(directory: Path, step: int) -> None:
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


def report_unfinished_saves(workdir: Path) -> None:
    """Name the interrupted saves in `workdir`; the manager removes them (cleanup_tmp), and
    they may hold a later step."""
    directory = workdir / checkpoint.RUN_CHECKPOINTS
    if directory.is_dir():
        for path in sorted(directory.glob(storage.UNFINISHED)):
            progress.say(f"removing {path.name}: a checkpoint save that was interrupted")


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


def format_changes(changes: list[tuple[str, object, object]]) -> str:
    """`config.a.b: old -> new; ...` for (key, old, new) tuples."""
    show = lambda v: v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    return "; ".join(f"{key}: {show(old)} -> {show(new)}" for key, old, new in changes)


def _has_checkpoint(workdir: Path) -> bool:
    # Finished orbax saves are directories named by their step; unfinished ones carry a
    # suffix (`.orbax-checkpoint-tmp*`), set-aside ones `.corrupt`.
    directory = workdir / checkpoint.RUN_CHECKPOINTS
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


class RunConfigError(ValueError):
    """A run's config.json is not the JSON object lcmsm-train writes; the message names the
    file and what to do."""


def read_run_config(path: Path) -> dict:
    """The config a run was started with (its config.json), as a nested dict.

    Raises RunConfigError when the file is not valid JSON or holds something other than an
    object: the comparison before resuming cannot be made, and the file would be replaced.
    """
    try:
        stored = json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        found = f"not valid JSON ({err})"
    else:
        if isinstance(stored, dict):
            return stored
        found = f"a JSON {_json_kind(stored)}"
    raise RunConfigError(
        f"--workdir {path.parent}: {path} is {found}; expected the JSON object of the config "
        "that lcmsm-train wrote there. Restore it, or delete it to resume without comparing "
        "the config (the checkpoint's shapes are still checked)"
    )


def _json_kind(value: object) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_resume_config(config: ml_collections.ConfigDict, workdir: Path) -> list:
    """Compare `config` with the run's config.json; called before anything is written.

    Returns the changes ((key, old, new) tuples). A config.json that cannot be read as an
    object is refused (RunConfigError). A changed value under MODEL_KEYS is
    refused (config_cli.UsageError listing them) when the workdir holds a checkpoint to
    resume. Keys only one side has (the config gained or lost a field since) are reported,
    not refused: the checkpoint's own shapes are compared when it is restored.
    """
    stored = workdir / "config.json"
    if not stored.is_file():
        return []
    changes = _config_changes(read_run_config(stored), json.loads(config.to_json_best_effort()))
    refused = [
        (key, old, new)
        for key, old, new in changes
        if key.split(".")[1] in MODEL_KEYS and old is not _ABSENT and new is not _ABSENT
    ]
    if refused and _has_checkpoint(workdir):
        raise config_cli.UsageError(
            f"--workdir {workdir} holds checkpoints of another model: {format_changes(refused)}. "
            f"Resume with the same {' and '.join('config.' + k for k in MODEL_KEYS)}, or choose "
            "another --workdir; nothing was changed"
        )
    return changes
