"""Memory and speed options of the model keep the step's numbers: bfloat16 compute
(`config.model.dtype`) and activation checkpointing (`config.model.remat`)."""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcmsm_jax import config_checks, config_cli, models
from lcmsm_jax.models import heads, layers
from lcmsm_jax.uda import step as uda_step

sys.path.insert(0, str(Path(__file__).parent))
from test_step import build, deterministic, make_batch, rest_of, tiny_config  # noqa: E402

NUM_CLASSES = 19


def _compile(fn, *args):
    """jit + lower + compile; on CPU without LLVM's optimisations, which take most of the
    compile time of these one-shot programs and do not change float results."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    lowered = jax.jit(fn).lower(*args)
    return lowered, lowered.compile(compiler_options=options)


def _config(dtype: str):
    config = deterministic(tiny_config())
    config.model.dtype = dtype
    # Grouped convolutions compile faster on XLA:CPU than the shifted sums' custom VJP
    # (the two agree, tests/test_models.py); they are also what GPUs and TPUs run.
    config.model.depthwise_impl = "conv"
    # Random weights are never 96.8% sure: a low threshold gives a non-zero quality weight,
    # so the mixed terms depend on the teacher's pseudo-labels and their confidence.
    config.uda.pseudo_threshold = 0.06
    return config


@pytest.fixture(scope="module")
def bf16_and_f32():
    """One bfloat16 train_step (lowered text, new state, metrics) and the float32 losses of
    the same state, batch and draws."""
    config32, config16 = _config("float32"), _config("bfloat16")
    graphdef32, imnet_graphdef32, tx, schedule, state = build(config32)
    graphdef16, imnet_graphdef16, *_ = build(config16)
    # An ImageNet backbone of other weights: at t = 0 it equals the student's and the
    # feature distance would only measure rounding (bf16's ~0.4% per value).
    other = models.Segmentor(config32.model, rngs=nnx.Rngs(1))
    state["imnet_params"] = nnx.state(other.backbone, nnx.Param).to_pure_dict()
    batch, rng = make_batch(), jax.random.key(0)

    step16 = uda_step.make_train_step(config16, graphdef16, imnet_graphdef16, tx, schedule)
    lowered, compiled = _compile(step16, state, batch, rng)
    new_state, metrics = compiled(state, batch, rng)

    # The step draws from fold_in(rng, step) with step = 0; so does loss_fn given that key.
    loss_fn32 = uda_step.make_loss_fn(config32, graphdef32, imnet_graphdef32)
    key = jax.random.fold_in(rng, 0)
    args32 = (state["params"], batch, rest_of(state), key)
    _, aux32 = _compile(loss_fn32, *args32)[1](*args32)
    return lowered.as_text(), new_state, metrics, aux32


def test_every_bf16_loss_term_is_within_2_percent_of_float32(bf16_and_f32):
    _, _, metrics, aux32 = bf16_and_f32
    terms32 = {k: float(v) for k, v in aux32["losses"].items()}
    assert set(terms32) == {"source", "masked_source", "feature_distance", "mix", "masked_mix"}
    assert float(aux32["quality"]) > 0
    for name, value32 in terms32.items():
        value16 = metrics[f"loss/{name}"]
        assert value16.dtype == jnp.float32, name
        assert value32 > 0, name
        assert abs(float(value16) - value32) <= 0.02 * value32, (name, float(value16), value32)
    quality16 = float(metrics["pseudo_label_quality"])
    assert abs(quality16 - float(aux32["quality"])) <= 0.02 * float(aux32["quality"])


def test_bf16_step_keeps_state_and_statistics_in_float32(bf16_and_f32):
    _, new_state, metrics, _ = bf16_and_f32
    for key in ("params", "opt_state", "batch_stats", "ema_params", "ema_batch_stats"):
        leaves = jax.tree.leaves(new_state[key])
        floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats, key
        assert {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}, key
    assert all(v.dtype == jnp.float32 for v in metrics.values())
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new_state["params"]))


def _matmul_operand_types(hlo: str) -> list[tuple[str, str, str]]:
    """(op, lhs type, rhs type) of every dot_general and convolution in StableHLO text."""
    pattern = r"stablehlo\.(dot_general|convolution)\b.*?:\s*\((tensor<[^>]*>), (tensor<[^>]*>)\)"
    return [m.groups() for m in re.finditer(pattern, hlo)]


def test_bf16_step_runs_matmuls_and_convolutions_in_bf16(bf16_and_f32):
    hlo = bf16_and_f32[0]
    ops = _matmul_operand_types(hlo)
    bf16 = [op for op in ops if "bf16" in op[1] and "bf16" in op[2]]
    assert len(bf16) > 0.9 * len(ops), len(ops)
    # Convolutions all run in bf16 (patch embeddings, spatial reduction, the heads).
    assert all("bf16" in lhs and "bf16" in rhs for op, lhs, rhs in ops if op == "convolution")
    # Float32 products only where intended: the text-pixel correlation and the logits'
    # resize, both over the class axis.
    class_axis = (f"x{NUM_CLASSES}x", f"<{NUM_CLASSES}x")
    for op, lhs, rhs in ops:
        if "f32" in lhs and "f32" in rhs:
            assert any(axis in lhs + rhs for axis in class_axis), (op, lhs, rhs)


def test_batchnorm_in_bf16_keeps_float32_statistics():
    bn = layers.BatchNorm(4)
    x = (3.0 + jax.random.normal(jax.random.key(0), (2, 5, 5, 4))).astype(jnp.bfloat16)
    y = bn(x, train=True)
    assert y.dtype == jnp.bfloat16
    assert bn.mean[...].dtype == jnp.float32 and bn.var[...].dtype == jnp.float32
    reference = layers.BatchNorm(4)(x.astype(jnp.float32), train=True)
    np.testing.assert_allclose(np.asarray(y, np.float32), reference, atol=2e-2)


def test_correlation_and_depthwise_accumulate_in_float32():
    features = jax.random.normal(jax.random.key(0), (1, 4, 4, 8))
    text = jax.random.normal(jax.random.key(1), (3, 8))
    maps16 = heads.text_pixel_correlation(features.astype(jnp.bfloat16), text, 1 / 0.07)
    assert maps16.dtype == jnp.float32
    x = jax.random.normal(jax.random.key(2), (1, 6, 6, 5))
    kernel = jax.random.normal(jax.random.key(3), (3, 3, 1, 5))
    out16 = layers.depthwise_conv2d(x.astype(jnp.bfloat16), kernel, impl="shifted_sum")
    out32 = layers.depthwise_conv2d(x, kernel, impl="shifted_sum")
    assert out16.dtype == jnp.bfloat16
    # One rounding of the sum (plus the inputs' own), not one per tap.
    np.testing.assert_allclose(np.asarray(out16, np.float32), out32, rtol=0.03, atol=0.03)


# --------------------------------------------------------------------------- remat


def _backbone_loss_and_grads(remat: str):
    model = models.MixVisionTransformer(
        "mit_b0", remat=remat, depthwise_impl="conv", rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(model, nnx.Param)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

    def loss(params):
        features = nnx.merge(graphdef, params)(images, rng=jax.random.key(1))  # drop path on
        return sum(jnp.mean(jnp.square(f)) for f in features)

    params = params.to_pure_dict()
    return _compile(jax.value_and_grad(loss), params)[1](params)


def test_remat_gives_the_same_loss_and_gradients():
    value, grads = _backbone_loss_and_grads("none")
    for remat in ("block", "stage"):
        value_r, grads_r = _backbone_loss_and_grads(remat)
        np.testing.assert_allclose(value_r, value, rtol=1e-6, atol=1e-6, err_msg=remat)
        for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=remat)


def test_remat_option_reaches_the_backbone_and_is_checked():
    config = tiny_config()
    config.model.remat = "block"
    assert models.Segmentor(config.model, rngs=nnx.Rngs(0)).backbone.remat == "block"
    with pytest.raises(ValueError, match="remat"):
        models.MixVisionTransformer("mit_b0", remat="everything", rngs=nnx.Rngs(0))
    # On the command line, before any work: one line naming the key and the choices.
    config.model.remat = "everything"
    with pytest.raises(config_cli.UsageError, match=r"config.model.remat.*none.*block.*stage"):
        config_checks.check_model_config(config)
