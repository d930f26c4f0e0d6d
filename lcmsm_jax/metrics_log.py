"""Where a run's numbers go: the console, `metrics.jsonl` and TensorBoard (process 0 only)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import jax
import numpy as np

from lcmsm_jax import atomic, progress


class MetricsLog:
    """Appends one JSON line per record and mirrors scalars to TensorBoard.

    `start_step` is the step the run (re)starts from. Records an earlier session logged after
    it (that session stopped before checkpointing them; they will be logged again) are
    dropped from metrics.jsonl (`dropped` counts them) and TensorBoard is told to hide its
    own (`purge_step`), so a resumed run's logs read as one uninterrupted run.
    """

    def __init__(self, workdir: str | os.PathLike, *, start_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self.dropped = 0
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.dropped = drop_after(self.path, start_step)
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=start_step + 1)

    def write(self, step: int, values: dict, *, prefix: str = "") -> None:
        """Record `values` (scalars; nested dicts flattened with '/') at `step`."""
        if not self.enabled:
            return
        flat = {f"{prefix}{k}": v for k, v in _flatten(values).items()}
        record = {"step": int(step), "time": time.time(), **flat}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in flat.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(key, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def drop_after(path: Path, step: int) -> int:
    """Keep the records of a metrics.jsonl up to `step`; returns how many were dropped.

    Lines that do not parse (a record cut off by a kill) are dropped too. The file is
    replaced atomically, so an interruption leaves either the old or the new one.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic.write_text(path, "".join(kept))
    return dropped


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, np.ndarray | np.generic | jax.Array):
            out[f"{prefix}{key}"] = np.asarray(value).item() if np.size(value) == 1 else None
        else:
            out[f"{prefix}{key}"] = value
    return {k: v for k, v in out.items() if v is not None}


class TrainingLine:
    """The console line of a logging step: step, losses, lr, images/s since the last line
    and ETA (printed with `progress.say`)."""

    def __init__(self, total_steps: int, start_step: int, images_per_step: int):
        self.total = total_steps
        self.images_per_step = images_per_step
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._first = True  # the first line's time includes compiling the step

    def line(self, step: int, metrics: dict) -> str:
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        seconds_per_step = (now - self._last_time) / steps
        self._last_step, self._last_time = step, now
        eta = seconds_per_step * (self.total - step)
        if self._first:
            self._first = False
            timing = (
                f"{progress.format_seconds(seconds_per_step * steps)} with compiling "
                "| speed and ETA from the next line"
            )
        else:
            timing = (
                f"{self.images_per_step / seconds_per_step:.2f} img/s "
                f"| ETA {progress.format_seconds(eta)}"
            )
        losses = " ".join(
            f"{k.removeprefix('loss/')}={v:.4f}"
            for k, v in metrics.items()
            if k.startswith("loss/")
        )
        extra = ""
        if "pseudo_label_quality" in metrics:
            extra = f" q={metrics['pseudo_label_quality']:.3f}"
        return (
            f"step {step}/{self.total} {losses}{extra} lr={metrics['lr']:.3e} | {timing}"
        )
