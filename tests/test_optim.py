"""The optimiser: schedule values, parameter groups, and AdamW against torch."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lcmsm_jax import optim

sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402


def test_schedule_check_values():
    """docs/method.md §6.2 check values for the backbone group, T = 60 000."""
    schedule = optim.poly_warmup_schedule(6e-5, 60_000, warmup_steps=1500, warmup_ratio=1e-6)
    np.testing.assert_allclose(schedule(0), 6.0e-11, rtol=1e-5)
    np.testing.assert_allclose(schedule(750), 2.9625e-5, rtol=1e-5)
    np.testing.assert_allclose(schedule(1500), 5.85e-5, rtol=1e-6)
    np.testing.assert_allclose(schedule(30_000), 3.0e-5, rtol=1e-6)
    assert float(schedule(60_000)) == 0.0
    # Warmup multiplies the decayed value: at t=1499 it is (1 - 1499/T) * (1 - (1/1500)(1-1e-6)).
    want = 6e-5 * (1 - 1499 / 60_000) * (1 - (1 - 1499 / 1500) * (1 - 1e-6))
    np.testing.assert_allclose(schedule(1499), want, rtol=1e-5)


def test_group_rules_longest_match_first():
    rules = {k: dict(v) for k, v in base.optim_config().param_groups.items()}
    assert optim.group_multipliers("decode_head.fuse_layer.bottleneck.bn.scale", rules) == (10, 1)
    assert optim.group_multipliers("vlc_head.conv_seg.kernel", rules) == (10, 1)
    assert optim.group_multipliers("backbone.block1.0.norm1.scale", rules) == (1, 0)
    assert optim.group_multipliers("backbone.block1.0.attn.norm.bias", rules) == (1, 0)
    assert optim.group_multipliers("backbone.block1.0.attn.q.kernel", rules) == (1, 1)
    assert optim.group_multipliers("text_embed_net.kernel", rules) == (1, 1)


def _params():
    return {
        "backbone": {"norm1": {"scale": jnp.full((3,), 2.0)}, "q": {"kernel": jnp.full((3,), 2.0)}},
        "decode_head": {"conv_seg": {"kernel": jnp.full((3,), 2.0)}},
        "text_embed_net": {"kernel": jnp.full((3,), 2.0)},
    }


def _optim_config(**overrides):
    cfg = base.optim_config()
    cfg.warmup_steps = 0
    cfg.update(overrides)
    return cfg


def test_lr_multipliers_and_decay_masks_read_back_from_updates():
    params = _params()
    tx, schedule = optim.make_optimizer(_optim_config(), params, total_steps=100)
    lr = float(schedule(0))
    # Zero gradients: the update is pure decoupled weight decay, -lr_g * wd_g * p.
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["backbone"]["norm1"]["scale"], 0.0)
    np.testing.assert_allclose(updates["backbone"]["q"]["kernel"], -lr * 0.01 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(
        updates["decode_head"]["conv_seg"]["kernel"], -10 * lr * 0.01 * 2.0, rtol=1e-6
    )
    np.testing.assert_allclose(updates["text_embed_net"]["kernel"], -lr * 0.01 * 2.0, rtol=1e-6)
    # Without decay, Adam's first step is -lr_g * g / (|g| + eps): the group's lr.
    tx, _ = optim.make_optimizer(_optim_config(weight_decay=0.0), params, total_steps=100)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(ones, tx.init(params), params)
    # (float32 bias corrections: 1 - 0.999 is off by 5e-5 relative, hence the tolerance)
    np.testing.assert_allclose(updates["backbone"]["norm1"]["scale"], -lr, rtol=1e-4)
    np.testing.assert_allclose(updates["decode_head"]["conv_seg"]["kernel"], -10 * lr, rtol=1e-4)


def test_matches_torch_adamw_over_several_steps():
    torch = pytest.importorskip("torch")
    cfg = _optim_config(lr=1e-2, warmup_steps=3)
    params = _params()
    total = 20
    tx, schedule = optim.make_optimizer(cfg, params, total_steps=total)
    opt_state = tx.init(params)
    names = [("backbone", "norm1", "scale"), ("backbone", "q", "kernel"),
             ("decode_head", "conv_seg", "kernel"), ("text_embed_net", "kernel")]  # fmt: skip
    mults = {names[0]: (1, 0), names[1]: (1, 1), names[2]: (10, 1), names[3]: (1, 1)}
    tensors = {n: torch.full((3,), 2.0, dtype=torch.float64, requires_grad=True) for n in names}
    groups = [{"params": [tensors[n]], "lr_mult": m[0], "weight_decay": 0.01 * m[1]}
              for n, m in mults.items()]  # fmt: skip
    torch_opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    rng = np.random.default_rng(0)

    def get(tree, path):
        for p in path:
            tree = tree[p]
        return tree

    for t in range(6):
        grads_np = {n: rng.standard_normal(3) for n in names}
        for group in torch_opt.param_groups:
            group["lr"] = float(schedule(t)) * group["lr_mult"]
        torch_opt.zero_grad()
        for n in names:
            tensors[n].grad = torch.from_numpy(grads_np[n])
        torch_opt.step()
        grads = jax.tree.map(jnp.zeros_like, params)
        for n in names:
            get(grads, n[:-1])[n[-1]] = jnp.asarray(grads_np[n], jnp.float32)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    for n in names:
        np.testing.assert_allclose(get(params, n), tensors[n].detach().numpy(), rtol=1e-5)
