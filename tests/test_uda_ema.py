"""EMA teacher: α schedule and the parameter update (docs/method.md §3.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcmsm_jax.uda import ema


@pytest.mark.parametrize(
    "step, alpha", [(0, 0.0), (1, 0.5), (9, 0.9), (99, 0.99), (999, 0.999), (50_000, 0.999)]
)
def test_alpha_schedule(step, alpha):
    np.testing.assert_allclose(ema.ema_alpha(step, 0.999), alpha, rtol=1e-6)
    traced = jax.jit(ema.ema_alpha, static_argnums=1)(jnp.asarray(step, jnp.int32), 0.999)
    np.testing.assert_allclose(traced, alpha, rtol=1e-6)


def test_alpha_cap_applies_early():
    np.testing.assert_allclose(ema.ema_alpha(50, 0.9), 0.9, rtol=1e-6)
    np.testing.assert_allclose(ema.ema_alpha(50, 0.99), 1 - 1 / 51, rtol=1e-6)


def trees():
    teacher = {"a": jnp.full((2, 3), 10.0), "b": {"c": jnp.asarray([-4.0, 8.0])}}
    student = {"a": jnp.full((2, 3), 2.0), "b": {"c": jnp.asarray([0.0, 4.0])}}
    return teacher, student


update = jax.jit(ema.ema_update, static_argnums=3)


@pytest.mark.parametrize(
    "step, a, c",
    [
        (0, 2.0, [0.0, 4.0]),  # exact copy of the student
        (1, 6.0, [-2.0, 6.0]),  # 0.5 / 0.5
        (9, 9.2, [-3.6, 7.6]),  # 0.9 / 0.1
        (100_000, 9.992, [-3.996, 7.996]),  # 0.999 / 0.001
    ],
)
def test_update_arithmetic(step, a, c):
    teacher, student = trees()
    out = update(teacher, student, jnp.asarray(step), 0.999)
    assert jax.tree.structure(out) == jax.tree.structure(teacher)
    np.testing.assert_allclose(out["a"], np.full((2, 3), a), rtol=1e-6)
    np.testing.assert_allclose(out["b"]["c"], c, rtol=1e-6, atol=1e-6)


def test_step_zero_copies_even_a_non_finite_teacher():
    teacher, student = trees()
    teacher = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), teacher)
    out = update(teacher, student, jnp.asarray(0), 0.999)
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(student), strict=True):
        np.testing.assert_array_equal(got, want)


def test_update_keeps_teacher_dtype():
    teacher = {"w": jnp.ones((3,), jnp.bfloat16)}
    student = {"w": jnp.zeros((3,), jnp.float32)}
    out = update(teacher, student, jnp.asarray(1), 0.999)
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(out["w"].astype(np.float32), 0.5)
