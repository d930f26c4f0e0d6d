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


def make_temp_folder(parent: str | os.PathLike, prefix: str) -> str:
    """A new hidden folder in `parent` to build an output in before renaming it into place.

    tempfile.mkdtemp makes it private (0700); once renamed it is the output itself, so it
    gets the permissions of an ordinary mkdir (0777 less the umask)."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


# ----------------------------------------------------------------------------- output flags


class OutputPathError(OSError):
    """An output flag (`--out`, `--export-dir`, ...) names a path that cannot be written;
    the message names the flag, the path and what to pass instead."""


def check_output_folder(folder: str | os.PathLike, flag: str) -> Path:
    """Refuse (OutputPathError) an output folder that is a file or cannot be created or
    written into, before any work is done. Nothing is created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(
            f"{flag} {folder} is a file; pass a folder (it is created if missing)"
        )
    _check_creatable(folder, flag, folder)
    return folder


def check_output_file(path: str | os.PathLike, flag: str, suffix: str = "") -> Path:
    """Refuse (OutputPathError) an output file path that is a folder, or whose folder
    cannot be created or written into. Nothing is created. `suffix` (".npz") goes into the
    example file name the message suggests."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(
            f"{flag} {path} is a folder; pass a file name (e.g. {path / ('out' + suffix)})"
        )
    _check_creatable(path.parent, flag, path)
    return path


def make_output_folder(folder: str | os.PathLike, flag: str) -> Path:
    """`check_output_folder`, then create `folder` (and its parents); an error of the
    creation names the flag too."""
    folder = check_output_folder(folder, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(
            f"{flag} {folder}: cannot create it ({err.strerror or err}); pass a folder you can "
            "write to"
        ) from err
    return folder


def _check_creatable(folder: Path, flag: str, given: Path) -> None:
    """`folder` is a writable folder, or can be created in its nearest existing ancestor."""
    existing = folder.absolute()
    while not (existing.exists() or existing.is_symlink()):  # a dangling link exists too
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(
            f"{flag} {given}: {existing} is not a folder; pass a path in a folder that exists or "
            "can be created"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "write into" if existing == folder.absolute() else f"create {folder} in"
        raise OutputPathError(
            f"{flag} {given}: cannot {where} {existing} (not writable); pass a path you can "
            "write to"
        )
