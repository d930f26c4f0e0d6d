"""Writing files so that a reader sees the old file or the complete new one, never a part.

Every file the package writes for people or for a later run (results JSON, tables, PNGs,
text embeddings, manifests, metric logs) goes through `replace_file`: the content is written
to a hidden temporary file in the same folder, flushed to disk, then renamed onto the
target. A failure or Ctrl-C part-way removes the temporary file and leaves the old one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replace_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing ("w" text, "wb" bytes); on a clean
    exit it is flushed, fsync'ed and renamed onto `path` (parent folders are created).

        with replace_file("out/eval.json") as f:
            f.write(text)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"replace_file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file private (0600); give it the permissions of a normal file.
        os.chmod(tmp_name, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException: also clean up after Ctrl-C in the middle of the write.
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with replace_file(path, "w") as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with replace_file(path, "wb") as f:
        f.write(data)
    return Path(path)
