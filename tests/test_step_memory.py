"""The compiled step's memory plan: `train.backward = per_pass` frees each student pass
before the next one runs (docs/method.md §3.11). Its own file so that the test runner can
place it beside the other step tests."""

import sys
from pathlib import Path

import jax

from lcmsm_jax.bench import measure, training

sys.path.insert(0, str(Path(__file__).parent))
from test_step import tiny_config  # noqa: E402


def test_per_pass_backward_keeps_one_pass_alive_in_the_compiled_plan():
    """The per-pass ordering survives XLA:CPU, which drops optimisation barriers before it
    schedules: the compiled plan keeps about one pass's activations, not four."""
    config = tiny_config()
    for head in (config.model.decode_head, config.model.lcmsm_head):
        head.embed_dim = head.channels = 64
    temporaries = {}
    for backward in ("joint", "per_pass"):
        config.train.backward = backward
        step, state, batch = training.abstract_train_step(config)
        # The plan is made before code generation: skip LLVM's optimisations (faster).
        compiled = step.lower(state, batch, jax.random.key(0)).compile(
            {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
        )
        temporaries[backward] = measure.compiled_memory(compiled)["xla_temp_bytes"]
    # Four student passes kept alive together against one at a time (without the ordering
    # the two plans are equal; here the rest of the step is a large part of either).
    assert temporaries["per_pass"] < 0.8 * temporaries["joint"], temporaries
