"""Orbax checkpoints of model weights (params + BatchNorm statistics + JSON metadata).

Saved as one orbax composite so that a checkpoint appears atomically: orbax writes to a
temporary directory and renames it when complete, so an interrupted save leaves nothing
that looks like a checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jax
import orbax.checkpoint as ocp
from flax import nnx

T = TypeVar("T")


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(
        ocp.CompositeCheckpointHandler(
            params=ocp.StandardCheckpointHandler(),
            batch_stats=ocp.StandardCheckpointHandler(),
            metadata=ocp.JsonCheckpointHandler(),
        )
    )


def save_model(directory: str | os.PathLike, model: nnx.Module, metadata: dict) -> Path:
    """Write `model`'s params and batch statistics plus `metadata` to `directory`.

    Refuses to overwrite an existing checkpoint.
    """
    directory = Path(directory).absolute()
    if directory.exists():
        raise FileExistsError(f"{directory} already exists; remove it or choose another workdir")
    params, batch_stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    _checkpointer().save(
        directory,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params.to_pure_dict()),
            batch_stats=ocp.args.StandardSave(batch_stats.to_pure_dict()),
            metadata=ocp.args.JsonSave(metadata),
        ),
    )
    return directory


def restore_model(directory: str | os.PathLike, model: nnx.Module) -> dict:
    """Load params and batch statistics saved by `save_model` into `model`; return metadata.

    The model must have the same structure (same config.model); a mismatch is an error
    that names the checkpoint.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"no model checkpoint at {directory}")
    params, batch_stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    checkpointer = _checkpointer()
    stored = checkpointer.metadata(directory).item_metadata
    for item, state in (("params", params), ("batch_stats", batch_stats)):
        _check_fits(directory, item, _flat_shapes(stored[item].tree), _flat_shapes(state))
    abstract = lambda state: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.to_pure_dict()
    )
    restored = checkpointer.restore(
        directory,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(params)),
            batch_stats=ocp.args.StandardRestore(abstract(batch_stats)),
            metadata=ocp.args.JsonRestore(),
        ),
    )
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(batch_stats, restored["batch_stats"])
    nnx.update(model, params, batch_stats)
    return restored["metadata"]


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    """Nested dict/list of arrays (or array metadata) -> {"a.b.0.c": shape}."""
    if isinstance(tree, nnx.State):
        tree = tree.to_pure_dict()
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {".".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _key_name(key) -> str:
    # Dict keys, sequence indices and namedtuple fields (optimiser states); orbax's stored
    # metadata has dicts where the live tree has namedtuples, so all read as plain names.
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def tree_differences(item: str, stored: dict, wanted: dict) -> list[str]:
    """Each variable (`_flat_shapes` names) whose presence or shape differs, as a phrase."""
    problems = []
    for name in sorted(set(stored) | set(wanted)):
        if name not in stored:
            problems.append(f"{item}.{name} is missing from the checkpoint")
        elif name not in wanted:
            problems.append(f"{item}.{name} is in the checkpoint but not in the model")
        elif stored[name] != wanted[name]:
            problems.append(
                f"{item}.{name} has shape {stored[name]} there, the model expects {wanted[name]}"
            )
    return problems


# MiT blocks stored one by one (`backbone.block3.17.attn...`): checkpoints written before a
# stage's blocks were stored stacked (`backbone.block3.attn...` with a leading [depth] axis).
_PER_BLOCK_NAME = re.compile(r"(^|\.)block[1-4]\.\d+\.")


def _layout_note(stored: dict) -> str:
    """A hint when `stored` (flat names) holds per-block MiT weights, an older layout."""
    if not any(_PER_BLOCK_NAME.search(name) for name in stored):
        return ""
    return (
        ". The checkpoint stores MiT blocks one by one (block3.17.*), the layout of versions "
        "before a stage's blocks were stored stacked (block3.* with a leading block axis); "
        "this version cannot restore it"
    )


def _check_fits(directory: Path, item: str, stored: dict, wanted: dict) -> None:
    """Raise a ValueError naming the first variable whose presence or shape differs."""
    problems = tree_differences(item, stored, wanted)
    if problems:
        raise ValueError(
            f"{directory}: checkpoint does not fit this model (check config.model): "
            f"{problems[0]}{_layout_note(stored)}"
        )


# ----------------------------------------------------------------------------- training runs
#
# A run's workdir holds `checkpoints/<step>/` written by an orbax CheckpointManager with the
# items: "model" and "teacher" ({"params", "batch_stats"} each), "train" (optimiser state,
# step, frozen inputs), "source_iter" / "target_iter" (grain iterator positions) and
# "config" (JSON). Evaluation restores only "model" or "teacher".

RUN_CHECKPOINTS = "checkpoints"
CONVERTED = "converted"
WEIGHT_ITEMS = {"student": "model", "teacher": "teacher"}
# Suffix of a checkpoint directory that failed to read and was moved aside on resume.
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(ValueError):
    """No checkpoint of a run can be read; the message names each one and why."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose variables do not fit the model being restored."""


def run_manager(
    workdir: str | os.PathLike,
    *,
    max_to_keep: int | None = 1,
    enable_async: bool = True,
    cleanup_tmp: bool = False,
) -> ocp.CheckpointManager:
    """The CheckpointManager of a training run (`<workdir>/checkpoints`).

    `cleanup_tmp` removes unfinished saves (`<step>.orbax-checkpoint-tmp*`, left by a killed
    run); only the training process that owns the run may do that, since a reader (lcmsm-eval
    during training) would otherwise delete a save in flight.
    """
    import grain

    return ocp.CheckpointManager(
        Path(workdir).absolute() / RUN_CHECKPOINTS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=enable_async,
            create=True,
            cleanup_tmp_directories=cleanup_tmp,
        ),
        item_handlers={
            "model": ocp.StandardCheckpointHandler(),
            "teacher": ocp.StandardCheckpointHandler(),
            "train": ocp.StandardCheckpointHandler(),
            "source_iter": grain.checkpoint.CheckpointHandler(),
            "target_iter": grain.checkpoint.CheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        },
    )


def check_run_step(manager: ocp.CheckpointManager, step: int, wanted: dict) -> None:
    """Compare the stored variables of checkpoint `step` with `wanted` ({item: tree of arrays
    or ShapeDtypeStructs}) before restoring, so that a mismatch names the variables instead
    of failing inside TensorStore.

    Raises CheckpointMismatchError listing up to five differences; any other error means the
    checkpoint's metadata is unreadable.
    """
    stored = manager.item_metadata(step)
    problems, note = [], ""
    for item, tree in wanted.items():
        if stored[item] is None:
            raise FileNotFoundError(f"{item}: no readable metadata")
        names = _flat_shapes(stored[item].tree)
        problems += tree_differences(item, names, _flat_shapes(tree))
        note = note or _layout_note(names)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointMismatchError(
            f"{Path(manager.directory) / str(step)} does not fit this run: "
            f"{'; '.join(problems[:5])}{more}{note}"
        )


def restore_newest_readable(
    manager: ocp.CheckpointManager,
    restore: Callable[[int], T],
    *,
    warn: Callable[[str], None],
) -> tuple[int, T] | None:
    """`(step, restore(step))` for the newest checkpoint of `manager` that reads.

    A checkpoint whose restore fails (a truncated or missing file, unreadable metadata) is
    reported through `warn` and the one before it is tried. Once one reads, the unreadable
    newer ones are renamed `<step>.corrupt`: kept for inspection (rename one back to retry
    it), but no longer a step for orbax, so the run neither trips over them again nor
    collides with them when it saves that step anew. Returns None when there is no
    checkpoint. Raises CheckpointError when none reads (then nothing is renamed), and passes
    CheckpointMismatchError through (the checkpoint reads but is of another model).
    """
    steps = sorted(manager.all_steps(), reverse=True)
    unreadable: list[tuple[int, str]] = []
    for index, step in enumerate(steps):
        result, reason = _try_restore(restore, step)
        if reason is None:
            if unreadable:
                _set_aside(manager, [s for s, _ in unreadable], warn)
            return step, result
        unreadable.append((step, reason))
        then = f"trying step {steps[index + 1]}" if index + 1 < len(steps) else "none older"
        warn(
            f"warning: checkpoint {Path(manager.directory) / str(step)} is unreadable "
            f"({reason}); {then}"
        )
    if unreadable:
        listed = "; ".join(f"step {s}: {why}" for s, why in unreadable)
        raise CheckpointError(
            f"no checkpoint in {manager.directory} can be read ({listed}); nothing was "
            "changed. Move that folder away to start the run afresh"
        )
    return None


def _reason(err: BaseException, limit: int = 300) -> str:
    """One line saying why a restore failed: the first line of the innermost cause (orbax
    wraps TensorStore's error, which names the variable and the file, in a message that
    dumps the whole TensorStore spec)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _try_restore(restore: Callable[[int], T], step: int) -> tuple[T | None, str | None]:
    """(restore(step), None), or (None, why it failed) for an unreadable checkpoint."""
    with _muted_read_echoes():
        try:
            return restore(step), None
        except CheckpointMismatchError:
            raise
        except Exception as err:  # any failure to read it makes the checkpoint unusable
            reason = _reason(err)
        wait_for_orbax_coroutines()
    return None, reason


@contextlib.contextmanager
def _muted_read_echoes():
    """Keep the echoes of a failed restore off the console.

    When one read fails, orbax closes its event loop with the checkpoint's other reads
    still in flight. As each finishes, TensorStore reports that the loop is closed
    (`sys.excepthook`), and the abandoned tasks and coroutines, once collected, repeat the
    error with a dump of the TensorStore spec (the asyncio logger, `sys.unraisablehook`).
    The failure itself is reported once, by the caller.
    """
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
    asyncio_log = logging.getLogger("asyncio")

    def mute(record: logging.LogRecord) -> bool:
        return False

    def quiet_excepthook(kind, value, traceback) -> None:
        if not (kind is RuntimeError and str(value) == "Event loop is closed"):
            excepthook(kind, value, traceback)

    def quiet_unraisablehook(unraisable) -> None:
        if type(unraisable.object) is not types.CoroutineType:
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
    asyncio_log.addFilter(mute)
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
        asyncio_log.removeFilter(mute)


def wait_for_orbax_coroutines(timeout: float = 30.0) -> None:
    """Wait until the coroutines of a failed orbax restore or save are gone (see above):
    until then its writes in flight may still create files."""
    deadline = time.monotonic() + timeout
    orbax_code = f"{os.sep}orbax{os.sep}"
    while True:
        gc.collect()
        # type(), not isinstance(): the latter asks every object for its __class__, which
        # some module proxies answer with a deprecation warning.
        alive = any(
            type(o) is types.CoroutineType and orbax_code in o.cr_code.co_filename
            for o in gc.get_objects()
        )
        if not alive or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def _set_aside(manager: ocp.CheckpointManager, steps: list[int], warn) -> None:
    """Rename checkpoint directories `steps` to `<step>.corrupt` (process 0; all processes
    wait for it and reload the manager's step list)."""
    directory = Path(manager.directory)
    ocp.multihost.sync_global_processes("lcmsm_set_aside_unreadable")
    if jax.process_index() == 0:
        for step in steps:
            target = directory / f"{step}{CORRUPT_SUFFIX}"
            suffix = 1
            while target.exists():
                suffix += 1
                target = directory / f"{step}{CORRUPT_SUFFIX}-{suffix}"
            (directory / str(step)).rename(target)
            warn(f"warning: renamed the unreadable checkpoint to {target} (kept for inspection)")
    ocp.multihost.sync_global_processes("lcmsm_set_aside_unreadable_done")
    manager.reload()


def _weights_tree(model: nnx.Module) -> tuple[nnx.State, nnx.State, dict]:
    params, batch_stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    return (
        params,
        batch_stats,
        {"params": params.to_pure_dict(), "batch_stats": batch_stats.to_pure_dict()},
    )


def restore_weights(
    workdir: str | os.PathLike,
    model: nnx.Module,
    *,
    step: int | None = None,
    weights: str = "student",
) -> int | None:
    """Load model weights from a run directory into `model`.

    Looks for training checkpoints (`<workdir>/checkpoints`, the latest or `step`, student
    or EMA teacher weights) and otherwise for an `lcmsm-convert` result
    (`<workdir>/converted`). Returns the restored training step, or None for a converted
    checkpoint. Errors name the directory and what is missing.
    """
    if weights not in WEIGHT_ITEMS:
        raise ValueError(f"weights must be 'student' or 'teacher', got {weights!r}")
    workdir = Path(workdir).absolute()
    run_dir = workdir / RUN_CHECKPOINTS
    if run_dir.is_dir() and any(run_dir.iterdir()):
        manager = run_manager(workdir, max_to_keep=None, enable_async=False)
        try:
            return _restore_run_weights(manager, run_dir, model, step, weights)
        finally:
            manager.close()  # also after an error: nothing of orbax's outlives the command
    if (workdir / CONVERTED).is_dir():
        if step is not None:
            raise ValueError(f"{workdir} holds a converted checkpoint, which has no steps")
        if weights != "student":
            raise ValueError(
                f"{workdir / CONVERTED} holds one set of weights; convert with "
                "`lcmsm-convert --weights teacher` to get the teacher"
            )
        restore_model(workdir / CONVERTED, model)
        return None
    raise FileNotFoundError(
        f"{workdir} has neither training checkpoints ({RUN_CHECKPOINTS}/) nor a converted "
        f"checkpoint ({CONVERTED}/)"
    )


def _restore_run_weights(
    manager: ocp.CheckpointManager, run_dir: Path, model: nnx.Module, step: int | None, weights: str
) -> int:
    """`restore_weights` from the checkpoints in `run_dir` (`manager`'s); returns the step."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"{run_dir} holds no complete checkpoint")
    if step is None:
        step = manager.latest_step()
    elif step not in steps:
        raise FileNotFoundError(f"{run_dir} has no step {step}; available: {sorted(steps)}")
    item = WEIGHT_ITEMS[weights]
    params, batch_stats, pure = _weights_tree(model)
    stored = manager.item_metadata(step)[item]
    _check_fits(run_dir / str(step), item, _flat_shapes(stored.tree), _flat_shapes(pure))
    # Onto this process's first device, whatever devices and processes wrote it (a run
    # of 2 processes x 2 devices evaluates on 1 device); callers place them from there.
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), pure)
    args = ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)})
    restored, reason = _try_restore(lambda s: manager.restore(s, args=args)[item], step)
    if reason is not None:
        # Evaluation names what it evaluates: no silent fall back to an older step.
        others = sorted(s for s in steps if s != step)
        what_to_do = (
            f"evaluate another step with --step (available: {others})"
            if others
            else "no other checkpoint in that run"
        )
        raise CheckpointError(
            f"checkpoint {run_dir / str(step)} is unreadable ({reason}); {what_to_do}"
        )
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(batch_stats, restored["batch_stats"])
    nnx.update(model, params, batch_stats)
    return int(step)
