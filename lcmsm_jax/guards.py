"""What stops a training run cleanly: a non-finite loss or state, and stop signals.

  * `LossWatch` keeps each step's metrics on the device and checks every step's losses at
    the next fetch, naming the first step whose loss is NaN/inf and its batch;
  * `check_state` checks the whole training state finite before it is saved, so every
    checkpoint holds finite values;
  * `StopSignals` turns SIGTERM / SIGUSR1 / SIGINT (a scheduler's notice, Ctrl-C) into
    "checkpoint this step, then stop" (`Preempted`); a second Ctrl-C stops at once.

Both failures name the last good checkpoint.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp


class NonFiniteLossError(FloatingPointError):
    """The loss or the training state became NaN/inf; the message names the step, its batch
    and the last good checkpoint."""


class EvaluationFailed(RuntimeError):
    """An evaluation during training failed after its step was checkpointed; the message
    names the step, the cause and the checkpoint."""


class Preempted(Exception):
    """A stop signal stopped the run after checkpointing `step` at `path` (or before its
    first step: `path` None); rerunning the same command resumes from there."""

    def __init__(self, step: int, path: Path | None, signal_name: str | None = None):
        if path is None:
            message = (
                f"{signal_name or 'a stop signal'} received before the first step of this "
                f"session: stopped at step {step}, nothing new to save; run the same command "
                "to go on"
            )
        else:
            message = (
                f"preempted at step {step}: checkpoint saved to {path}; run the same command "
                "to resume"
            )
        super().__init__(message)
        self.step, self.path = step, path


# ----------------------------------------------------------------------------- divergence


def _non_finite_losses(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("loss/") and not math.isfinite(v)}


def _last_good(manager, directory: Path | None = None) -> str:
    last = manager.latest_step()
    if last is None:
        return "none"
    return f"step {last}" + (f" ({directory / str(last)})" if directory else "")


def check_finite(
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
def all_finite(tree) -> jax.Array:
    """Whether every float in `tree` is finite (a scalar bool array).

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


def check_state(
    state: dict, step: int, manager, *, batch: Callable[[], str], directory: Path
) -> None:
    """Raise NonFiniteLossError if `state` (about to be saved) holds a NaN/inf.

    The loss of step t is computed with the weights before update t, so finite losses do
    not prove that the state after update t is finite; this check does, before it is saved.
    Every earlier loss was checked finite, so update t is the one that diverged.
    """
    if bool(jax.device_get(all_finite(state))):
        return
    manager.wait_until_finished()  # name a checkpoint that is complete
    raise NonFiniteLossError(
        f"non-finite values in the training state after step {step}, whose loss terms are "
        f"finite: update {step} overflowed (batch: {batch()}). Stopped without saving; the "
        f"last good checkpoint is {_last_good(manager, directory)}."
    )


class LossWatch:
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

    def check(self, manager, describe: Callable[[dict], str], directory: Path) -> dict:
        """The latest step's metrics as floats; raises NonFiniteLossError naming the first
        step with a non-finite loss (`describe(items)` names its batch)."""
        pending, self._pending = self._pending, []
        fetched = jax.device_get([metrics for _, metrics, _ in pending])
        values = {}
        for (step, _, items), metrics in zip(pending, fetched, strict=True):
            values = {k: float(v) for k, v in metrics.items()}
            if _non_finite_losses(values):
                manager.wait_until_finished()  # name a checkpoint that is complete
                check_finite(values, step, manager, batch=describe(items), directory=directory)
        return values


# ----------------------------------------------------------------------------- signals


class StopSignals:
    """SIGTERM / SIGUSR1 / SIGINT from set-up to the last save: finish the step, checkpoint,
    stop.

    Installed for a whole command (`lcmsm-demo` holds one across its runs; each `train()`
    inside reuses it), so a signal during set-up, compilation, the last step or between two
    runs is noted and acted on at the next step boundary, never lost to the default handler.

    SIGTERM and SIGUSR1 are a scheduler's notices. Schedulers repeat them (SLURM signals
    every task of a preempted job again when its grace time ends, and `launch/slurm.sbatch`
    passes a notice the batch shell received on as SIGUSR1), so a repeat is ignored: the
    checkpoint being written is not given up. SIGKILL is the way to stop at once. SIGINT is
    a person's: Ctrl-C after any notice restores the previous handler and re-raises, stopping
    at once.

    Single process: Python handlers note the signal; the loop stops after the step in
    progress. Multi-process: all processes must save the same step, so JAX's preemption
    service (started by `jax.distributed.initialize`, which owns SIGTERM and ignores its
    repeats) agrees on one and orbax's `reached_preemption` reports it; SIGUSR1 and SIGINT
    are forwarded to it as SIGTERM.
    """

    _active: StopSignals | None = None  # the installed instance, shared by nested blocks

    def __init__(self):
        self._previous: dict[int, object] = {}
        self._depth = 0
        self.received: str | None = None

    @classmethod
    def installed(cls) -> StopSignals:
        """The instance of the enclosing block, or a new one (enter it with `with`)."""
        return cls._active or cls()

    def __enter__(self) -> StopSignals:
        self._depth += 1
        if self._depth > 1:
            return self
        StopSignals._active = self
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be installed from the main thread
        if jax.process_count() == 1:
            wanted = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
        elif jax.config.jax_enable_preemption_service and jax.distributed.is_initialized():
            wanted = (signal.SIGUSR1, signal.SIGINT)
        else:
            wanted = ()  # no way to agree on a step: keep the default behaviour
        for sig in wanted:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._restore()
            StopSignals._active = None

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:  # a person insisting
                self._restore()
                signal.raise_signal(signum)
            return  # a repeated notice: the stop is already under way
        self.received = signal.Signals(signum).name
        if jax.process_count() > 1:
            signal.raise_signal(signal.SIGTERM)  # to the preemption service's handler

    def requested(self, step: int, manager) -> bool:
        """Whether to checkpoint and stop after `step`; in a multi-process run it must be
        called at every step by every process (with the run's checkpoint manager)."""
        if jax.process_count() > 1:
            return bool(manager.reached_preemption(step))
        return self.received is not None
