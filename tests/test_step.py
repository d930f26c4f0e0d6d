"""The assembled LC-MSM step: terms, gradient routing, draws, sharding, compilation."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lcmsm_jax import models, optim, sharding, text
from lcmsm_jax.data import labels
from lcmsm_jax.uda import step as uda_step

sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402

SIZE = 64


def tiny_config(**uda):
    config = base.get_config()
    config.model.backbone = "mit_b0"
    for head in (config.model.decode_head, config.model.lcmsm_head):
        head.embed_dim = 16
        head.channels = 16
    config.model.text_dim = 12
    config.data.crop_size = (SIZE, SIZE)
    config.uda.mask_block_size = 16
    config.optim.warmup_steps = 2
    config.train.steps = 10
    config.text.embeddings = "random:0"
    # The paper's memory options off: the value tests pin the plain joint gradient;
    # per_pass and remat are each compared with it in their own tests.
    config.model.remat = "none"
    config.train.backward = "joint"
    config.uda.update(uda)
    return config


def deterministic(config):
    """Dropout and drop path off: the step is a function of (state, batch, draws)."""
    config.model.drop_path_rate = 0.0
    config.model.decode_head.dropout = 0.0
    config.model.lcmsm_head.dropout = 0.0
    return config


def make_batch(seed=0, batch=2, size=SIZE):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 19, (batch, size // 8, size // 8))
    label = np.kron(label, np.ones((8, 8), np.int64)).astype(np.int32)  # blocky regions
    label[:, :4] = 255
    label[:, 32:64, 32:64] = 13  # a "car" filling a stride-32 cell: a feature-distance cell
    return {
        "source_image": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
        "source_label": label,
        "target_image": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
    }


def build(config):
    model = models.Segmentor(config.model, rngs=nnx.Rngs(0))
    graphdef, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    imnet_graphdef = nnx.split(model.backbone)[0]
    tx, schedule = optim.make_optimizer(config.optim, params.to_pure_dict(), config.train.steps)
    embeddings, _ = text.resolve("random:0", labels.CITYSCAPES_CLASSES, config.model.text_dim)
    state = uda_step.init_state(model, tx, embeddings)
    return graphdef, imnet_graphdef, tx, schedule, state


def rest_of(state):
    keys = ("batch_stats", "ema_params", "ema_batch_stats", "imnet_params", "text_embeddings")
    return {k: state[k] for k in keys}


@pytest.fixture(scope="module")
def lcmsm():
    config = deterministic(tiny_config())
    graphdef, imnet_graphdef, tx, schedule, state = build(config)
    loss_fn = uda_step.make_loss_fn(config, graphdef, imnet_graphdef)
    return config, loss_fn, state


def test_every_lcmsm_term_is_present_and_finite(lcmsm):
    config, loss_fn, state = lcmsm
    total, aux = loss_fn(state["params"], make_batch(), rest_of(state), jax.random.key(0))
    assert set(aux["losses"]) == {
        "source", "masked_source", "feature_distance", "mix", "masked_mix"
    }  # fmt: skip
    assert np.isfinite(float(total))
    np.testing.assert_allclose(
        float(total), sum(float(v) for v in aux["losses"].values()), rtol=1e-6
    )
    assert aux["pseudo_label"].shape == (2, SIZE, SIZE)
    assert aux["quality"].shape == ()
    # Source-pasted pixels get weight 1, target pixels the quality weight.
    mask = np.asarray(aux["classmix_mask"])
    weight = np.asarray(aux["mixed_weight"])
    np.testing.assert_allclose(weight[mask == 1], 1.0)
    np.testing.assert_allclose(weight[mask == 0], float(aux["quality"]))


TERMS = ("source", "masked_source", "feature_distance", "mix", "masked_mix")


@pytest.fixture(scope="module")
def term_gradients(lcmsm):
    """Each loss term differentiated on its own.

    "feature_distance_t0": the distance with the ImageNet backbone equal to the student's
    (t = 0); for the others the ImageNet backbone is moved away so the distance is non-zero.
    Eager on purpose: compiling these backward graphs costs minutes on CPU, and op-by-op
    execution computes the student and ImageNet features with identical kernels, so at
    t = 0 the distance is exactly 0 as in the reference.
    """
    _, loss_fn, state = lcmsm
    batch, rest = make_batch(), rest_of(state)
    moved = {**rest, "imnet_params": jax.tree.map(lambda p: p * 1.01, rest["imnet_params"])}

    def terms(params, rest):
        losses = loss_fn(params, batch, rest, jax.random.key(0))[1]["losses"]
        return jnp.stack([losses[name] for name in TERMS])

    def distance(params):
        return loss_fn(params, batch, rest, jax.random.key(0))[1]["losses"]["feature_distance"]

    params = state["params"]
    # One Jacobian (a batched backward pass) gives every term's gradient at once.
    by_params, by_rest = jax.jacrev(terms, argnums=(0, 1))(params, moved)
    grads = {name: jax.tree.map(lambda g, i=i: g[i], by_params) for i, name in enumerate(TERMS)}
    grads["through_rest"] = by_rest
    grads["feature_distance_t0"] = jax.value_and_grad(distance)(params)
    return grads


def test_feature_distance_is_zero_with_zero_gradient_at_t0(term_gradients):
    """Student and ImageNet backbones are equal at t = 0 with drop path off (safe norm)."""
    value, grads = term_gradients["feature_distance_t0"]
    assert float(value) == 0.0
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert all(not np.any(g) for g in leaves)


@pytest.mark.parametrize(
    "term,reaches",
    [
        ("source", {"backbone", "decode_head"}),
        ("mix", {"backbone", "decode_head"}),
        ("masked_source", {"backbone", "vlc_head", "text_embed_net"}),
        ("masked_mix", {"backbone", "vlc_head", "text_embed_net"}),
        ("feature_distance", {"backbone"}),
    ],
)
def test_gradient_routing(term_gradients, term, reaches):
    grads = term_gradients[term]
    norms = {
        k: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(v))) for k, v in grads.items()
    }
    assert {k for k, v in norms.items() if v > 0} == reaches, norms


def test_nothing_flows_into_teacher_imnet_or_text_embeddings(term_gradients):
    grads = term_gradients["through_rest"]
    for name in ("ema_params", "imnet_params", "text_embeddings"):
        assert all(not np.any(g) for g in jax.tree.leaves(grads[name])), name


def test_supplied_draws_reproduce_the_sampled_ones(lcmsm):
    config, loss_fn, state = lcmsm
    batch, rest, rng = make_batch(), rest_of(state), jax.random.key(3)
    drawn = uda_step.sample_draws(
        jax.random.fold_in(rng, 0), jnp.asarray(batch["source_label"]), config.uda, 19
    )
    a = loss_fn(state["params"], batch, rest, rng)
    b = loss_fn(state["params"], batch, rest, rng, drawn)
    c = loss_fn(state["params"], batch, rest, rng, drawn)
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c), strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(y, z)
    # Different draws change the result.
    other = uda_step.sample_draws(jax.random.key(99), jnp.asarray(batch["source_label"]),
                                  config.uda, 19)  # fmt: skip
    d = loss_fn(state["params"], batch, rest, rng, other)
    assert float(d[0]) != float(a[0])


def steps_on_devices(config, parts, batch, devices: int, steps: int = 2) -> tuple[dict, dict]:
    """`steps` jitted train steps with the batch split over `devices` (state replicated);
    (final state, last metrics). The step must compile once for all of them."""
    mesh = sharding.make_mesh(devices)
    traces = []
    graphdef, imnet_graphdef, tx, schedule, state = parts
    fn = uda_step.make_train_step(config, graphdef, imnet_graphdef, tx, schedule)

    def counted(state, batch, rng):
        traces.append(1)
        return fn(state, batch, rng)

    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))
    step = jax.jit(counted, in_shardings=(replicated, data, replicated),
                   out_shardings=(replicated, replicated))  # fmt: skip
    state = jax.device_put(jax.tree.map(jnp.array, state), replicated)
    sharded = jax.device_put(batch, data)
    for _ in range(steps):
        state, metrics = step(state, sharded, jax.random.key(0))
    assert len(traces) == 1  # compiled once, reused for the later steps
    return state, metrics


def assert_same_steps(
    one: tuple[dict, dict],
    eight: tuple[dict, dict],
    *,
    atol: float = 1e-5,
    metrics_rtol: float = 1e-5,
) -> None:
    """Parameters, BatchNorm statistics, teacher and metrics of two runs agree."""
    (state1, m1), (state8, m8) = one, eight
    for key in ("params", "batch_stats", "ema_params"):
        for a, b in zip(jax.tree.leaves(state1[key]), jax.tree.leaves(state8[key]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=key)
    for k in m1:
        np.testing.assert_allclose(m1[k], m8[k], rtol=metrics_rtol, atol=1e-6, err_msg=k)


def test_eight_devices_equal_one_device_and_compile_once():
    config = tiny_config()
    # Adam divides by |g| + eps: with a small eps a gradient near zero turns float rounding
    # differences of the sharded reductions into lr-sized parameter differences (with 1e-4,
    # one value of a 2,560-element parameter ended 1.7e-5 apart after the steps).
    config.optim.eps = 1e-3
    parts = build(config)
    batch = make_batch(seed=1, batch=8)
    assert_same_steps(*(steps_on_devices(config, parts, batch, n) for n in (1, 8)))


def test_per_pass_backward_equals_the_joint_gradient():
    """train.backward = per_pass (each pass differentiated right after it runs) and joint
    (one gradient of the total): same losses, gradient norm, parameters, BatchNorm
    statistics and teacher after two steps, with every term on (feature distance too)."""
    config = tiny_config()
    config.uda.feature_distance_weight = 0.005
    config.uda.mask_weight = 0.5  # weights inside each pass's own gradient too
    config.optim.eps = 1e-4  # as above: float rounding of near-zero gradients, not lr-sized
    parts = build(config)
    batch = make_batch(seed=2)
    runs = {}
    for backward in ("joint", "per_pass"):
        config.train.backward = backward
        runs[backward] = steps_on_devices(config, parts, batch, 1)
    assert set(runs["joint"][1]) == set(runs["per_pass"][1])
    assert float(runs["joint"][1]["loss/feature_distance"]) > 0
    assert_same_steps(runs["joint"], runs["per_pass"])


def test_alpha_override_reaches_the_step():
    from lcmsm_jax import config_cli

    fv = config_cli.parse(
        "lcmsm-train",
        [
            "--config",
            str(Path(__file__).parents[1] / "configs" / "base.py"),
            "--config.uda.alpha=0.25",
        ],  # fmt: skip
        lambda fv: None,
    )
    assert fv.config.uda.alpha == 0.25
    config = tiny_config()
    config.uda.alpha = fv.config.uda.alpha
    config.uda.enabled = False  # the EMA update runs regardless; keep the step cheap
    graphdef, imnet_graphdef, tx, schedule, state = build(config)
    state["step"] = jnp.asarray(5, jnp.int32)  # alpha_5 = min(1 - 1/6, 0.25) = 0.25
    state["ema_params"] = jax.tree.map(jnp.zeros_like, state["params"])
    before = state["params"]
    fn = uda_step.make_train_step(config, graphdef, imnet_graphdef, tx, schedule)
    new, _ = fn(state, make_batch(), jax.random.key(0))
    for ema, p in zip(jax.tree.leaves(new["ema_params"]), jax.tree.leaves(before), strict=True):
        np.testing.assert_allclose(ema, 0.75 * np.asarray(p), rtol=1e-6, atol=1e-7)
    with pytest.raises(config_cli.UsageError, match="no_such_key"):
        config_cli.parse(
            "lcmsm-train",
            [
                "--config",
                str(Path(__file__).parents[1] / "configs" / "base.py"),
                "--config.uda.no_such_key=1",
            ],  # fmt: skip
            lambda fv: None,
        )


@pytest.mark.parametrize(
    "uda,terms",
    [
        ({"enabled": False}, {"source"}),
        (
            {
                "masked_source": False,
                "masked_mix": False,
                "feature_distance_weight": 0.0,
                "pseudo_label_head": "decode",
            },
            {"source", "mix"},
        ),  # fmt: skip
        (
            {
                "masked_source": False,
                "masked_mix": False,
                "masked_target": True,
                "pseudo_label_head": "decode",
            },
            {"source", "feature_distance", "mix", "masked_target"},
        ),  # fmt: skip
    ],
    ids=["source_only", "dacs", "mic"],
)
def test_ladder_switches_select_terms(uda, terms):
    config = deterministic(tiny_config(**uda))
    graphdef, imnet_graphdef, _, _, state = build(config)
    loss_fn = uda_step.make_loss_fn(config, graphdef, imnet_graphdef)
    _, aux = loss_fn(state["params"], make_batch(), rest_of(state), jax.random.key(0))
    assert set(aux["losses"]) == terms


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _with_leaf(tree, path, value):
    """A copy of the nested dict `tree` whose leaf at `path` is `value`."""
    if not path:
        return value
    return {**tree, path[0]: _with_leaf(tree[path[0]], path[1:], value)}


FD_SAMPLES = [
    ("backbone", "patch_embed1", "proj", "kernel"),
    ("backbone", "block1", 0, "attn", "q", "kernel"),  # block 0 of stage 1's stacked weights
    ("backbone", "block4", 1, "mlp", "dwconv", "kernel"),
    ("backbone", "norm4", "scale"),
    ("decode_head", "embed_layers", 2, "proj", "kernel"),
    ("decode_head", "fuse_layer", "aspp_modules", 1, "depthwise_conv", "conv", "kernel"),
    ("decode_head", "conv_seg", "kernel"),
    ("vlc_head", "fuse_layer", "bottleneck", "bn", "scale"),
    ("vlc_head", "spatial_block", "kernel"),
    ("vlc_head", "conv_seg", "kernel"),
    ("text_embed_net", "kernel"),
]


def test_gradient_matches_central_finite_differences_in_float64():
    with jax.enable_x64(True):
        config = deterministic(tiny_config())
        config.model.dtype = "float64"
        graphdef, imnet_graphdef, _, _, state = build(config)
        to64 = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
        )
        params, rest = to64(state["params"]), to64(rest_of(state))
        rest["imnet_params"] = jax.tree.map(lambda p: p * 1.01, rest["imnet_params"])
        batch = {k: v.astype(np.float64) if v.dtype == np.float32 else v
                 for k, v in make_batch().items()}  # fmt: skip
        loss_fn = uda_step.make_loss_fn(config, graphdef, imnet_graphdef)
        key = jax.random.key(0)
        draws = uda_step.sample_draws(key, jnp.asarray(batch["source_label"]), config.uda, 19)

        def total(p):
            return loss_fn(p, batch, rest, key, draws)[0]

        grads = jax.jit(jax.grad(total))(params)
        loss_at = jax.jit(total)
        for sample in FD_SAMPLES:
            # A MiT stage's blocks are one stacked array: (..., "block1", 0, ...) is block 0.
            block = next((k for k in sample if isinstance(k, int)), None)
            stacked = str(sample[1]).startswith("block") and block is not None
            path = sample[:2] + sample[3:] if stacked else sample
            leaf, grad = _get(params, path), np.asarray(_get(grads, path)).reshape(-1)
            start, stop = 0, grad.size
            if stacked:
                start, stop = block * leaf[0].size, (block + 1) * leaf[0].size
            # The most sensitive entry of this tensor (of this block).
            index = start + int(np.argmax(np.abs(grad[start:stop])))
            step = 1e-5 * max(1.0, abs(float(leaf.reshape(-1)[index])))
            shifted = [
                _with_leaf(params, path, leaf.reshape(-1).at[index].add(s).reshape(leaf.shape))
                for s in (step, -step)
            ]
            numeric = (float(loss_at(shifted[0])) - float(loss_at(shifted[1]))) / (2 * step)
            assert abs(grad[index]) > 0, path
            # The loss is piecewise smooth (ReLUs, max over classes): a parameter feeding
            # everything downstream (patch_embed1) moves some units across a kink, which
            # limits agreement to ~1e-4 relative there; a wrong gradient is off by O(1).
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-3, atol=1e-6, err_msg=path)


def test_state_from_converted_pytorch_weights():
    """A PyTorch-initialised step: student from a UDA checkpoint, teacher = student at t = 0,
    ImageNet backbone = the student's backbone, text projection from `text_embed_net.*`."""
    from lcmsm_jax import convert

    sys.path.insert(0, str(Path(__file__).parent))
    from test_convert import torch_style_state_dict

    config = tiny_config()
    source = models.Segmentor(config.model, rngs=nnx.Rngs(5))
    state_dict = {
        ("" if k.startswith("text_embed_net.") else "model.") + k: v
        for k, v in torch_style_state_dict(source).items()
    }
    model = models.Segmentor(config.model, rngs=nnx.Rngs(0))
    report = convert.load_torch_state_dict(model, state_dict, strict=True)
    assert report.missing == []
    graphdef, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx, _ = optim.make_optimizer(config.optim, params.to_pure_dict(), 10)
    embeddings, _ = text.resolve("random:0", labels.CITYSCAPES_CLASSES, config.model.text_dim)
    state = uda_step.init_state(model, tx, embeddings)
    np.testing.assert_array_equal(
        state["params"]["text_embed_net"]["kernel"], source.text_embed_net.kernel[...]
    )
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(state["ema_params"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state["params"]["backbone"]),
                    jax.tree.leaves(state["imnet_params"]), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    assert int(state["step"]) == 0
