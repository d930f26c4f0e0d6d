"""Console entry points. Each one only hands the command line to the module that does the work."""

import sys


def convert() -> None:
    """`lcmsm-convert`: PyTorch checkpoint -> orbax model checkpoint."""
    from lcmsm_jax import convert as convert_module

    sys.exit(convert_module.main(sys.argv[1:]))


def embed_text() -> None:
    """`lcmsm-embed-text`: class-name prompts -> frozen OpenCLIP text embeddings (.npz)."""
    from lcmsm_jax import clip_text

    sys.exit(clip_text.main(sys.argv[1:]))


def benchmark() -> None:
    """`lcmsm-benchmark`: model forward timings, optionally next to PyTorch."""
    from lcmsm_jax import benchmark as benchmark_module

    sys.exit(benchmark_module.main(sys.argv[1:]))


def prepare() -> None:
    """`lcmsm-prepare`: validate a dataset layout and write rare-class statistics."""
    from lcmsm_jax.data import prepare as prepare_module

    sys.exit(prepare_module.main(sys.argv[1:]))


def train() -> None:
    """`lcmsm-train`: run or resume training."""
    from lcmsm_jax import train as train_module

    sys.exit(train_module.main(sys.argv[1:]))


def evaluate() -> None:
    """`lcmsm-eval`: mIoU of a run's checkpoint; Cityscapes benchmark export."""
    from lcmsm_jax import evaluate as evaluate_module

    sys.exit(evaluate_module.main(sys.argv[1:]))


def predict() -> None:
    """`lcmsm-predict`: trainId, colour and overlay PNGs for any images."""
    from lcmsm_jax import predict as predict_module

    sys.exit(predict_module.main(sys.argv[1:]))
