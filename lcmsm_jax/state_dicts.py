"""Reading PyTorch-style state_dicts (name -> tensor) from `.pth`, `.safetensors` and `.npz`
files into numpy arrays, with errors that name the file and say what is wrong with it.

torch is imported only for `.pth` files; safetensors and numpy read the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

Array = np.ndarray


class CheckpointFormatError(ValueError):
    """A checkpoint file whose content cannot be read as a state_dict; names the file."""


def read_state_dict(path: str | os.PathLike) -> dict[str, Array]:
    """Read a `.pth`/`.pt`/`.bin` (needs torch), `.safetensors` or `.npz` into name -> array.

    mmcv checkpoints wrap the tensors in {"state_dict": ..., "meta": ...}; that is unwrapped.
    Raises FileNotFoundError for a missing file, ImportError when reading it needs PyTorch,
    and CheckpointFormatError naming the file when its content is not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    suffix = path.suffix.lower()
    readers = dict.fromkeys((".pth", ".pt", ".bin", ".ckpt"), _read_torch)
    readers |= {".safetensors": _read_safetensors, ".npz": _read_npz}
    if suffix not in readers:
        raise ValueError(
            f"{path}: unknown checkpoint type {suffix!r}; expected .pth, .safetensors or .npz"
        )
    try:
        return readers[suffix](path)
    except (ImportError, CheckpointFormatError):
        raise
    except OSError as err:
        if err.errno is not None:
            raise  # a real I/O error (permissions, disk), not the file's content
        raise _not_a_checkpoint(path, err) from err
    except Exception as err:  # noqa: BLE001  (each format library fails in its own way)
        raise _not_a_checkpoint(path, err) from err


def _not_a_checkpoint(path: Path, err: Exception) -> CheckpointFormatError:
    first_line = (str(err).strip().splitlines() or [""])[0]
    detail = f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
    if "Weights only load failed" in first_line:
        return CheckpointFormatError(
            f"{path} holds Python objects besides tensors, which are not loaded for safety "
            f"({detail}); save just its state_dict, e.g. torch.save(ckpt['state_dict'], "
            "'weights.pth'), or convert it to .safetensors"
        )
    if "Object arrays" in first_line:
        return CheckpointFormatError(
            f"{path} holds object arrays, which are not loaded for safety ({detail}); save "
            "only numeric arrays: np.savez(path, **{name: array})"
        )
    return CheckpointFormatError(
        f"{path} is not a PyTorch/safetensors/npz checkpoint ({detail}); check that the file "
        "was downloaded completely"
    )


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(6)


def _read_torch(path: Path) -> dict[str, Array]:
    magic = _magic(path)
    # torch.save writes a zip archive (legacy files: a pickle, protocol >= 2); torch.load
    # takes anything else for a pickle too and fails with unrelated messages (KeyError: 101).
    if not magic.startswith((b"PK\x03\x04", b"\x80")):
        raise _not_a_checkpoint(path, ValueError(f"starts with {magic!r}"))
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs PyTorch; install it or convert the file to .safetensors/.npz"
        ) from err
    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw = _unwrap(raw, path)
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in raw.items() if isinstance(v, torch.Tensor)}  # fmt: skip


def _read_safetensors(path: Path) -> dict[str, Array]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def _read_npz(path: Path) -> dict[str, Array]:
    magic = _magic(path)
    # np.load takes any other content for a pickle and says so, which misleads.
    if not magic.startswith(b"PK\x03\x04"):
        raise _not_a_checkpoint(path, ValueError(f"starts with {magic!r}, not a zip archive"))
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _unwrap(raw, path: Path) -> Mapping:
    for key in ("state_dict", "model_state_dict"):
        if isinstance(raw, Mapping) and key in raw and isinstance(raw[key], Mapping):
            return raw[key]
    if not isinstance(raw, Mapping):
        raise CheckpointFormatError(
            f"{path}: expected a state_dict (name -> tensor), got {type(raw).__name__}"
        )
    return raw
