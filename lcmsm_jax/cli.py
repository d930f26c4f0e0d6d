"""Console entry points. Each one hands the command line to the module that does the work,
through `config_cli.run_main`: user mistakes end in one line (exit 2 for usage, 1 for data
and runtime failures) instead of a traceback; `--debug` or LCMSM_DEBUG=1 shows it."""

import importlib
import sys

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


def convert() -> None:
    """`lcmsm-convert`: PyTorch checkpoint -> orbax model checkpoint."""
    sys.exit(run("lcmsm-convert", sys.argv[1:]))


def embed_text() -> None:
    """`lcmsm-embed-text`: class-name prompts -> frozen OpenCLIP text embeddings (.npz)."""
    sys.exit(run("lcmsm-embed-text", sys.argv[1:]))


def benchmark() -> None:
    """`lcmsm-benchmark`: model forward timings, optionally next to PyTorch."""
    sys.exit(run("lcmsm-benchmark", sys.argv[1:]))


def prepare() -> None:
    """`lcmsm-prepare`: validate a dataset layout and write rare-class statistics."""
    sys.exit(run("lcmsm-prepare", sys.argv[1:]))


def synthetic() -> None:
    """`lcmsm-synthetic`: the synthetic scenes as a GTA5 or Cityscapes dataset, or a preview."""
    sys.exit(run("lcmsm-synthetic", sys.argv[1:]))


def train() -> None:
    """`lcmsm-train`: run or resume training."""
    sys.exit(run("lcmsm-train", sys.argv[1:]))


def demo() -> None:
    """`lcmsm-demo`: train a run and the methods it is compared with, then the table."""
    sys.exit(run("lcmsm-demo", sys.argv[1:]))


def evaluate() -> None:
    """`lcmsm-eval`: mIoU of a run's checkpoint; Cityscapes benchmark export."""
    sys.exit(run("lcmsm-eval", sys.argv[1:]))


def predict() -> None:
    """`lcmsm-predict`: trainId, colour and overlay PNGs for any images."""
    sys.exit(run("lcmsm-predict", sys.argv[1:]))
