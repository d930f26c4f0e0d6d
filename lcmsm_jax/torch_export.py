"""Segmentor parameters -> a PyTorch state_dict in the official layouts (the inverse of
`convert`), for evaluating or sharing a run with the PyTorch code bases.

Names are mmseg's: `backbone.block3.17.attn.q.weight` (one entry per MiT block),
`decode_head.*` (DAFormer head), `vlc_head.*` (LC-MSM head), `text_embed_net.*`;
Linear kernels (in, out) -> (out, in), conv kernels HWIO -> OIHW (a depthwise (k, k, 1, C)
-> (C, 1, k, k)), BatchNorm statistics as `running_mean` / `running_var` with a
`num_batches_tracked` counter. A multi-resolution model is written in HRDA's layout: each
wrapped head under `<head>.head.*`, its scale attention under `<head>.scale_attention.*`.
docs/method.md §2.2 (stacked blocks) and docs/evaluation.md ("Checkpoints").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flax import nnx

from lcmsm_jax import atomic, models

Array = np.ndarray

_LEAF_TO_KIND = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
# Our attention head name -> the HRDA-wrapped head it belongs to.
_HRDA_HEADS = {"decode": "decode_head", "lcmsm": "vlc_head"}


def _torch_module_name(module: tuple, multires: bool) -> str:
    """Our module path -> the official module name (the converter's renames, reversed)."""
    name = ".".join(str(p) for p in module)
    if module[-2:] == ("mlp", "dwconv"):
        name += ".dwconv"  # mmseg's MixFFN wraps the depthwise conv in a `DWConv`
    if module == ("vlc_head", "spatial_block"):
        name += ".depthwise.depthwise"  # a single depthwise spatial block (arch option 2)
    if multires:
        if module[0] == "attention_head":
            return f"{_HRDA_HEADS[module[1]]}.scale_attention." + ".".join(map(str, module[2:]))
        if module[0] in _HRDA_HEADS.values():
            return f"{module[0]}.head." + name.split(".", 1)[1]
    return name


def _torch_layout(value: Array) -> Array:
    """Ours -> torch: (in, out) -> (out, in); HWIO -> OIHW; vectors unchanged."""
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    return value


def to_torch_state_dict(model: nnx.Module) -> dict[str, Array]:
    """Every Param and BatchStat of `model` (a `Segmentor` or `MultiResSegmentor`) under its
    official name and in torch's layout; `convert.load_torch_state_dict` reads it back into
    the same values bit for bit."""
    multires = hasattr(model, "attention_head")
    out: dict[str, Array] = {}
    for path, value in models.per_block_arrays(model).items():
        *module, leaf = path
        name = _torch_module_name(tuple(module), multires)
        out[f"{name}.{_LEAF_TO_KIND[leaf]}"] = _torch_layout(np.asarray(value))
        if leaf == "mean":
            out[f"{name}.num_batches_tracked"] = np.array(0, np.int64)
    return out


def evaluation_settings(config) -> dict:
    """What the official evaluation needs besides the weights (mmseg test_cfg and model)."""
    model = config.model
    return {
        "backbone": model.backbone,
        "num_classes": int(model.num_classes),
        "decode_head": {"embed_dim": int(model.decode_head.embed_dim),
                        "channels": int(model.decode_head.channels),
                        "fusion": model.decode_head.fusion},  # fmt: skip
        "lcmsm_head": {"embed_dim": int(model.lcmsm_head.embed_dim),
                       "channels": int(model.lcmsm_head.channels),
                       "tau": float(model.lcmsm_head.tau)},  # fmt: skip
        "text_dim": int(model.text_dim),
        "test_cfg": {"mode": config.eval.mode, "crop_size": list(config.eval.crop),
                     "stride": list(config.eval.stride)},  # fmt: skip
        "multires": bool(model.get("hrda", {}).get("enabled", False)),
    }


def check_destination(path: str | os.PathLike) -> Path:
    """Refuse an export file name before any work: wrong suffix, existing, unwritable."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pth", ".safetensors"):
        raise ValueError(f"--export {path}: expected a .pth or .safetensors file name")
    if path.exists():
        raise FileExistsError(f"--export {path} already exists; remove it or choose another name")
    return atomic.check_output_file(path, "--export", suffix)


def write(state_dict: dict[str, Array], path: str | os.PathLike, settings: dict) -> list[Path]:
    """Write `state_dict` to `path` (`.pth` via torch.save, or `.safetensors`) and
    `settings` to `<path>.json`, each atomically; returns the files written."""
    path = check_destination(path)
    if path.suffix.lower() == ".pth":
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
        with atomic.replace_file(path, "wb") as f:
            torch.save({"state_dict": tensors, "meta": {"settings": settings}}, f)
    else:
        from safetensors.numpy import save

        atomic.write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in state_dict.items()}))
    sidecar = path.with_suffix(path.suffix + ".json")
    atomic.write_text(sidecar, json.dumps(settings, indent=2) + "\n")
    return [path, sidecar]
