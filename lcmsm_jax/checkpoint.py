"""Orbax checkpoints of model weights (params + BatchNorm statistics + JSON metadata).

Saved as one orbax composite so that a checkpoint appears atomically: orbax writes to a
temporary directory and renames it when complete, so an interrupted save leaves nothing
that looks like a checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx


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
    return {
        ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
        for path, leaf in flat
    }


def _check_fits(directory: Path, item: str, stored: dict, wanted: dict) -> None:
    """Raise a ValueError naming the first variable whose presence or shape differs."""
    for name in sorted(set(stored) | set(wanted)):
        if name not in stored:
            problem = f"{item}.{name} is missing from the checkpoint"
        elif name not in wanted:
            problem = f"{item}.{name} is in the checkpoint but not in the model"
        elif stored[name] != wanted[name]:
            problem = (
                f"{item}.{name} has shape {stored[name]} there, the model expects {wanted[name]}"
            )
        else:
            continue
        raise ValueError(
            f"{directory}: checkpoint does not fit this model (check config.model): {problem}"
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


def run_manager(
    workdir: str | os.PathLike, *, max_to_keep: int | None = 1, enable_async: bool = True
) -> ocp.CheckpointManager:
    """The CheckpointManager of a training run (`<workdir>/checkpoints`)."""
    import grain

    return ocp.CheckpointManager(
        Path(workdir).absolute() / RUN_CHECKPOINTS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=enable_async, create=True
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
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pure)
        restored = manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)})
        )[item]
        manager.close()
        nnx.replace_by_pure_dict(params, restored["params"])
        nnx.replace_by_pure_dict(batch_stats, restored["batch_stats"])
        nnx.update(model, params, batch_stats)
        return int(step)
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
