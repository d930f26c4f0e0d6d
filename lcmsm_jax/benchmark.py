"""Speed measurements, always side by side in one process (this kind of machine is noisy).

`lcmsm-benchmark --config C.py --what W [--compare-torch] [--json OUT]` measures (W):
  * step: the jitted LC-MSM `train_step` of the config (crop size and batch size from
    `config.data`, synthetic images and labels): compile time, median synchronised step
    time, images/s (2 x batch per step), FLOPs per step from XLA's cost analysis of the
    compiled step, achieved FLOP/s and utilisation of the device's peak, peak memory;
  * segmentor: forward + backward of the Segmentor alone (both heads, cross-entropy), and,
    with --compare-torch, transformers' SegFormer (same MiT, all-MLP head) doing forward +
    backward next to our model built with the same head; ratio = torch time / ours;
  * data: input-pipeline images/s per grain worker count (true-size synthetic PNGs);
  * forward: jitted Segmentor forward (backbone + both heads) per image, and, with
    --compare-torch, PyTorch SegFormer (transformers) of the same MiT size next to our model
    built with the same all-MLP head, on the same input size and thread count;
  * depthwise: the two depthwise-conv formulations (grouped conv, shifted sums) at the
    shapes the model uses, next to torch's grouped Conv2d, and which one `auto` picks here.

The compute dtype is `config.model.dtype` (`--config.model.dtype=bfloat16`); every printed
figure names the device, the dtype and the shapes.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcmsm_jax import models
from lcmsm_jax.models import layers

WHATS = ("forward", "depthwise", "step", "segmentor", "data")

# Dense peak FLOP/s by device (a substring of jax's `device_kind`, first match wins) and
# compute dtype, from the vendors' data sheets. GPU float32 is the non-tensor-core peak:
# XLA may run float32 matmuls as TF32 on tensor cores, so float32 utilisation can exceed
# 100%. No entry (CPU, other chips): utilisation "n/a".
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),  # SXM
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),
    ("TPU v4", {"bfloat16": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12}),  # v5e
    ("TPU v5e", {"bfloat16": 197e12}),
)

# Classes of the synthetic label maps: road, sidewalk, building, vegetation, sky, person,
# car (person and car are "thing" classes, so the feature distance has cells to work on).
SYNTHETIC_CLASSES = (0, 1, 2, 8, 10, 11, 13)


# --------------------------------------------------------------------------- reporting


def device_info(device: jax.Device | None = None) -> dict:
    """Which device runs the measurement: {"device", "device_kind", "backend"}."""
    device = device or jax.local_devices()[0]
    return {"device": str(device), "device_kind": device.device_kind, "backend": device.platform}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The table's dense peak FLOP/s for this device and dtype, or None if unknown."""
    for pattern, peaks in PEAK_FLOPS:
        if pattern.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def compiled_cost(compiled) -> dict:
    """{"flops", "bytes_accessed"} of a compiled computation from XLA's cost analysis
    (jax returns a dict, older versions a list with one dict per computation); None where
    XLA does not say."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, dict):
        analysis = [analysis]
    analysis = [a for a in analysis or [] if a]
    if not analysis:
        return {"flops": None, "bytes_accessed": None}
    flops = sum(float(a.get("flops", 0.0)) for a in analysis)
    accessed = sum(float(a.get("bytes accessed", 0.0)) for a in analysis)
    return {"flops": flops or None, "bytes_accessed": accessed or None}


def compiled_memory(compiled) -> dict:
    """XLA's static memory plan of a compiled computation, in bytes: arguments, outputs,
    temporaries, and their sum less donated (aliased) buffers."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    arguments, outputs = stats.argument_size_in_bytes, stats.output_size_in_bytes
    temp, alias = stats.temp_size_in_bytes, stats.alias_size_in_bytes
    return {
        "xla_argument_bytes": arguments,
        "xla_output_bytes": outputs,
        "xla_temp_bytes": temp,
        "xla_total_bytes": arguments + outputs + temp - alias,
    }


def peak_memory(device: jax.Device | None = None) -> dict:
    """Peak memory since the process started: the device allocator's peak_bytes_in_use on
    GPU/TPU, else (CPU) the process's maximum resident set size."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return {
            "peak_memory_bytes": int(stats["peak_bytes_in_use"]),
            "peak_memory_source": f"{device.platform} peak_bytes_in_use",
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_memory_bytes": int(rss), "peak_memory_source": "process max RSS (host)"}


def throughput_figures(flops: float | None, seconds: float, device_kind: str, dtype: str) -> dict:
    """Achieved FLOP/s and utilisation of the table's peak ("n/a" without a peak)."""
    achieved = flops / seconds if flops and seconds > 0 else None
    peak = peak_flops(device_kind, dtype)
    return {
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak,
        "utilisation": achieved / peak if achieved and peak else "n/a",
    }


def _gb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


def _si(n: float | None, unit: str) -> str:
    """12345678 -> '12.3 M<unit>' (None -> 'n/a')."""
    if n is None:
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


def describe(result: dict) -> str:
    """One line: what, device, dtype and shapes, then the figures of one measurement."""
    context = (
        f"{result['device_kind']} ({result['backend']}) | {result['dtype']} | {result['shapes']}"
    )
    figures = []
    if "trace_lower_s" in result:
        figures.append(
            f"compile {result['compile_s']:.1f} s (trace+lower {result['trace_lower_s']:.1f} s,"
            f" XLA {result['xla_compile_s']:.1f} s)"
        )
    elif "compile_s" in result:
        figures.append(f"compile {result['compile_s']:.1f} s")
    if "step_s" in result:
        figures.append(f"{result['step_s'] * 1e3:.1f} ms/step (median of {result['repeats']})")
    if "images_per_s" in result:
        figures.append(f"{result['images_per_s']:.2f} images/s")
    if "flops" in result:
        figures.append(f"{_si(result['flops'], 'FLOP')}/step")
    if result.get("achieved_flops_per_s"):
        util = result["utilisation"]
        if not isinstance(util, str):
            util = f"{100 * util:.1f}% of {_si(result['peak_flops_per_s'], 'FLOP/s')}"
        figures.append(f"{_si(result['achieved_flops_per_s'], 'FLOP/s')} (utilisation {util})")
    if "peak_memory_bytes" in result:
        figures.append(
            f"peak memory {_gb(result['peak_memory_bytes'])} ({result['peak_memory_source']})"
        )
    if "xla_total_bytes" in result:
        figures.append(f"XLA plan {_gb(result['xla_total_bytes'])}")
    return f"[{result['what']}] {context}: " + ", ".join(figures)


# --------------------------------------------------------------------------- inputs


def synthetic_labels(batch: int, size: Sequence[int], seed: int = 0) -> np.ndarray:
    """[B, H, W] int32 label maps of 8 x 8 blocks drawn from `SYNTHETIC_CLASSES`."""
    rng = np.random.default_rng(seed)
    height, width = size
    cells = rng.choice(np.asarray(SYNTHETIC_CLASSES, np.int32), (batch, 8, 8))
    rows, cols = math.ceil(height / 8), math.ceil(width / 8)
    return np.repeat(np.repeat(cells, rows, axis=1), cols, axis=2)[:, :height, :width]


def synthetic_batch(batch: int, size: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """A training batch: normalised random source/target images [B, H, W, 3] float32 and
    source labels [B, H, W] int32."""
    rng = np.random.default_rng(seed)
    shape = (batch, *size, 3)
    return {
        "source_image": rng.standard_normal(shape, np.float32),
        "source_label": synthetic_labels(batch, size, seed),
        "target_image": rng.standard_normal(shape, np.float32),
    }


# --------------------------------------------------------------------------- timing


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


def _torch_segformer(variant: str, decoder_dim: int):
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


def torch_segformer_fn(variant: str, batch: int, size: tuple[int, int], decoder_dim: int):
    """A zero-argument callable running transformers' SegFormer (eval, no grad)."""
    import torch

    model = _torch_segformer(variant, decoder_dim).eval()
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


# --------------------------------------------------------------------------- the train step


def _measurement(what: str, dtype: str, shapes: str, device: jax.Device) -> dict:
    return {"what": what, **device_info(device), "dtype": dtype, "shapes": shapes}


def build_train_step(config, *, seed: int = 0):
    """The jitted train step of `config` as `lcmsm-train` builds it (state donated), its
    initial state and a synthetic batch of the config's crop and batch size."""
    from lcmsm_jax import optim, text
    from lcmsm_jax.uda import step as uda_step

    model = models.Segmentor(config.model, rngs=nnx.Rngs(seed))
    graphdef, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    imnet_graphdef = nnx.split(model.backbone)[0]
    tx, schedule = optim.make_optimizer(config.optim, params.to_pure_dict(), config.train.steps)
    embeddings = text.random_embeddings(seed, config.model.num_classes, config.model.text_dim)
    state = uda_step.init_state(model, tx, embeddings)
    step_fn = uda_step.make_train_step(
        config, graphdef, imnet_graphdef, tx, schedule, with_images=config.train.image_every > 0
    )
    batch = synthetic_batch(config.data.batch_size, tuple(config.data.crop_size), seed)
    return jax.jit(step_fn, donate_argnums=(0,)), state, batch


def benchmark_step(config, *, repeats: int, warmup: int) -> dict:
    """Compile and time `train_step` on one device (see the module docstring)."""
    batch_size, (height, width) = config.data.batch_size, tuple(config.data.crop_size)
    device = jax.local_devices()[0]
    result = _measurement(
        "step",
        config.model.dtype,
        f"{config.model.backbone}, {batch_size}+{batch_size} images {height}x{width}",
        device,
    )
    jitted, state, batch = build_train_step(config)
    # On the device beforehand, as lcmsm-train's batches are: no host transfer is timed.
    batch, rng = jax.device_put((batch, jax.random.key(0)), device)
    start = time.perf_counter()
    lowered = jitted.lower(state, batch, rng)
    # Tracing + lowering run in Python in every process; only XLA's part can come from the
    # persistent compilation cache (lcmsm_jax/compile_cache.py).
    result["trace_lower_s"] = time.perf_counter() - start
    compiled = lowered.compile()
    result["compile_s"] = time.perf_counter() - start
    result["xla_compile_s"] = result["compile_s"] - result["trace_lower_s"]
    result.update(compiled_cost(compiled))
    result.update(compiled_memory(compiled))
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, rng)  # the state is donated: rebind it
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    result["step_s"] = float(np.median(times))
    result["step_s_min"], result["step_s_max"] = min(times), max(times)
    result["repeats"] = repeats
    result["images_per_s"] = 2 * batch_size / result["step_s"]
    result["loss_total"] = float(metrics["loss/total"])
    result["with_images"] = bool(config.train.image_every > 0)
    result.update(throughput_figures(result["flops"], result["step_s"], device.device_kind,
                                     config.model.dtype))  # fmt: skip
    result.update(peak_memory(device))
    return result


# --------------------------------------------------------------------------- segmentor fwd+bwd


def jax_train_pass(model_config, batch: int, size: Sequence[int], heads: Sequence[str]):
    """Forward + backward of the Segmentor (training mode, CE on each head), compiled.

    Returns (run, compiled, compile seconds); `run()` gives (loss, new batch stats), grads.
    """
    from lcmsm_jax.uda import losses

    model = models.Segmentor(model_config, rngs=nnx.Rngs(0))
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = params.to_pure_dict(), batch_stats.to_pure_dict()
    data = synthetic_batch(batch, size)
    images, labels = data["source_image"], data["source_label"]
    text = jax.random.normal(
        jax.random.key(1), (model_config.num_classes, model_config.text_dim), jnp.float32
    )

    def loss_fn(params, batch_stats, images, labels, text, rng):
        net = nnx.merge(graphdef, params, batch_stats)
        out = net(images, text, train=True, rng=rng, heads=tuple(heads))
        loss = sum(losses.cross_entropy(out[head], labels) for head in heads)
        return loss, nnx.state(net, nnx.BatchStat).to_pure_dict()

    args = jax.device_put((params, batch_stats, images, labels, text, jax.random.key(2)))
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(*args).compile()
    compile_s = time.perf_counter() - start
    return (lambda: compiled(*args)), compiled, compile_s


def _torch_device():
    import torch

    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def torch_segformer_train_fn(
    variant: str, batch: int, size: Sequence[int], decoder_dim: int, dtype: str
) -> tuple[Callable[[], object], float | None]:
    """transformers' SegFormer doing forward + backward (train mode, its own CE on
    upsampled logits), on the GPU when JAX runs on one; bfloat16 through torch.autocast.

    Returns (run, FLOPs of one run from torch's FlopCounterMode or None).
    """
    import torch

    device = _torch_device()
    model = _torch_segformer(variant, decoder_dim).train().to(device)
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


def _alternate(ours: Callable, theirs: Callable, repeats: int) -> tuple[float, float]:
    """Median seconds of each, alternating so that machine noise hits both alike."""
    jax.block_until_ready(ours())
    theirs()
    ours_t, theirs_t = [], []
    for _ in range(repeats):
        ours_t.append(time_call(ours, repeats=1, warmup=0))
        theirs_t.append(time_call(theirs, repeats=1, warmup=0))
    return float(np.median(ours_t)), float(np.median(theirs_t))


def _train_pass_result(what, config_model, batch, size, heads, repeats, warmup) -> dict:
    device = jax.local_devices()[0]
    shapes = f"{config_model.backbone}, batch {batch} {size[0]}x{size[1]}, heads {'+'.join(heads)}"
    result = _measurement(what, config_model.dtype, shapes, device)
    run, compiled, result["compile_s"] = jax_train_pass(config_model, batch, size, heads)
    result.update(compiled_cost(compiled))
    result.update(compiled_memory(compiled))
    result["step_s"] = time_call(run, repeats=repeats, warmup=warmup)
    result["repeats"] = repeats
    result["images_per_s"] = batch / result["step_s"]
    result.update(throughput_figures(result["flops"], result["step_s"], device.device_kind,
                                     config_model.dtype))  # fmt: skip
    result.update(peak_memory(device))
    result["_run"] = run
    return result


def benchmark_segmentor(
    config, *, batch: int, size: Sequence[int], repeats: int, warmup: int, compare_torch: bool
) -> dict:
    """Forward + backward of the Segmentor with both heads, and with --compare-torch
    SegFormer (all-MLP head) in JAX next to transformers' in PyTorch."""
    results = {"lcmsm": _train_pass_result("segmentor", config.model, batch, size,
                                           ("decode", "lcmsm"), repeats, warmup)}  # fmt: skip
    if compare_torch:
        decoder_dim = 768 if config.model.backbone != "mit_b0" else 256
        same = config.model.copy_and_resolve_references()
        same.decode_head.fusion = "conv"
        same.decode_head.embed_dim = same.decode_head.channels = decoder_dim
        ours = _train_pass_result("segformer", same, batch, size, ("decode",), repeats, warmup)
        theirs, torch_flops = torch_segformer_train_fn(
            config.model.backbone, batch, size, decoder_dim, config.model.dtype
        )
        ours_s, theirs_s = _alternate(ours["_run"], theirs, repeats)
        ours.update(step_s=ours_s, images_per_s=batch / ours_s)
        ours.update(throughput_figures(ours["flops"], ours_s, ours["device_kind"],
                                       config.model.dtype))  # fmt: skip
        import torch

        ours["torch"] = {
            "device": str(_torch_device()),
            "threads": torch.get_num_threads(),
            "autocast_bf16": config.model.dtype == "bfloat16",
            "step_s": theirs_s,
            "images_per_s": batch / theirs_s,
            "flops": torch_flops,
        }
        ours["torch_over_ours"] = theirs_s / ours_s
        results["segformer"] = ours
    for result in results.values():
        result.pop("_run")
    return results


# --------------------------------------------------------------------------- input pipeline


def benchmark_data(config, *, workers: Sequence[int], num_batches: int, num_images: int) -> dict:
    """Images/s of the training input pipeline (GTA5-size source with rare-class sampling,
    Cityscapes-size target) per grain worker count, on synthetic PNGs of the true sizes."""
    from lcmsm_jax.data import pipeline, rcs, sources, throughput

    batch, crop = config.data.batch_size, tuple(config.data.crop_size)
    result = {
        "what": "data",
        "machine": platform.platform(),
        "shapes": f"batch {batch}, crops {crop[0]}x{crop[1]}, GTA5 1914x1052 -> 1280x720, "
        f"Cityscapes 2048x1024 -> 1024x512",
        "per_worker_count": {},
        # What data.worker_count = -1 gives each of the two training iterators here.
        "automatic_worker_count": pipeline.worker_count(-1, iterators=2),
        "cores": pipeline.available_cores(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: f"{tmp}/{name}" for name in ("gta5", "cityscapes")}
        for name, root in roots.items():
            throughput.write_synthetic(root, name, num_images)
        source = sources.open_source("gta5", roots["gta5"])
        target = sources.open_source("cityscapes", roots["cityscapes"], "train", labels=False)
        counts = rcs.compute_class_counts(source)
        common = dict(batch_size=batch, seed=0, crop_size=crop, num_threads=config.data.num_threads)
        for count in workers:
            source_ds = pipeline.train_dataset(
                source, stream="source", scale=(1280, 720), class_counts=counts,
                worker_count=count, **common,
            )  # fmt: skip
            target_ds = pipeline.train_dataset(
                target, stream="target", scale=(1024, 512), cat_max_ratio=1.0,
                sampling="uniform", worker_count=count, **common,
            )  # fmt: skip
            src = throughput.time_batches(source_ds, num_batches)
            tgt = throughput.time_batches(target_ds, num_batches)
            result["per_worker_count"][str(count)] = {
                "source_images_per_s": src,
                "target_images_per_s": tgt,
                # One step takes B source and B target images.
                "pair_images_per_s": 2.0 / (1.0 / src + 1.0 / tgt),
            }
    return result


def describe_data(result: dict) -> list[str]:
    lines = []
    for count, row in result["per_worker_count"].items():
        lines.append(
            f"[data] host CPU | {result['shapes']} | {count} grain workers: source "
            f"{row['source_images_per_s']:.2f}, target {row['target_images_per_s']:.2f}, "
            f"pair {row['pair_images_per_s']:.2f} images/s"
        )
    lines.append(
        f"[data] data.worker_count = -1 gives {result['automatic_worker_count']} workers per "
        f"domain on this host ({result['cores']} cores)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    from absl import flags

    from lcmsm_jax import config_cli

    def define(fv):
        flags.DEFINE_multi_enum("what", ["forward", "depthwise"], WHATS,
                                "Which measurements to run.", flag_values=fv)  # fmt: skip
        flags.DEFINE_bool("compare_torch", False, "Measure the PyTorch counterpart side by side.",
                          flag_values=fv)  # fmt: skip
        flags.DEFINE_integer("batch", None, "Images per call (forward: 1; segmentor: "
                             "config.data.batch_size). The step uses the config's.",
                             flag_values=fv)  # fmt: skip
        flags.DEFINE_integer("size", None, "Square input size in pixels (forward: 512; "
                             "segmentor: config.data.crop_size).", flag_values=fv)  # fmt: skip
        flags.DEFINE_integer("repeats", 3, "Timed repetitions (median reported).", flag_values=fv)
        flags.DEFINE_integer("warmup", 1, "Untimed calls after compilation (step, segmentor).",
                             flag_values=fv)  # fmt: skip
        flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts for --what data.",
                          flag_values=fv)  # fmt: skip
        flags.DEFINE_integer("data_batches", 5, "Timed batches per worker count (data).",
                             flag_values=fv)  # fmt: skip
        flags.DEFINE_integer("data_images", 3, "Synthetic images per domain (data).",
                             flag_values=fv)  # fmt: skip
        flags.DEFINE_string("json", None, "Also write the results to this JSON file.",
                            flag_values=fv)  # fmt: skip

    try:
        fv = config_cli.parse("lcmsm-benchmark", argv, define)
    except config_cli.UsageError as err:
        print(err)
        return 2
    config = fv.config
    report = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()],
        "device_kind": jax.local_devices()[0].device_kind,
        "machine": platform.platform(),
        "jax": jax.__version__,
        "backbone": config.model.backbone,
        "dtype": config.model.dtype,
        "remat": config.model.get("remat", "none"),
        # Set: a compile time may be a load from this cache (a rerun).
        "compilation_cache": jax.config.jax_compilation_cache_dir,
    }
    # The step first: peak device memory counts from the process start.
    if "step" in fv.what:
        report["step"] = benchmark_step(config, repeats=fv.repeats, warmup=fv.warmup)
        print(describe(report["step"]), flush=True)
    if "segmentor" in fv.what:
        crop = tuple(config.data.crop_size)
        report["segmentor"] = benchmark_segmentor(
            config,
            batch=fv.batch or config.data.batch_size,
            size=(fv.size, fv.size) if fv.size else crop,
            repeats=fv.repeats,
            warmup=fv.warmup,
            compare_torch=fv.compare_torch,
        )
        for result in report["segmentor"].values():
            print(describe(result), flush=True)
        if "segformer" in report["segmentor"]:
            seg = report["segmentor"]["segformer"]
            print(f"[segformer] torch ({seg['torch']['device']}, {seg['torch']['threads']} "
                  f"threads) {seg['torch']['step_s'] * 1e3:.1f} ms fwd+bwd, ours "
                  f"{seg['step_s'] * 1e3:.1f} ms: torch/ours = {seg['torch_over_ours']:.2f} "
                  f"| {seg['dtype']} | {seg['shapes']}", flush=True)  # fmt: skip
    if "data" in fv.what:
        report["data"] = benchmark_data(
            config,
            workers=[int(w) for w in fv.workers],
            num_batches=fv.data_batches,
            num_images=fv.data_images,
        )
        for line in describe_data(report["data"]):
            print(line, flush=True)
        if "step" in report:
            # Worker processes one step needs at the measured step rate.
            need = report["step"]["images_per_s"]
            for row in report["data"]["per_worker_count"].values():
                row["step_images_per_s"] = need
    batch, size = fv.batch or 1, fv.size or 512
    report.update(batch=batch, size=size)
    if "depthwise" in fv.what:
        report["depthwise"] = benchmark_depthwise(
            repeats=fv.repeats, compare_torch=fv.compare_torch
        )
        print(json.dumps({"depthwise": report["depthwise"]}, indent=2), flush=True)
    if "forward" in fv.what:
        report["forward"] = benchmark_forward(
            config,
            batch=batch,
            size=(size, size),
            repeats=fv.repeats,
            compare_torch=fv.compare_torch,
        )
        print(json.dumps({"forward": report["forward"]}, indent=2), flush=True)
    if fv.json:
        with open(fv.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
