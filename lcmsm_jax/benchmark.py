"""Speed measurements, always side by side in one process (this kind of machine is noisy).

`lcmsm-benchmark --config C.py --what W [--compare-torch] [--json OUT]` measures (W):
  * step: the jitted LC-MSM `train_step` of the config (crop size and batch size from
    `config.data`, synthetic images and labels): compile time, median synchronised step
    time, images/s (2 x batch per step), FLOPs per step from XLA's cost analysis (of the
    step with unrolled blocks: XLA counts a scanned body once), achieved FLOP/s and
    utilisation of the device's peak, XLA's memory plan, peak memory. With --compile-only
    the step is traced, lowered and compiled ahead of time from shapes alone and nothing
    runs: trace+lower and XLA compile seconds, program size, FLOPs, XLA's memory plan
    (arguments, outputs, temporaries) and the process's peak RSS (what compiling took);
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
figure names the device, the dtype and the shapes. This module is the command (flags, the
report, its printed lines); the measurements are in `lcmsm_jax/bench/`.
"""

from __future__ import annotations

import json
import os
import platform

import jax
from absl import flags

from lcmsm_jax import atomic, compile_cache, config_cli
from lcmsm_jax.bench.forward import benchmark_depthwise, benchmark_forward
from lcmsm_jax.bench.input_pipeline import benchmark_data, describe_data
from lcmsm_jax.bench.training import benchmark_segmentor, benchmark_step, compile_step
from lcmsm_jax.progress import say

PROG = "lcmsm-benchmark"
WHATS = ("forward", "depthwise", "step", "segmentor", "data")
DESCRIPTION = (
    "Time the train step, the Segmentor, the input pipeline or the forward pass (--what),\n"
    "optionally next to PyTorch's SegFormer (--compare-torch)."
)
EXAMPLES = (
    "lcmsm-benchmark --config configs/demo.py --what step --config.model.dtype=bfloat16",
    "lcmsm-benchmark --config configs/gta2cs_lcmsm.py --what segmentor --compare-torch "
    "--json segmentor.json",
    "lcmsm-benchmark --config configs/gta2cs_lcmsm.py --what step --compile-only",
)


# --------------------------------------------------------------------------- reporting


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
    if "hlo_instructions" in result:
        figures.append(f"{result['hlo_instructions']:,} HLO instructions")
    if "xla_temp_bytes" in result:
        figures.append(
            f"XLA plan: arguments {_gb(result['xla_argument_bytes'])}, outputs "
            f"{_gb(result['xla_output_bytes'])}, temporaries {_gb(result['xla_temp_bytes'])}"
        )
    if "peak_memory_bytes" in result:
        figures.append(
            f"peak memory {_gb(result['peak_memory_bytes'])} ({result['peak_memory_source']})"
        )
    if "xla_total_bytes" in result:
        figures.append(f"XLA plan {_gb(result['xla_total_bytes'])}")
    return f"[{result['what']}] {context}: " + ", ".join(figures)


def _load(averages: list[float]) -> str:
    return "/".join(f"{a:.1f}" for a in averages)


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_enum("what", ["forward", "depthwise"], WHATS,
                            "Which measurements to run.", flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("compare_torch", False, "Measure the PyTorch counterpart side by side.",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("batch", None, "Images per call (forward: 1; segmentor: "
                         "config.data.batch_size). The step uses the config's.",
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("size", None, "Square input size in pixels (forward: 512; "
                         "segmentor: config.data.crop_size).", flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("compile_only", False, "--what step: compile the step ahead of time "
                      "from shapes and report its cost and memory plan; run nothing.",
                      flag_values=fv)  # fmt: skip
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


def main(argv: list[str] | None = None) -> int:
    """`lcmsm-benchmark --config C.py --what W [--compare-torch] [--json OUT]`: run the
    measurements, print one line (or a JSON block) per result; exit status 2 for a usage
    error."""
    try:
        fv = config_cli.parse(PROG, argv, _define_flags, description=DESCRIPTION, examples=EXAMPLES)
    except config_cli.UsageError as err:
        return config_cli.report_usage(PROG, err)
    if fv.json:  # before minutes of measuring
        atomic.check_output_file(fv.json, "--json", suffix=".json")
    # Off for every measurement: a compile time is XLA compiling, never a load of an
    # earlier run's executable, and a run leaves no entries behind.
    with compile_cache.disabled():
        return _measure(fv, fv.config)


def _measure(fv: flags.FlagValues, config) -> int:
    """The measurements `fv.what` asks for (see `main`)."""
    report = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()],
        "device_kind": jax.local_devices()[0].device_kind,
        "machine": platform.platform(),
        "jax": jax.__version__,
        "backbone": config.model.backbone,
        "dtype": config.model.dtype,
        "remat": config.model.get("remat", "none"),
        "scan_blocks": config.model.get("scan_blocks", True),
        # Other work on the machine slows every figure here: the 1/5/15-minute load.
        "load_average_at_start": list(os.getloadavg()),
        "compilation_cache": "off (every compile is timed anew)",
    }
    # The step first: peak device memory counts from the process start.
    if "step" in fv.what:
        say(f"compiling the {config.model.backbone} train step"
            + (" (compile only: nothing runs)" if fv.compile_only else ""))  # fmt: skip
        if fv.compile_only:
            report["step"] = compile_step(config)
        else:
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
    report["load_average_at_end"] = list(os.getloadavg())
    say(f"machine load (1/5/15 min) {_load(report['load_average_at_start'])} at the start, "
        f"{_load(report['load_average_at_end'])} at the end, on {os.cpu_count()} cores")
    if fv.json:
        atomic.write_text(fv.json, json.dumps(report, indent=2))
        say(f"results written to {fv.json}")
    return 0
