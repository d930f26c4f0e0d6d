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
