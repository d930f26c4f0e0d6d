"""One training run per workdir: an advisory lock held for the whole run.

Two `lcmsm-train` on the same workdir would write the same checkpoints and interleave
metrics.jsonl; the second is refused before it does any work, naming the holder. The lock
is `fcntl.flock` on `<workdir>/run.lock`, so the kernel releases it whenever the holder
exits, by any way (a crash or kill -9 included): a stale lock cannot block a restart. The
file keeps the last holder's host, pid and start time for the message. In a multi-process
run only process 0 takes it (the others share its workdir).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from lcmsm_jax import config_cli

LOCK_FILE = "run.lock"


class WorkdirBusyError(config_cli.UsageError):
    """Another live process holds the workdir's lock; the message names it (exit 2)."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process (no holder recorded)"


@contextlib.contextmanager
def hold(workdir: Path, command: str = "lcmsm-train") -> Iterator[Path]:
    """Hold `<workdir>/run.lock` for the duration of the block; raise WorkdirBusyError at
    once if a live process holds it."""
    path = Path(workdir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(
                f"{workdir} is in use by {_holder(path)}; wait for that run to end (or stop "
                "it), or pass another --workdir"
            ) from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} on host {socket.gethostname()}, pid {os.getpid()}, "
                      f"since {started}\n".encode(), 0)  # fmt: skip
        yield path
    finally:
        os.close(fd)  # releases the lock
