"""Inference-side timings: the jitted Segmentor forward (next to transformers' SegFormer)
and the two depthwise-conv formulations (next to torch's grouped Conv2d)."""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lcmsm_jax import models
from lcmsm_jax.bench import torch_segformer
from lcmsm_jax.bench.measure import alternate, time_call
from lcmsm_jax.models import layers


def jax_forward_fn(model_config, batch: int, size: tuple[int, int], heads=("decode", "lcmsm")):
    """A zero-argument callable running the jitted forward on a fixed random batch
    [B, H, W, 3]; it returns {head: logits}."""
    model = models.build_segmentor(model_config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    images = jax.random.normal(jax.random.key(0), (batch, *size, 3), jnp.float32)
    text = jax.random.normal(jax.random.key(1), (model_config.num_classes, model_config.text_dim))

    @jax.jit
    def forward(state, images, text):
        out = nnx.merge(graphdef, state)(images, text, train=False, heads=heads)
        return {k: out[k] for k in heads}

    return lambda: forward(state, images, text)


def benchmark_forward(
    config: ml_collections.ConfigDict,
    *,
    batch: int,
    size: tuple[int, int],
    repeats: int,
    compare_torch: bool,
) -> dict:
    """Seconds per image of the jitted forward (both heads), and with `compare_torch` our
    SegFormer twin next to transformers' SegFormer (torch / ours = the speed-up)."""
    results = {}
    t0 = time.perf_counter()
    fn = jax_forward_fn(config.model, batch, size)
    jax.block_until_ready(fn())
    results["jax_lcmsm_compile_s"] = time.perf_counter() - t0
    results["jax_lcmsm_s_per_image"] = time_call(fn, repeats=repeats, warmup=0) / batch
    if compare_torch:
        same, decoder_dim = torch_segformer.segformer_twin(config.model)
        ours = jax_forward_fn(same, batch, size, heads=("decode",))
        theirs = torch_segformer.forward_fn(config.model.backbone, batch, size, decoder_dim)
        ours_s, theirs_s = alternate(ours, theirs, repeats)
        results["jax_segformer_s_per_image"] = ours_s / batch
        results["torch_segformer_s_per_image"] = theirs_s / batch
        results["segformer_speedup_vs_torch"] = (
            results["torch_segformer_s_per_image"] / results["jax_segformer_s_per_image"]
        )
    return results


DEPTHWISE_SHAPES = {
    # name: (shape [B, H, W, C], dilation) at a 512 crop
    "mixffn_stage1": ((2, 128, 128, 256), 1),
    "mixffn_stage3": ((2, 32, 32, 1280), 1),
    "aspp_d12": ((2, 128, 128, 2048), 12),
}


def benchmark_depthwise(*, repeats: int, compare_torch: bool) -> dict:
    """Milliseconds per call of each depthwise formulation at `DEPTHWISE_SHAPES`, and which
    one `auto` picks on this machine."""
    results = {}
    for name, (shape, dilation) in DEPTHWISE_SHAPES.items():
        x = jax.random.normal(jax.random.key(0), shape)
        kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, shape[-1]))
        row = {}
        for impl in ("conv", "shifted_sum"):
            fn = jax.jit(partial(layers.depthwise_conv2d, dilation=dilation, impl=impl))
            row[f"jax_{impl}_ms"] = 1e3 * time_call(partial(fn, x, kernel), repeats=repeats)
        if compare_torch:
            import torch

            conv = torch.nn.Conv2d(
                shape[-1], shape[-1], 3, padding=dilation, dilation=dilation, groups=shape[-1]
            )
            xt = torch.randn(shape[0], shape[-1], shape[1], shape[2])

            def run(conv=conv, xt=xt):
                with torch.no_grad():
                    return conv(xt)

            row["torch_grouped_ms"] = 1e3 * time_call(run, repeats=repeats)
        results[name] = row
    results["auto_picks"] = layers.resolve_depthwise_impl("auto")
    return results
