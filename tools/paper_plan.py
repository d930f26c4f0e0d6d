"""Compile the paper's train step ahead of time and check XLA's memory plan against a bound.

    python tools/paper_plan.py                       # configs/gta2cs_lcmsm.py, float32 + bfloat16
    python tools/paper_plan.py --config configs/gta2cs_lcmsm_hrda.py --config.model.remat=block
    python tools/paper_plan.py --backbone mit_b0 mit_b5   # compile time against depth

Each dtype is compiled in its own `lcmsm-benchmark --what step --compile-only` process (so
each peak RSS is that compile's own); nothing runs and no data is needed. Prints one line
per dtype and exits 1 if a plan exceeds --limit-gb, so a change that makes the paper's
step stop fitting is seen. About 3-5 minutes per dtype on a 2-core CPU, ~4 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_RUN_BENCHMARK = (
    "import sys; from lcmsm_jax import cli; sys.exit(cli.run('lcmsm-benchmark', sys.argv[1:]))"
)


def compile_only(config: str, dtype: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "step.json"
        command = [
            sys.executable, "-c", _RUN_BENCHMARK, "--config", config,
            "--what", "step", "--compile-only", f"--config.model.dtype={dtype}",
            *overrides, "--json", str(out),
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=ROOT)
        return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "gta2cs_lcmsm.py"))
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--backbone", nargs="+", default=[None],
                        help="Backbones to compile (default: the config's); with several, "
                        "the compile times are compared with the first one's.")  # fmt: skip
    parser.add_argument("--limit-gb", type=float, default=20.0,
                        help="Largest acceptable XLA memory plan (arguments + outputs + "
                        "temporaries), in GB (1e9 bytes).")  # fmt: skip
    # Anything else is passed on: --config.a.b=value overrides.
    args, overrides = parser.parse_known_args()
    over, first = [], {}
    for dtype in args.dtype:
        for backbone in args.backbone:
            chosen = [f"--config.model.backbone={backbone}"] if backbone else []
            report = compile_only(args.config, dtype, [*overrides, *chosen])
            step = report["step"]
            plan = step["xla_total_bytes"] / 1e9
            first.setdefault(dtype, step["compile_s"])
            ratio = step["compile_s"] / first[dtype]
            print(
                f"{Path(args.config).name} {report['backbone']} {dtype}: XLA plan {plan:.2f} GB "
                f"(temporaries {step['xla_temp_bytes'] / 1e9:.2f} GB), compile "
                f"{step['compile_s']:.0f} s (trace+lower {step['trace_lower_s']:.0f} s"
                + (f"; {ratio:.2f}x the first backbone's" if len(args.backbone) > 1 else "")
                + f"), compile peak RSS {step['peak_memory_bytes'] / 1e9:.2f} GB, "
                f"{step['flops'] / 1e12:.2f} TFLOP/step, load {report['load_average_at_start']}",
                flush=True,
            )
            if plan > args.limit_gb:
                over.append(f"{report['backbone']} {dtype} {plan:.2f} GB")
    if over:
        print(f"over the {args.limit_gb} GB bound: {', '.join(over)}")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main())
