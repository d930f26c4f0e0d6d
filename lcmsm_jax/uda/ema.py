"""EMA teacher update (docs/method.md §3.2). Parameters only; BN statistics are not averaged."""

from typing import Any

import jax
import jax.numpy as jnp


def ema_alpha(step: jax.Array | int, alpha_max: float) -> jax.Array:
    """α_t = min(1 − 1/(t+1), alpha_max): 0 at t=0, 0.5 at t=1, 0.9 at t=9, then capped.

    The early ramp makes the teacher the plain mean of all students so far. Works with a traced
    integer step.
    """
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(1.0 - 1.0 / (t + 1.0), jnp.float32(alpha_max))


def ema_update(teacher_params: Any, student_params: Any, step: jax.Array | int, alpha_max: float):
    """Pytree θ′ ← α_t·θ′ + (1 − α_t)·θ, leaves kept in the teacher's dtype.

    At t = 0 (α = 0) the result is an exact copy of the student, as the reference copies the
    weights at its first iteration; the explicit select also keeps a non-finite initial teacher
    from leaking in through 0·θ′.
    """
    alpha = ema_alpha(step, alpha_max)

    def update(teacher: jax.Array, student: jax.Array) -> jax.Array:
        blend = alpha * teacher.astype(jnp.float32) + (1.0 - alpha) * student.astype(jnp.float32)
        blend = jnp.where(alpha == 0.0, student.astype(jnp.float32), blend)
        return blend.astype(teacher.dtype)

    return jax.tree.map(update, teacher_params, student_params)
