"""Console output of every command: `say` for a message, `Progress` for long loops.

Output is plain lines on stdout, flushed at once, so that logs of cluster jobs (a file, not
a terminal) read in order; on a terminal a `Progress` rewrites one line in place instead.
Only process 0 of a multi-process JAX run prints, so N processes give one log, not N.
"""

from __future__ import annotations

import platform
import sys
import time
from typing import TextIO


def is_main_process() -> bool:
    """False on JAX processes other than 0. A command that never imported JAX (dataset
    preparation, export) runs as one process."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def say(message: str, stream: TextIO | None = None) -> None:
    """Print one line (to stdout unless `stream`), flushed; silent on processes other than 0."""
    if is_main_process():
        print(message, file=stream or sys.stdout, flush=True)


# The packages whose versions change a run's numbers (XLA's numerics, random streams,
# image decoding, data order).
_PACKAGES = (
    "jax", "jaxlib", "ml_dtypes", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "pillow",
)  # fmt: skip


def versions() -> str:
    """`python 3.11.7, jax 0.10.2, ...`: printed at the start of every run, so that two runs'
    figures can be compared knowing what they ran on."""
    from importlib import metadata

    found = [f"python {platform.python_version()}"]
    for package in _PACKAGES:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def format_seconds(seconds: float) -> str:
    """`1h05m`, `4m07s`: a duration for an ETA."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """`title: done/total unit (pct), rate unit/s, ETA` for a loop over `total` items.

    On a terminal the line is rewritten in place (at most 4 times a second); otherwise a line
    is printed every `every_s` seconds and (with `tenths`) at each tenth of the total, so a
    log file gets a bounded number of lines. `finish()` prints the final line. With
    `skip_first` the rate leaves out the first update, which includes compilation. `stream`
    is a text file, "stdout" (sys.stdout when the Progress is made) or None (silent).

        progress = Progress("eval", total=500, unit="images")
        for batch in batches:
            ...
            progress.update(len(batch))
        progress.finish()
    """

    def __init__(
        self,
        title: str,
        total: int | None,
        *,
        unit: str = "images",
        stream: TextIO | None | str = "stdout",
        every_s: float = 10.0,
        skip_first: bool = False,
        tenths: bool = True,
    ):
        self.title, self.total, self.unit, self.every_s = title, total, unit, every_s
        if stream == "stdout":
            stream = sys.stdout  # looked up now, so redirections made later apply
        self.stream = stream if is_main_process() else None
        self.skip_first, self.tenths = skip_first, tenths
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.done = self.first = 0
        self.created = self.start = self.last = time.monotonic()
        self.shown_tenths = 0
        self.finished = False

    def rate(self) -> float:
        """Items per second (after the first update with `skip_first`)."""
        now = time.monotonic()
        if self.skip_first and self.done > self.first:
            return (self.done - self.first) / max(now - self.start, 1e-9)
        return self.done / max(now - self.created, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        if self.total:
            text = (f"{self.done}/{self.total} {self.unit} "
                    f"({100 * self.done / self.total:.0f}%), {rate:.1f} {self.unit}/s")  # fmt: skip
            if self.done < self.total and rate > 0:
                text += f", ETA {format_seconds((self.total - self.done) / rate)}"
        else:
            text = f"{self.done} {self.unit}, {rate:.1f} {self.unit}/s"
        return f"{self.title}: {text}"

    def update(self, n: int = 1) -> None:
        now = time.monotonic()
        if self.skip_first and not self.first:
            self.first, self.start = n, now
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        if self.stream is None:
            return
        tenths = self.done * 10 // self.total if self.total and self.tenths else 0
        if self.tty:
            due = now - self.last >= 0.25
        else:
            due = now - self.last >= self.every_s or tenths > self.shown_tenths
        if due and not (self.total and self.done == self.total):  # the end: finish() shows it
            self.last, self.shown_tenths = now, tenths
            self._write(self.line(), final=False)

    def finish(self) -> None:
        """Show the final line (once)."""
        if self.stream is not None and not self.finished:
            self._write(self.line(), final=True)
        self.finished = True

    def _write(self, line: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
