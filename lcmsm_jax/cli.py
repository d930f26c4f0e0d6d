"""Console entry points. Each one hands the command line to the module that does the work,
through `config_cli.run_main`: user mistakes end in one line (exit 2 for usage, 1 for data
and runtime failures) instead of a traceback; `--debug` or LCMSM_DEBUG=1 shows it."""

import importlib
import os
import sys
import traceback
from typing import NoReturn

from lcmsm_jax import config_cli

# Command -> module whose `main(argv) -> int` runs it.
COMMANDS = {
    "lcmsm-train": "lcmsm_jax.train",
    "lcmsm-demo": "lcmsm_jax.demo",
    "lcmsm-eval": "lcmsm_jax.evaluate",
    "lcmsm-predict": "lcmsm_jax.predict",
    "lcmsm-convert": "lcmsm_jax.convert",
    "lcmsm-embed-text": "lcmsm_jax.clip_text",
    "lcmsm-benchmark": "lcmsm_jax.benchmark",
    "lcmsm-prepare": "lcmsm_jax.data.prepare",
    "lcmsm-synthetic": "lcmsm_jax.data.synthetic.cli",
}


def run(prog: str, argv: list[str]) -> int:
    """Run command `prog` with `argv` (without the program name); returns the exit status."""

    def main(args: list[str]) -> int | None:
        # Imported here so that a command's own import errors are reported like the rest,
        # and `--help` of one command does not import the others.
        return importlib.import_module(COMMANDS[prog]).main(args)

    try:
        return config_cli.run_main(prog, argv, main)
    except SystemExit as exit_:  # --help and argparse usage errors
        return exit_.code if isinstance(exit_.code, int) else 1 if exit_.code else 0


def _multi_process() -> bool:
    if "jax" not in sys.modules:  # nothing has started JAX's runtime
        return False
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def command(prog: str) -> NoReturn:
    """Run command `prog` with this process's arguments and exit with its status.

    A failed process of a multi-process run leaves at once (`os._exit`): JAX's shutdown at
    exit waits for every process, and the others may be waiting for this one (after
    compiling, `lcmsm_jax/peers.py`, or in a collective), so the run would hang instead of
    stopping; its launcher (srun --kill-on-bad-exit, launch/local.sh) stops the others when
    it sees this process end.
    """
    try:
        status = run(prog, sys.argv[1:])
    except BaseException as err:  # an error shown with its traceback (run_main's choice)
        if not _multi_process():
            raise
        traceback.print_exc()
        status = 130 if isinstance(err, KeyboardInterrupt) else 1
    if status and _multi_process():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def convert() -> None:
    """`lcmsm-convert`: PyTorch checkpoint -> orbax model checkpoint."""
    command("lcmsm-convert")


def embed_text() -> None:
    """`lcmsm-embed-text`: class-name prompts -> frozen OpenCLIP text embeddings (.npz)."""
    command("lcmsm-embed-text")


def benchmark() -> None:
    """`lcmsm-benchmark`: model forward timings, optionally next to PyTorch."""
    command("lcmsm-benchmark")


def prepare() -> None:
    """`lcmsm-prepare`: validate a dataset layout and write rare-class statistics."""
    command("lcmsm-prepare")


def synthetic() -> None:
    """`lcmsm-synthetic`: the synthetic scenes as a GTA5 or Cityscapes dataset, or a preview."""
    command("lcmsm-synthetic")


def train() -> None:
    """`lcmsm-train`: run or resume training."""
    command("lcmsm-train")


def demo() -> None:
    """`lcmsm-demo`: train a run and the methods it is compared with, then the table."""
    command("lcmsm-demo")


def evaluate() -> None:
    """`lcmsm-eval`: mIoU of a run's checkpoint; Cityscapes benchmark export."""
    command("lcmsm-eval")


def predict() -> None:
    """`lcmsm-predict`: trainId, colour and overlay PNGs for any images."""
    command("lcmsm-predict")
