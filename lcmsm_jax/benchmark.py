"""Speed measurements, always side by side in one process (this kind of machine is noisy).

`lcmsm-benchmark --config configs/gta2cs_lcmsm.py --compare-torch` measures:
  * forward: jitted Segmentor forward (backbone + both heads) per image, and, with
    --compare-torch, PyTorch SegFormer (transformers) of the same MiT size next to our model
    built with the same all-MLP head, on the same input size and thread count;
  * depthwise: the two depthwise-conv formulations (grouped conv, shifted sums) at the
    shapes the model uses, next to torch's grouped Conv2d, and which one `auto` picks here.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcmsm_jax import models
from lcmsm_jax.models import layers


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds (results blocked on, warm-up calls excluded)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jax_forward_fn(model_config, batch: int, size: tuple[int, int], heads=("decode", "lcmsm")):
    """A zero-argument callable running the jitted forward on a fixed random batch."""
    model = models.Segmentor(model_config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    images = jax.random.normal(jax.random.key(0), (batch, *size, 3), jnp.float32)
    text = jax.random.normal(jax.random.key(1), (model_config.num_classes, model_config.text_dim))

    @jax.jit
    def forward(state, images, text):
        out = nnx.merge(graphdef, state)(images, text, train=False, heads=heads)
        return {k: out[k] for k in heads}

    return lambda: forward(state, images, text)


def torch_segformer_fn(variant: str, batch: int, size: tuple[int, int], decoder_dim: int):
    """A zero-argument callable running transformers' SegFormer (eval, no grad)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    spec = models.MIT_VARIANTS[variant]
    config = SegformerConfig(
        hidden_sizes=list(spec.embed_dims),
        depths=list(spec.depths),
        num_attention_heads=list(spec.num_heads),
        decoder_hidden_size=decoder_dim,
        num_labels=19,
    )
    model = SegformerForSemanticSegmentation(config).eval()
    images = torch.randn(batch, 3, *size)

    def run():
        with torch.no_grad():
            return model(images).logits

    return run


def benchmark_forward(config, *, batch: int, size, repeats: int, compare_torch: bool) -> dict:
    results = {}
    t0 = time.perf_counter()
    fn = jax_forward_fn(config.model, batch, size)
    jax.block_until_ready(fn())
    results["jax_lcmsm_compile_s"] = time.perf_counter() - t0
    results["jax_lcmsm_s_per_image"] = time_call(fn, repeats=repeats, warmup=0) / batch
    if compare_torch:
        decoder_dim = 768 if config.model.backbone != "mit_b0" else 256
        same = config.model.copy_and_resolve_references()
        same.decode_head.fusion = "conv"
        same.decode_head.embed_dim = same.decode_head.channels = decoder_dim
        ours = jax_forward_fn(same, batch, size, heads=("decode",))
        theirs = torch_segformer_fn(config.model.backbone, batch, size, decoder_dim)
        # Alternate the two so that machine noise hits both alike.
        ours_t, theirs_t = [], []
        jax.block_until_ready(ours())
        theirs()
        for _ in range(repeats):
            ours_t.append(time_call(ours, repeats=1, warmup=0))
            theirs_t.append(time_call(theirs, repeats=1, warmup=0))
        results["jax_segformer_s_per_image"] = float(np.median(ours_t)) / batch
        results["torch_segformer_s_per_image"] = float(np.median(theirs_t)) / batch
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


def main(argv: list[str] | None = None) -> int:
    from absl import flags

    from lcmsm_jax import config_cli

    def define(fv):
        flags.DEFINE_multi_enum("what", ["forward", "depthwise"], ["forward", "depthwise"],
                                "Which measurements to run.", flag_values=fv)  # fmt: skip
        flags.DEFINE_bool("compare_torch", False, "Measure the PyTorch counterpart side by side.",
                          flag_values=fv)  # fmt: skip
        flags.DEFINE_integer("batch", 1, "Images per forward call.", flag_values=fv)
        flags.DEFINE_integer("size", 512, "Square input size in pixels.", flag_values=fv)
        flags.DEFINE_integer("repeats", 3, "Timed repetitions (median reported).", flag_values=fv)
        flags.DEFINE_string("json", None, "Also write the results to this JSON file.",
                            flag_values=fv)  # fmt: skip

    try:
        fv = config_cli.parse("lcmsm-benchmark", argv, define)
    except config_cli.UsageError as err:
        print(err)
        return 2
    report = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()],
        "machine": platform.platform(),
        "backbone": fv.config.model.backbone,
        "batch": fv.batch,
        "size": fv.size,
    }
    if "depthwise" in fv.what:
        report["depthwise"] = benchmark_depthwise(
            repeats=fv.repeats, compare_torch=fv.compare_torch
        )
        print(json.dumps({"depthwise": report["depthwise"]}, indent=2), flush=True)
    if "forward" in fv.what:
        report["forward"] = benchmark_forward(
            fv.config,
            batch=fv.batch,
            size=(fv.size, fv.size),
            repeats=fv.repeats,
            compare_torch=fv.compare_torch,
        )
        print(json.dumps({"forward": report["forward"]}, indent=2), flush=True)
    if fv.json:
        with open(fv.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
