"""`lcmsm-demo`: train a run, then the methods of `config.train.compare_with` with the same
seed, and tabulate them side by side (the README's demo: LC-MSM next to source-only).

`lcmsm-demo --config configs/demo.py --workdir runs/demo [--config.a.b=v ...]` trains the
config's own method in `--workdir` exactly as `lcmsm-train` does, each comparison method in
`<workdir>/baselines/<method>` (`lcmsm_jax/ladder.py`), and writes comparison.{md,json} and
predictions/*.png. Rerunning resumes whatever is unfinished and rewrites the table.
"""

from __future__ import annotations

import jax

from lcmsm_jax import config_cli, ladder, sharding, train
from lcmsm_jax.guards import StopSignals
from lcmsm_jax.progress import say

PROG = "lcmsm-demo"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or preempted: rerun to resume), 1 a diverged run, 2 usage."""
    try:
        fv, warnings = train.parse_command(
            PROG, argv, "Train a run, then the methods of config.train.compare_with, and "
            "compare their target mIoU.",
            examples=[
                f"{PROG} --config configs/demo.py --workdir runs/demo",
                f"{PROG} --config configs/demo.py --workdir runs/demo_s1 --config.seed=1",
            ],
        )  # fmt: skip
        config = fv.config
        if not config.train.compare_with:
            raise config_cli.UsageError(
                "config.train.compare_with is empty: nothing to compare; pass e.g. "
                "--config.train.compare_with=\"('source_only',)\" (or use lcmsm-train)"
            )
        sharding.initialize_distributed(config.mesh)  # to count the processes
        if jax.process_count() > 1:
            # The prediction pictures run on one device: refused before any training.
            raise config_cli.UsageError(
                f"{PROG} runs in one process, this run has {jax.process_count()}; train each "
                "method with lcmsm-train under launch/ and compare them with tools/ladder.py"
            )
    except config_cli.UsageError as err:
        return config_cli.report_usage(PROG, err)
    for warning in warnings:
        say(f"{PROG}: warning: {warning}")
    # One set of handlers for all the runs: a signal between two runs stops the next one
    # before its first step, with a line (train.train reuses these handlers).
    with StopSignals.installed():
        status, result = train.run_command(PROG, config, fv.workdir)
        if status or result.get("step") != config.train.steps:
            return status  # diverged, preempted or stopped early (stop_at): nothing to compare
        try:
            ladder.compare(config, fv.workdir, result["eval"] or None)
        except train.NonFiniteLossError as err:
            say(f"{PROG}: comparison run: {err}")
            return 1
        except train.Preempted:  # a comparison run checkpointed; rerunning resumes it
            return 0
    return 0
