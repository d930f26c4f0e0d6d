"""The disk a training run writes to: checked before the first step, and a failed save is
reported in one line with nothing half-written left behind.

Before any compile: the workdir and its `checkpoints/` folder must accept a file, and the
checkpoint folder's disk must have room for one more checkpoint (estimated from the state's
size; the oldest one is deleted only after the newest is complete). After a save fails
(full disk, a file-size limit, permissions), its `<step>.orbax-checkpoint-tmp` folder is
removed and the error is raised once, as `SaveFailed`, naming the path and the cause.

Orbax writes in background threads: a failing write is logged there with its traceback,
and each of the save's other writes, finishing after orbax closed its event loop, repeats
it. `quiet_background_errors` keeps those echoes off the console (the main thread raises
the same error); `--debug` / LCMSM_DEBUG=1 shows them.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import re
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import jax

from lcmsm_jax import checkpoint, config_cli

# Reasons a write is refused, by errno: named in the one-line report.
_WRITE_REFUSED = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit: `ulimit -f`, or the file system's)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# TensorStore (orbax's writer) reports the errno as text: `[os_error_code='28']`.
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='(\d+)'")
# Beyond the state's bytes: orbax's metadata, the data iterators' positions, config.json.
_MARGIN_BYTES = 64 * 1024**2
UNFINISHED = "*.orbax-checkpoint-tmp*"  # an unfinished save (orbax)
# What the writes of a failed save still in flight raise, once orbax stopped its loop
# (reported through sys.unraisablehook).
_ORBAX_CODE = f"{os.sep}orbax{os.sep}"
_ECHOES = ("Event loop is closed", "cannot schedule new futures after shutdown")


class StorageError(OSError):
    """The run's folders cannot take its files; the message names the path and why."""


class SaveFailed(StorageError):
    """A checkpoint could not be written; the message names the step, the path and why."""


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def check_writable(folder: Path, what: str) -> None:
    """Create (if needed) `folder` and write, flush and delete a probe file in it.

    Raises StorageError naming `what` (a flag or a role: "--workdir") and the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-") as probe:
            probe.write(b"0")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        reason = _WRITE_REFUSED.get(err.errno, err.strerror or type(err).__name__)
        raise StorageError(
            f"{what} {folder} is not writable ({reason}); make it writable or train in "
            "another --workdir"
        ) from err


def checkpoint_bytes(state: dict) -> int:
    """Bytes one checkpoint of `state` takes on disk: every array of the training state
    (model, teacher, optimiser, ImageNet copy; global shapes, whichever process writes them)
    plus a margin for metadata, iterator positions and the config."""
    arrays = jax.tree.leaves(state)
    return sum(int(x.size) * x.dtype.itemsize for x in arrays) + _MARGIN_BYTES


def check_room(folder: Path, needed: int) -> None:
    """Raise StorageError when `folder`'s disk has less than `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StorageError(
            f"{folder} has {_gb(free)} free; one checkpoint of this run needs "
            f"about {_gb(needed)} (the state's arrays, written before the previous checkpoint "
            "is deleted); free space on that disk or train in another --workdir"
        )


def refusal(err: BaseException) -> str | None:
    """Why a write was refused, from `err` or its causes: an errno of `_WRITE_REFUSED`, as
    an OSError's errno or in TensorStore's text; None if it is something else."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_REFUSED:
            return _WRITE_REFUSED[current.errno]
        found = _TENSORSTORE_ERRNO.search(str(current))
        if found and int(found.group(1)) in _WRITE_REFUSED:
            return _WRITE_REFUSED[int(found.group(1))]
        current = current.__cause__ or current.__context__
    return None


def remove_unfinished(directory: Path) -> list[Path]:
    """Delete the unfinished saves (`<step>.orbax-checkpoint-tmp*`) in `directory`; returns
    what was removed. Only the process that owns the run may call it (process 0)."""
    removed = []
    for path in sorted(directory.glob(UNFINISHED)):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def save_failed(err: BaseException, directory: Path, step: int | None) -> SaveFailed:
    """The one-line `SaveFailed` for `err`, raised by orbax while saving into `directory`;
    the unfinished save is removed first (process 0), once its writes in flight are done."""
    checkpoint.wait_for_orbax_coroutines()
    if jax.process_index() == 0:
        remove_unfinished(directory)
    refused = refusal(err)
    reason = refused or (str(err).splitlines() or [type(err).__name__])[0]
    which = f"step {step}" if step is not None else "a checkpoint"
    fix = "; free space or train in another --workdir" if refused else ""
    steps = [int(p.name) for p in directory.glob("*") if p.name.isdigit()]
    kept = f"step {max(steps)} is the newest complete one" if steps else "none is complete yet"
    return SaveFailed(
        f"the checkpoint of {which} could not be written to {directory}: {reason}; its "
        f"unfinished folder was removed; of this run's checkpoints, {kept}{fix}"
    )


@contextlib.contextmanager
def quiet_background_errors() -> Iterator[None]:
    """Keep the background echoes of a failed orbax save off the console (module docstring):
    orbax's error logs (its threads' tracebacks), TensorStore's "Event loop is closed" for
    each write still in flight, and the abandoned coroutines. Everything else passes."""
    if config_cli.debug_enabled():
        yield
        return

    unraisablehook = sys.unraisablehook

    def not_an_orbax_error(record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and _ORBAX_CODE in record.pathname)

    def quiet_unraisablehook(unraisable) -> None:
        echo = isinstance(unraisable.exc_value, RuntimeError) and (
            str(unraisable.exc_value) in _ECHOES
        )
        if not echo and type(unraisable.object) is not types.CoroutineType:
            unraisablehook(unraisable)

    absl_log, asyncio_log = logging.getLogger("absl"), logging.getLogger("asyncio")
    sys.unraisablehook = quiet_unraisablehook
    absl_log.addFilter(not_an_orbax_error)
    asyncio_log.addFilter(_mute)  # only orbax runs event loops in a training process
    yield
    # Only on a normal exit: after an error (a failed save above all) the process is ending,
    # and the save's abandoned tasks report themselves when the error's traceback, which
    # keeps them alive, is dropped after the one-line report.
    gc.collect()
    sys.unraisablehook = unraisablehook
    absl_log.removeFilter(not_an_orbax_error)
    asyncio_log.removeFilter(_mute)


def _mute(record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def saving(directory: Path, step: int | None) -> Iterator[None]:
    """Turn an error of orbax's saving calls in the block (save, wait, check) into
    `save_failed(...)`; the step's unfinished folder is removed first."""
    try:
        yield
    except SaveFailed:
        raise
    except Exception as err:
        raise save_failed(err, directory, step) from err
