"""The PyTorch counterpart: transformers' SegFormer (MiT backbone, all-MLP head) with our
MiT variant's sizes, next to our Segmentor built with the same head (`segformer_twin`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import jax
import ml_collections

from lcmsm_jax import models
from lcmsm_jax.bench.inputs import synthetic_batch


def segformer_twin(
    model_config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, int]:
    """(our model config with SegFormer's all-MLP head, its width): the width transformers'
    SegFormer uses for this MiT variant (256 for B0, 768 otherwise)."""
    decoder_dim = 768 if model_config.backbone != "mit_b0" else 256
    same = model_config.copy_and_resolve_references()
    same.decode_head.fusion = "conv"
    same.decode_head.embed_dim = same.decode_head.channels = decoder_dim
    return same, decoder_dim


def segformer(variant: str, decoder_dim: int):
    """transformers' SegFormer with our MiT variant's sizes and 19 classes (random init)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    spec = models.MIT_VARIANTS[variant]
    config = SegformerConfig(
        hidden_sizes=list(spec.embed_dims),
        depths=list(spec.depths),
        num_attention_heads=list(spec.num_heads),
        decoder_hidden_size=decoder_dim,
        num_labels=19,
    )
    return SegformerForSemanticSegmentation(config)


def forward_fn(variant: str, batch: int, size: tuple[int, int], decoder_dim: int):
    """A zero-argument callable running transformers' SegFormer (eval, no grad) on a fixed
    random batch [B, 3, H, W] on the CPU."""
    import torch

    model = segformer(variant, decoder_dim).eval()
    images = torch.randn(batch, 3, *size)

    def run():
        with torch.no_grad():
            return model(images).logits

    return run


def torch_device():
    """The GPU when JAX runs on one (and torch sees it), else the CPU."""
    import torch

    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def train_fn(
    variant: str, batch: int, size: Sequence[int], decoder_dim: int, dtype: str
) -> tuple[Callable[[], object], float | None]:
    """transformers' SegFormer doing forward + backward (train mode, its own CE on
    upsampled logits), on the GPU when JAX runs on one; bfloat16 through torch.autocast.

    Returns (run, FLOPs of one run from torch's FlopCounterMode or None).
    """
    import torch

    device = torch_device()
    model = segformer(variant, decoder_dim).train().to(device)
    data = synthetic_batch(batch, size)
    images = torch.from_numpy(data["source_image"]).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(data["source_label"]).long().to(device)

    def run():
        model.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        with autocast:
            loss = model(pixel_values=images, labels=labels).loss
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    flops = None
    with contextlib.suppress(Exception):  # an optional cross-check of XLA's count
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            run()
        flops = float(counter.get_total_flops())
    return run, flops
