"""Training-side timings: the jitted LC-MSM train step of a config, and the Segmentor's
forward + backward alone (next to transformers' SegFormer with --compare-torch)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lcmsm_jax import models
from lcmsm_jax.bench import torch_segformer
from lcmsm_jax.bench.inputs import synthetic_batch
from lcmsm_jax.bench.measure import (
    alternate,
    compiled_cost,
    compiled_memory,
    peak_memory,
    record,
    throughput_figures,
    time_call,
)
from lcmsm_jax.models import hrda

# --------------------------------------------------------------------------- the train step


def build_train_step(config: ml_collections.ConfigDict, *, seed: int = 0):
    """The jitted train step of `config` as `lcmsm-train` builds it (state donated), its
    initial state and a synthetic batch of the config's crop and batch size."""
    from lcmsm_jax import optim, text
    from lcmsm_jax.uda import step as uda_step

    model = models.build_segmentor(config.model, rngs=nnx.Rngs(seed))
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


def abstract_train_step(config: ml_collections.ConfigDict, *, seed: int = 0):
    """`build_train_step` without allocating anything: the jitted step, and its state and
    batch as shapes (`jax.ShapeDtypeStruct`), for compiling ahead of time."""
    from lcmsm_jax import optim
    from lcmsm_jax.uda import step as uda_step

    build = lambda: models.build_segmentor(config.model, rngs=nnx.Rngs(seed))  # noqa: E731
    model = nnx.eval_shape(build)
    graphdef, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    imnet_graphdef = nnx.split(model.backbone)[0]
    tx, schedule = optim.make_optimizer(config.optim, params.to_pure_dict(), config.train.steps)
    embeddings = jax.ShapeDtypeStruct((config.model.num_classes, config.model.text_dim),
                                      jnp.float32)  # fmt: skip
    state = jax.eval_shape(lambda e: uda_step.init_state(build(), tx, e), embeddings)
    step_fn = uda_step.make_train_step(
        config, graphdef, imnet_graphdef, tx, schedule, with_images=config.train.image_every > 0
    )
    batch = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
        synthetic_batch(config.data.batch_size, tuple(config.data.crop_size), seed),
    )
    return jax.jit(step_fn, donate_argnums=(0,)), state, batch


def hlo_size(lowered, compiled) -> dict:
    """Sizes of the program: characters of the lowered StableHLO text and instructions of
    XLA's optimised HLO (all computations, loop bodies counted once)."""
    optimised = compiled.as_text() or ""
    instructions = sum(1 for line in optimised.splitlines() if " = " in line)
    return {"stablehlo_chars": len(lowered.as_text()), "hlo_instructions": instructions}


def step_cost(config: ml_collections.ConfigDict) -> dict:
    """{"flops", "bytes_accessed"} of one train step, from XLA's cost analysis of the step
    lowered with unrolled MiT blocks (not compiled). XLA counts a loop body once whatever
    its trip count, so a compiled program with scanned blocks under-counts by the depth;
    the unrolled program before optimisation counts every block (its FLOPs are within ~6%
    of the optimised program's; its bytes are before fusion, an upper bound)."""
    unrolled = ml_collections.ConfigDict(config.to_dict())
    unrolled.model.scan_blocks = False
    jitted, state, batch = abstract_train_step(unrolled)
    lowered = jitted.lower(state, batch, jax.eval_shape(lambda: jax.random.key(0)))
    return compiled_cost(lowered)


def _lower_and_compile(jitted, args: tuple, result: dict):
    """(lowered, compiled) of `jitted` on `args`; records trace_lower_s, xla_compile_s and
    their sum compile_s in `result`. Tracing + lowering run in Python in every process;
    only XLA's part can come from the persistent compilation cache (compile_cache.py)."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    result["trace_lower_s"] = time.perf_counter() - start
    compiled = lowered.compile()
    result["compile_s"] = time.perf_counter() - start
    result["xla_compile_s"] = result["compile_s"] - result["trace_lower_s"]
    return lowered, compiled


def compile_step(config: ml_collections.ConfigDict) -> dict:
    """Trace, lower and compile the config's train step ahead of time, run nothing.

    Reports trace+lower and XLA compile seconds, the program's size, XLA's cost analysis
    (FLOPs, bytes accessed) and memory plan (arguments, outputs, temporaries, total) and
    the process's peak RSS (which, with nothing allocated, is what compiling needed).
    """
    batch_size, (height, width) = config.data.batch_size, tuple(config.data.crop_size)
    device = jax.local_devices()[0]
    result = record(
        "step_compile",
        config.model.dtype,
        f"{config.model.backbone}, {batch_size}+{batch_size} images {height}x{width}, "
        f"remat {config.model.get('remat', 'none')}, "
        f"{'scanned' if config.model.get('scan_blocks', True) else 'unrolled'} blocks",
        device,
    )
    jitted, state, batch = abstract_train_step(config)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    lowered, compiled = _lower_and_compile(jitted, (state, batch, rng), result)
    result.update(hlo_size(lowered, compiled))
    result.update(compiled_memory(compiled))
    result.update(peak_memory(device))  # before step_cost's tracing adds to it
    result.update(step_cost(config))
    return result


def benchmark_step(config: ml_collections.ConfigDict, *, repeats: int, warmup: int) -> dict:
    """Compile and time `train_step` on one device (see `lcmsm_jax/benchmark.py`)."""
    batch_size, (height, width) = config.data.batch_size, tuple(config.data.crop_size)
    device = jax.local_devices()[0]
    result = record(
        "step",
        config.model.dtype,
        f"{config.model.backbone}, {batch_size}+{batch_size} images {height}x{width}",
        device,
    )
    jitted, state, batch = build_train_step(config)
    # On the device beforehand, as lcmsm-train's batches are: no host transfer is timed.
    batch, rng = jax.device_put((batch, jax.random.key(0)), device)
    compiled = _lower_and_compile(jitted, (state, batch, rng), result)[1]
    result.update(step_cost(config))
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


def jax_train_pass(
    model_config: ml_collections.ConfigDict,
    batch: int,
    size: Sequence[int],
    heads: Sequence[str],
    *,
    compile_it: bool = True,
) -> tuple[Callable[[], object], object, float]:
    """Forward + backward of the Segmentor (training mode, CE on each head), compiled.

    With config.model.hrda on, the multi-resolution training pass instead: `forward_train`
    with a detail box (drawn per call, as the step does) and HRDA's 0.9 fused + 0.1 detail
    CE on each head (`lcmsm_jax/uda/multires.py`); `size` is then the HR crop.
    Returns (run, compiled, compile seconds); `run()` gives (loss, new batch stats), grads.
    `compile_it=False` returns (None, lowered, 0.0).
    """
    from lcmsm_jax.uda import losses

    model = models.build_segmentor(model_config, rngs=nnx.Rngs(0))
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = params.to_pure_dict(), batch_stats.to_pure_dict()
    data = synthetic_batch(batch, size)
    images, labels = data["source_image"], data["source_label"]
    text = jax.random.normal(
        jax.random.key(1), (model_config.num_classes, model_config.text_dim), jnp.float32
    )

    multires = hrda.is_enabled(model_config)

    def loss_fn(params, batch_stats, images, labels, text, rng):
        net = nnx.merge(graphdef, params, batch_stats)
        if multires:
            detail_size = tuple(model_config.hrda.detail_size)
            box = hrda.draw_detail_box(jax.random.fold_in(rng, 1), images.shape[1:3],
                                       detail_size)  # fmt: skip
            out = net.forward_train(images, box, text, heads=tuple(heads), train=True, rng=rng)
            loss = sum(
                hrda.multires_cross_entropy(losses.cross_entropy, out[head], labels, None, box,
                                            detail_size, model_config.hrda.detail_loss_weight)
                for head in heads
            )  # fmt: skip
        else:
            out = net(images, text, train=True, rng=rng, heads=tuple(heads))
            loss = sum(losses.cross_entropy(out[head], labels) for head in heads)
        return loss, nnx.state(net, nnx.BatchStat).to_pure_dict()

    args = jax.device_put((params, batch_stats, images, labels, text, jax.random.key(2)))
    start = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(*args)
    if not compile_it:
        return None, lowered, 0.0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return (lambda: compiled(*args)), compiled, compile_s


def train_pass_cost(model_config, batch, size, heads) -> dict:
    """{"flops", "bytes_accessed"} of `jax_train_pass`, from XLA's cost analysis of the pass
    compiled with unrolled blocks (XLA counts a scanned loop body once; see `step_cost`).
    One model pass compiles quickly unrolled, so this counts the optimised program, as
    torch's FLOP counter counts what runs."""
    unrolled = ml_collections.ConfigDict(model_config.to_dict())
    unrolled.scan_blocks = False
    lowered = jax_train_pass(unrolled, batch, size, heads, compile_it=False)[1]
    return compiled_cost(lowered.compile())


def _train_pass_result(what, config_model, batch, size, heads, repeats, warmup) -> dict:
    device = jax.local_devices()[0]
    shapes = f"{config_model.backbone}, batch {batch} {size[0]}x{size[1]}, heads {'+'.join(heads)}"
    if hrda.is_enabled(config_model):
        detail = tuple(config_model.hrda.detail_size)
        shapes += f", multi-resolution (context x0.5 + detail {detail[0]}x{detail[1]})"
    result = record(what, config_model.dtype, shapes, device)
    run, compiled, result["compile_s"] = jax_train_pass(config_model, batch, size, heads)
    result.update(train_pass_cost(config_model, batch, size, heads))
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
    config: ml_collections.ConfigDict,
    *,
    batch: int,
    size: Sequence[int],
    repeats: int,
    warmup: int,
    compare_torch: bool,
) -> dict:
    """Forward + backward of the Segmentor with both heads, and with --compare-torch
    SegFormer (all-MLP head) in JAX next to transformers' in PyTorch."""
    results = {"lcmsm": _train_pass_result("segmentor", config.model, batch, size,
                                           ("decode", "lcmsm"), repeats, warmup)}  # fmt: skip
    if compare_torch:
        same, decoder_dim = torch_segformer.segformer_twin(config.model)
        ours = _train_pass_result("segformer", same, batch, size, ("decode",), repeats, warmup)
        theirs, torch_flops = torch_segformer.train_fn(
            config.model.backbone, batch, size, decoder_dim, config.model.dtype
        )
        ours_s, theirs_s = alternate(ours["_run"], theirs, repeats)
        ours.update(step_s=ours_s, images_per_s=batch / ours_s)
        ours.update(throughput_figures(ours["flops"], ours_s, ours["device_kind"],
                                       config.model.dtype))  # fmt: skip
        import torch

        ours["torch"] = {
            "device": str(torch_segformer.torch_device()),
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
