"""PyTorch-side helpers for the parity tests: a SegFormer config for `transformers` (MiT-B0
by default), NVlabs' LayerNorm epsilons on it, a renaming of its MiT weights to
NVlabs/mmseg names, and a randomisation of norm/bias/BatchNorm values. The official LC-MSM
heads are transcribed in `official_heads.py`.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Give every norm/bias/BN buffer non-trivial values so parity tests see them."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(0.1 * noise)
            elif tensor.ndim == 1:  # LayerNorm / BatchNorm scale
                tensor.copy_(1.0 + 0.1 * noise)


def segformer_config(**overrides):
    """MiT-B0 with a SegFormer all-MLP head; LayerNorm epsilons as the NVlabs MiT."""
    from transformers import SegformerConfig

    kwargs = dict(
        hidden_sizes=[32, 64, 160, 256],
        depths=[2, 2, 2, 2],
        num_attention_heads=[1, 2, 5, 8],
        decoder_hidden_size=64,
        num_labels=19,
        drop_path_rate=0.0,
    )
    kwargs.update(overrides)
    return SegformerConfig(**kwargs)


def match_nvlabs_epsilons_(model: nn.Module) -> None:
    """transformers uses eps 1e-5 in every LayerNorm; NVlabs MiT uses 1e-6 in the block and
    end-of-stage norms. Set them so the reference is the MiT of docs/method.md §2.2."""
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and (
            name.endswith(("layernorm_before", "layernorm_after"))
            or (
                name.endswith("layer_norm")
                and "patch_embeddings" not in name
                and "sequence_reduction" not in name
            )  # fmt: skip
        ):
            module.eps = 1e-6


def hf_to_nvlabs_names(state_dict: dict) -> dict:
    """Rename a transformers SegformerModel state_dict to NVlabs/mmseg MiT names."""
    out = {}
    for name, value in state_dict.items():
        name = name.removeprefix("segformer.")
        parts = name.split(".")
        if parts[0] != "stages":
            continue
        stage = int(parts[1]) + 1
        rest = ".".join(parts[2:])
        if rest.startswith("patch_embeddings."):
            rest = rest.replace("patch_embeddings.layer_norm", "norm").replace(
                "patch_embeddings.", ""
            )
            out[f"patch_embed{stage}.{rest}"] = value
        elif rest.startswith("layer_norm."):
            out[f"norm{stage}.{rest.split('.')[-1]}"] = value
        else:
            for old, new in [
                ("blocks.", ""), ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                ("attention.q_proj", "attn.q"), ("attention.o_proj", "attn.proj"),
                ("attention.sequence_reduction.sequence_reduction", "attn.sr"),
                ("attention.sequence_reduction.layer_norm", "attn.norm"),
            ]:  # fmt: skip
                rest = rest.replace(old, new)
            out[f"block{stage}.{rest}"] = value
    merged = {}
    for name, value in out.items():
        if ".attention.k_proj." in name:
            kind = name.split(".")[-1]
            prefix = name.split(".attention.k_proj.")[0]
            v = out[f"{prefix}.attention.v_proj.{kind}"]
            merged[f"{prefix}.attn.kv.{kind}"] = torch.cat([value, v], dim=0)
        elif ".attention.v_proj." not in name:
            merged[name] = value
    return merged
