"""AdamW with name-matched parameter groups and the mmcv poly schedule with linear warmup.

Reproduces the reference optimiser (docs/method.md §2.6, §6.1-6.2): PyTorch AdamW semantics (decay
p <- p * (1 - lr * wd) decoupled from the Adam step, eps added after the bias-corrected
square root) are exactly `optax.adamw`; the groups are `optax.multi_transform` branches
whose learning rate and decay are the base values times the group's multipliers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax


def poly_warmup_schedule(
    base_lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 1500,
    warmup_ratio: float = 1e-6,
    power: float = 1.0,
    min_lr: float = 0.0,
) -> Callable[[jax.Array], jax.Array]:
    """lr(t) = ((base - min) * (1 - t/T)^power + min) * w(t), t counted from 0.

    w(t) = 1 - (1 - t/warmup) * (1 - warmup_ratio) during warmup, 1 after: the warmup
    multiplies the already-decayed value, as mmcv does.
    """

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        progress = jnp.clip(t / total_steps, 0.0, 1.0)
        decayed = (base_lr - min_lr) * (1.0 - progress) ** power + min_lr
        if warmup_steps <= 0:
            return decayed
        # = 1 - (1 - t/warmup) * (1 - ratio), written so float32 keeps ratio exact at t=0.
        warm = warmup_ratio + (1.0 - warmup_ratio) * (t / warmup_steps)
        return decayed * jnp.where(t < warmup_steps, warm, 1.0)

    return schedule


def group_multipliers(name: str, rules: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
    """(lr multiplier, decay multiplier) of a parameter, by mmcv's substring rules.

    The longest matching rule key wins (ties: alphabetical), e.g. with keys `pos_block`,
    `head`, `norm` a BatchNorm scale inside `decode_head` is a "head" parameter.
    """
    for key in sorted(rules, key=lambda k: (-len(k), k)):
        if key in name:
            return float(rules[key]["lr_mult"]), float(rules[key]["decay_mult"])
    return 1.0, 1.0


def _is_pair(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, float) for v in x)


def _group_label(lr_mult: float, decay_mult: float) -> str:
    return f"lr_x{lr_mult:g}_decay_x{decay_mult:g}"


def param_labels(params, rules: Mapping[str, Mapping[str, float]]):
    """A pytree like `params` holding each leaf's (lr multiplier, decay multiplier)."""

    def label(path, _):
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return group_multipliers(name, rules)

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    config: ml_collections.ConfigDict, params, total_steps: int
) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    """Build the grouped AdamW for `params` from `config.optim`.

    Returns (transformation, base schedule); a group's lr is base schedule x its lr_mult.
    """
    schedule = poly_warmup_schedule(
        config.lr,
        total_steps,
        warmup_steps=config.warmup_steps,
        warmup_ratio=config.warmup_ratio,
        power=config.power,
        min_lr=config.min_lr,
    )
    rules = {k: dict(v) for k, v in config.param_groups.items()}
    multipliers = param_labels(params, rules)
    labels = jax.tree.map(lambda m: _group_label(*m), multipliers, is_leaf=_is_pair)
    groups = {}
    for lr_mult, decay_mult in set(jax.tree.leaves(multipliers, is_leaf=_is_pair)):
        groups[_group_label(lr_mult, decay_mult)] = optax.adamw(
            learning_rate=lambda step, m=lr_mult: schedule(step) * m,
            b1=config.betas[0],
            b2=config.betas[1],
            eps=config.eps,
            weight_decay=config.weight_decay * decay_mult,
        )
    transform = optax.multi_transform(groups, labels)
    if config.grad_clip_norm:
        transform = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), transform)
    return transform, schedule
