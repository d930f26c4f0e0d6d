"""The figures of a measurement: which device, its peak FLOP/s, XLA's FLOP count and memory
plan of a compiled program, peak memory, and median wall times."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

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


def device_info(device: jax.Device | None = None) -> dict:
    """Which device runs the measurement: {"device", "device_kind", "backend"}."""
    device = device or jax.local_devices()[0]
    return {"device": str(device), "device_kind": device.device_kind, "backend": device.platform}


def record(what: str, dtype: str, shapes: str, device: jax.Device) -> dict:
    """The head of a measurement's result: what, the device, the compute dtype, the shapes."""
    return {"what": what, **device_info(device), "dtype": dtype, "shapes": shapes}


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


def alternate(ours: Callable, theirs: Callable, repeats: int) -> tuple[float, float]:
    """Median seconds of each, alternating so that machine noise hits both alike (one
    untimed call of each first)."""
    jax.block_until_ready(ours())
    theirs()
    ours_t, theirs_t = [], []
    for _ in range(repeats):
        ours_t.append(time_call(ours, repeats=1, warmup=0))
        theirs_t.append(time_call(theirs, repeats=1, warmup=0))
    return float(np.median(ours_t)), float(np.median(theirs_t))
