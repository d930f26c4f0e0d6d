"""lcmsm-benchmark's step, segmentor and data measurements, and tools/device_check.sh in
its CPU dry-run mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcmsm_jax import benchmark
from lcmsm_jax.bench import measure
from lcmsm_jax.data import pipeline

ROOT = Path(__file__).parents[1]
# configs/demo.py made smaller: a source-only step, 16-wide heads, 32x32 crops, batch 2.
SMALL = [
    "--config", str(ROOT / "configs" / "demo.py"),
    "--config.uda.enabled=False",
    "--config.data.crop_size=32,32",
    "--config.model.decode_head.embed_dim=16",
    "--config.model.decode_head.channels=16",
    "--config.model.lcmsm_head.embed_dim=16",
    "--config.model.lcmsm_head.channels=16",
]  # fmt: skip


def run_benchmark(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "benchmark.json"
    assert benchmark.main([*SMALL, *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_step_reports_time_flops_throughput_and_memory(tmp_path, capsys):
    step = run_benchmark(tmp_path, "--what", "step", "--repeats", "2", "--warmup", "1")["step"]
    assert step["compile_s"] > 0 and step["step_s"] > 0
    assert step["trace_lower_s"] > 0 and step["xla_compile_s"] > 0
    assert step["trace_lower_s"] + step["xla_compile_s"] == pytest.approx(step["compile_s"])
    assert step["flops"] > 0 and step["bytes_accessed"] > 0
    assert step["images_per_s"] == pytest.approx(2 * 2 / step["step_s"])
    assert step["achieved_flops_per_s"] == pytest.approx(step["flops"] / step["step_s"])
    assert step["utilisation"] == "n/a"  # no CPU peak in the table
    assert step["peak_memory_bytes"] > 0
    assert step["peak_memory_source"] == "process max RSS (host)"
    assert step["xla_total_bytes"] > 0
    assert step["dtype"] == "float32" and step["backend"] == "cpu"
    printed = capsys.readouterr().out
    assert "[step] cpu (cpu) | float32 | mit_b0, 2+2 images 32x32" in printed


def test_compile_only_reports_the_plan_without_running_a_step(tmp_path, capsys, monkeypatch):
    from lcmsm_jax.bench import training

    monkeypatch.setattr(training, "benchmark_step", lambda *a, **k: pytest.fail("step ran"))
    report = run_benchmark(tmp_path, "--what", "step", "--compile-only")
    step = report["step"]
    assert "step_s" not in step and step["what"] == "step_compile"
    assert step["trace_lower_s"] > 0 and step["xla_compile_s"] > 0
    assert step["stablehlo_chars"] > 0 and step["hlo_instructions"] > 0
    for key in ("xla_argument_bytes", "xla_output_bytes", "xla_temp_bytes", "xla_total_bytes"):
        assert step[key] > 0, key
    assert step["peak_memory_source"] == "process max RSS (host)"
    assert len(report["load_average_at_start"]) == 3
    # FLOPs are counted on the unrolled program: the scanned one counts each stage's loop
    # body once (MiT-B0: 2 blocks a stage), so its own count is lower.
    jitted, state, batch = training.abstract_train_step(_small_config())
    scanned = measure.compiled_cost(jitted.lower(state, batch, _abstract_key()))["flops"]
    assert step["flops"] > 1.1 * scanned
    printed = capsys.readouterr().out
    assert "compile only: nothing runs" in printed and "temporaries" in printed


def _small_config():
    from lcmsm_jax import config_cli

    return config_cli.parse("lcmsm-benchmark", SMALL, lambda fv: None).config


def _abstract_key():
    import jax

    return jax.eval_shape(lambda: jax.random.key(0))


def test_segmentor_forward_backward_next_to_torch(tmp_path, capsys):
    pytest.importorskip("transformers")
    args = ("--what", "segmentor", "--compare-torch", "--size", "32", "--batch", "1")
    report = run_benchmark(tmp_path, *args, "--repeats", "2")["segmentor"]
    for name in ("lcmsm", "segformer"):
        result = report[name]
        assert result["flops"] > 0 and result["step_s"] > 0 and result["images_per_s"] > 0
        assert result["peak_memory_bytes"] > 0
        assert "batch 1 32x32" in result["shapes"]
    segformer = report["segformer"]
    assert segformer["torch"]["step_s"] > 0 and segformer["torch"]["device"] == "cpu"
    assert segformer["torch_over_ours"] == pytest.approx(
        segformer["torch"]["step_s"] / segformer["step_s"]
    )
    # Same network, two counts: XLA's (elementwise work included) and torch's (matmuls,
    # convolutions) agree to within a factor of two.
    assert 0.5 < segformer["flops"] / segformer["torch"]["flops"] < 2.0
    assert "torch/ours" in capsys.readouterr().out


def test_segmentor_of_a_multires_config_times_the_multires_training_pass(tmp_path):
    hrda = ("--config.model.hrda.enabled=True", "--config.model.hrda.detail_size=16,16",
            "--config.model.hrda.attention_embed_dim=16", "--what", "segmentor",
            "--batch", "1", "--repeats", "1", "--warmup", "0")  # fmt: skip
    multires = run_benchmark(tmp_path, *hrda, "--size", "32")["segmentor"]["lcmsm"]
    assert "multi-resolution (context x0.5 + detail 16x16)" in multires["shapes"]
    plain = ("--what", "segmentor", "--batch", "1", "--repeats", "1", "--warmup", "0")
    half = run_benchmark(tmp_path, *plain, "--size", "16")["segmentor"]["lcmsm"]
    # A 32 x 32 crop seen as a 16 x 16 context and a 16 x 16 detail pass plus the attention
    # heads: more than two 16 x 16 passes, less than one pass over the whole 32 x 32 crop.
    whole = run_benchmark(tmp_path, *plain, "--size", "32")["segmentor"]["lcmsm"]
    assert 2 * half["flops"] < multires["flops"] < whole["flops"]


def test_data_throughput_per_worker_count(tmp_path):
    args = ("--what", "data", "--workers", "0", "--data_batches", "1", "--data_images", "1")
    data = run_benchmark(tmp_path, *args)["data"]
    row = data["per_worker_count"]["0"]
    assert row["source_images_per_s"] > 0 and row["target_images_per_s"] > 0
    assert "crops 32x32" in data["shapes"]
    assert data["automatic_worker_count"] == pipeline.worker_count(-1, iterators=2)


def test_peak_table_and_cost_analysis_formats():
    assert measure.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert measure.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 67e12
    assert measure.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert measure.peak_flops("NVIDIA A100-SXM4-40GB", "float32") == 19.5e12
    assert measure.peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert measure.peak_flops("cpu", "float32") is None
    figures = measure.throughput_figures(312e12, 2.0, "NVIDIA A100-SXM4-80GB", "bfloat16")
    assert figures["utilisation"] == pytest.approx(0.5)

    class Compiled:  # jax versions return a dict or a list of per-computation dicts
        def __init__(self, analysis):
            self.analysis = analysis

        def cost_analysis(self):
            return self.analysis

    assert measure.compiled_cost(Compiled({"flops": 5.0}))["flops"] == 5.0
    assert measure.compiled_cost(Compiled([{"flops": 2.0}, {"flops": 3.0}]))["flops"] == 5.0
    assert measure.compiled_cost(Compiled(None))["flops"] is None


def test_device_check_tiny_mode_runs_on_cpu(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path),
        "BUDGET": "300",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        ["bash", "tools/device_check.sh", "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=330,
    )
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 0, summary + (tmp_path / "logs.txt").read_text()[-3000:]
    for phase in ("test_parity", "test_eight_devices", "test_bf16", "step_fp32",
                  "step_bf16_no_remat"):  # fmt: skip
        assert f"{phase} ok" in summary, summary
    assert "step_bf16 skipped (tiny" in summary and "segmentor skipped (tiny" in summary
    logs = (tmp_path / "logs.txt").read_text()
    assert "test_features_and_logits_match_transformers" in logs  # the selections collect
    assert "test_eight_devices_equal_one_device_and_compile_once" in logs
    step32 = json.loads((tmp_path / "step_fp32.json").read_text())["step"]
    plain = json.loads((tmp_path / "step_bf16_no_remat.json").read_text())
    assert (plain["step"]["dtype"], step32["dtype"]) == ("bfloat16", "float32")
    assert plain["remat"] == "none"
    assert plain["step"]["flops"] > 0 and step32["flops"] > 0
