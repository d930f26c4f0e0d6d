"""The multi-resolution (HRDA) training step (docs/method.md §8.6): terms, gradient routing,
detail boxes, pseudo-label margins, sharding, and the single-resolution step untouched.

The network is a two-layer-per-stage MiT of small widths (a test-only variant) at crop 64,
detail 32, batch 2: every term of LC-MSM plus MIC's masked target is present. Most checks
read one eager run of the step (compiling its backward costs minutes on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_step import (
    SIZE,
    assert_same_steps,
    deterministic,
    make_batch,
    rest_of,
    steps_on_devices,
    tiny_config,
)
from test_step_values import np_cross_entropy, np_feature_distance

from lcmsm_jax import config_checks, config_cli, models, optim, text
from lcmsm_jax.data import labels
from lcmsm_jax.models import hrda, mit
from lcmsm_jax.uda import losses, multires
from lcmsm_jax.uda import step as uda_step

DETAIL = 32
TERMS = ("source", "masked_source", "feature_distance", "mix", "masked_mix", "masked_target")
# Boxes of the supplied draws: offsets in {0, 8, 16, 24} (HRDA's rule for 64 / 32).
BOXES = {
    "source_box": (8, 24), "masked_source_box": (24, 0), "mix_box": (16, 16),
    "masked_mix_box": (0, 8), "masked_target_box": (24, 24),
}  # fmt: skip
TINY_MIT = mit.MiTVariant((16, 16, 32, 32), (1, 1, 1, 1), num_heads=(1, 1, 1, 1))


@pytest.fixture(scope="module", autouse=True)
def tiny_mit():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(mit.MIT_VARIANTS, "mit_test", TINY_MIT)
        yield


def hrda_config(**uda):
    config = deterministic(tiny_config(**{"masked_target": True, "pseudo_threshold": 0.0, **uda}))
    config.model.backbone = "mit_test"
    config.model.hrda.enabled = True
    config.model.hrda.detail_size = (DETAIL, DETAIL)
    config.model.hrda.attention_embed_dim = 16
    return config


def build(config):
    model = models.build_segmentor(config.model, rngs=nnx.Rngs(0))
    graphdef, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    imnet_graphdef = nnx.split(model.backbone)[0]
    tx, schedule = optim.make_optimizer(config.optim, params.to_pure_dict(), config.train.steps)
    embeddings, _ = text.resolve("random:0", labels.CITYSCAPES_CLASSES, config.model.text_dim)
    return graphdef, imnet_graphdef, tx, schedule, uda_step.init_state(model, tx, embeddings)


def hrda_batch(batch=2, seed=0):
    data = make_batch(seed=seed, batch=batch)
    data["source_label"][0] = 13  # a car image: feature-distance cells at the context stride
    valid = np.ones((batch, SIZE, SIZE), np.uint8)
    valid[:, :6], valid[:, -10:], valid[:, :, :3] = 0, 0, 0  # top, bottom, left margins
    data["target_valid"] = valid
    return data


@pytest.fixture(scope="module")
def run():
    """One eager step: the terms' Jacobian w.r.t. params and rest, and the aux."""
    config = hrda_config()
    graphdef, imnet_graphdef, _, _, state = build(config)
    loss_fn = uda_step.make_loss_fn(config, graphdef, imnet_graphdef)
    batch, key = hrda_batch(), jax.random.key(0)
    draws = uda_step.sample_draws(
        key, jnp.asarray(batch["source_label"]), config.uda, 19, detail_size=(DETAIL, DETAIL)
    )
    draws.update({name: jnp.asarray(box, jnp.int32) for name, box in BOXES.items()})
    # The ImageNet backbone moved away from the student's: a non-zero feature distance.
    rest = rest_of(state)
    rest["imnet_params"] = jax.tree.map(lambda p: p * 1.01, rest["imnet_params"])

    def terms(params, rest):
        aux = loss_fn(params, batch, rest, key, draws)[1]
        return jnp.stack([aux["losses"][name] for name in TERMS]), aux

    (by_params, by_rest), aux = jax.jacrev(terms, argnums=(0, 1), has_aux=True)(
        state["params"], rest
    )
    grads = {name: jax.tree.map(lambda g, i=i: g[i], by_params) for i, name in enumerate(TERMS)}
    return dict(config=config, graphdef=graphdef, imnet_graphdef=imnet_graphdef, state=state,
                rest=rest, batch=batch, grads=grads, by_rest=by_rest, aux=aux)  # fmt: skip


def reached(grads):
    """Modules with a non-zero gradient; the attention heads by wrapped head."""
    flat = {**grads}
    for name, sub in flat.pop("attention_head", {}).items():
        flat[f"attention_head.{name}"] = sub
    norms = {
        k: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(v))) for k, v in flat.items()
    }
    return {k for k, v in norms.items() if v > 0}


DECODE = {"backbone", "decode_head", "attention_head.decode"}
LCMSM = {"backbone", "vlc_head", "text_embed_net", "attention_head.lcmsm"}


@pytest.mark.parametrize(
    "term,reaches",
    [("source", DECODE), ("mix", DECODE), ("masked_target", DECODE),
     ("masked_source", LCMSM), ("masked_mix", LCMSM), ("feature_distance", {"backbone"})],
)  # fmt: skip
def test_gradient_routing(run, term, reaches):
    assert reached(run["grads"][term]) == reaches


def test_nothing_flows_into_teacher_imnet_or_text_embeddings(run):
    for name in ("ema_params", "imnet_params", "text_embeddings"):
        assert all(not np.any(g) for g in jax.tree.leaves(run["by_rest"][name])), name


def test_detail_term_reaches_backbone_and_head_not_attention():
    """detail_loss_weight = 1 keeps only the detail cross-entropy of the source pass."""
    config = hrda_config(enabled=False)
    config.model.hrda.detail_loss_weight = 1.0
    graphdef, imnet_graphdef, _, _, state = build(config)
    loss_fn = uda_step.make_loss_fn(config, graphdef, imnet_graphdef)
    batch = hrda_batch()
    grads = jax.grad(lambda p: loss_fn(p, batch, rest_of(state), jax.random.key(1))[0])(
        state["params"]
    )
    assert reached(grads) == {"backbone", "decode_head"}


def hand_pass(run, images, labels_, weights, head, box):
    """(1 - 0.1) CE(fused) + 0.1 CE(detail, cropped labels / weights) from forward_train,
    composed in numpy; returns it with the context features."""
    state = run["state"]
    model = nnx.merge(run["graphdef"], state["params"], state["batch_stats"])
    out = model.forward_train(jnp.asarray(images), jnp.asarray(box), state["text_embeddings"],
                              heads=(head,), train=True)  # fmt: skip
    fused, _, detail = out[head]
    (y, x), d = box, DETAIL
    crop_w = None if weights is None else np.asarray(weights)[:, y : y + d, x : x + d]
    loss = 0.9 * np_cross_entropy(fused, labels_, weights) + 0.1 * np_cross_entropy(
        detail, np.asarray(labels_)[:, y : y + d, x : x + d], crop_w
    )
    return loss, out["features"]


def test_passes_equal_forward_train_and_multires_loss_with_the_drawn_box(run):
    aux, batch = run["aux"], run["batch"]
    source, label = batch["source_image"], batch["source_label"]
    cases = {
        "source": (source, label, None, "decode", BOXES["source_box"]),
        "masked_source": (aux["masked_source_image"], label, None, "lcmsm",
                          BOXES["masked_source_box"]),
        "masked_target": (aux["masked_target_image"], aux["pseudo_label"], aux["pseudo_weight"],
                          "decode", BOXES["masked_target_box"]),
    }  # fmt: skip
    for term, args in cases.items():
        expected, features = hand_pass(run, *args)
        np.testing.assert_allclose(float(aux["losses"][term]), expected, rtol=2e-5, err_msg=term)
        if term == "source":  # feature distance: context features, ImageNet on the x0.5 image
            imnet = nnx.merge(run["imnet_graphdef"], run["rest"]["imnet_params"])
            fd = np_feature_distance(
                features[-1],
                imnet(hrda.downscale_half(source))[-1],
                label,
                tuple(run["config"].uda.feature_distance_classes),
                0.75,
            )
            assert fd > 0
            np.testing.assert_allclose(float(aux["losses"]["feature_distance"]), 0.005 * fd,
                                       rtol=2e-5)  # fmt: skip


def test_pseudo_labels_are_the_teachers_window_inference(run):
    state, batch = run["state"], run["batch"]
    teacher = nnx.merge(run["graphdef"], state["ema_params"], state["batch_stats"])
    windows = [(y, x) for y in (0, 16, 32) for x in (0, 16, 32)]  # detail 32, stride 16
    fused = teacher.forward_inference(
        jnp.asarray(batch["target_image"]),
        state["text_embeddings"],
        windows=windows,
        heads=("lcmsm",),
        train=True,
    )["lcmsm"][0]
    probs = jax.nn.softmax(losses.upsample_logits(fused, (SIZE, SIZE)), -1)
    agree = np.mean(np.asarray(jnp.argmax(probs, -1)) == run["aux"]["pseudo_label"])
    assert agree > 0.999, agree


def test_pseudo_weight_is_zero_exactly_where_target_valid_is_zero(run):
    aux, valid = run["aux"], run["batch"]["target_valid"]
    assert float(aux["quality"]) == 1.0  # threshold 0: every pixel confident
    np.testing.assert_array_equal(np.asarray(aux["pseudo_weight"]), valid.astype(np.float32))
    # ClassMix keeps it: target pixels of the mixed weight carry the margins too.
    mask, mixed = np.asarray(aux["classmix_mask"]), np.asarray(aux["mixed_weight"])
    np.testing.assert_array_equal(mixed[mask == 0], valid[mask == 0].astype(np.float32))
    np.testing.assert_array_equal(mixed[mask == 1], 1.0)


def test_boxes_come_from_the_step_key():
    config, batch = hrda_config(), hrda_batch()
    key = jax.random.key(5)
    label = jnp.asarray(batch["source_label"])
    draws = uda_step.sample_draws(key, label, config.uda, 19, detail_size=(DETAIL, DETAIL))
    assert set(multires.BOX_NAMES) <= set(draws)
    boxes = np.stack([np.asarray(draws[name]) for name in multires.BOX_NAMES])
    assert np.all(boxes % 8 == 0) and np.all((boxes >= 0) & (boxes <= 24))
    # Without a detail size the draws are the single-resolution ones, value for value.
    plain = uda_step.sample_draws(key, label, config.uda, 19)
    assert set(draws) - set(plain) == set(multires.BOX_NAMES)
    for name in plain:
        for a, b in zip(jax.tree.leaves(plain[name]), jax.tree.leaves(draws[name]), strict=True):
            np.testing.assert_array_equal(a, b)


def test_disabled_hrda_is_the_single_resolution_step():
    """hrda.enabled False: a plain Segmentor, and the source term is the plain CE."""
    config = deterministic(tiny_config(enabled=False))
    config.model.backbone = "mit_test"
    graphdef, imnet_graphdef, _, _, state = build(config)
    assert "attention_head" not in state["params"]
    loss_fn = uda_step.make_loss_fn(config, graphdef, imnet_graphdef)
    batch = make_batch()
    _, aux = loss_fn(state["params"], batch, rest_of(state), jax.random.key(0))
    model = nnx.merge(graphdef, state["params"], state["batch_stats"])
    logits = model(jnp.asarray(batch["source_image"]), train=True, heads=("decode",))["decode"]
    assert set(aux["draws"]) == set(
        uda_step.sample_draws(jax.random.key(0), jnp.asarray(batch["source_label"]), config.uda, 19)
    )
    np.testing.assert_allclose(
        float(aux["losses"]["source"]), np_cross_entropy(logits, batch["source_label"]), rtol=1e-6
    )


@pytest.mark.slow
def test_eight_devices_equal_one_device():
    """The whole multi-resolution step (every LC-MSM term and MIC's masked target, the
    optimizer and the EMA teacher), two steps: the teacher's window batch, the shared
    boxes, the margins and the BatchNorm statistics under data sharding."""
    config = hrda_config()
    # Adam's update moves by up to lr * |g| / eps for |g| << eps, so eps bounds how much it
    # magnifies rounding differences of the gradient (sharded sums). test_step.py's check
    # uses 1e-4; with the masked terms' larger gradients (global norm ~500) 1e-2 keeps that
    # factor at lr * 10 / 1e-2 = 0.06 for the heads.
    config.optim.eps = 1e-2
    # 8 px mask blocks: with 16 px blocks a 32 px detail crop can hold large blank regions,
    # through which this tiny MiT's patch-embedding LayerNorm sends masked-mix gradients of
    # ~1e33 into the first layer's bias; rounding then decides the comparison.
    config.uda.mask_block_size = 8
    parts = build(config)
    batch = hrda_batch(batch=8, seed=1)
    one, eight = (steps_on_devices(config, parts, batch, n) for n in (1, 8))
    # The first patch embedding, which the masked terms drive hardest (gradients ~300),
    # within 3e-5; the gradient's global norm (~500) to 1e-4.
    assert_same_steps(one, eight, atol=3e-5, metrics_rtol=1e-4)
    assert all(float(one[1][f"loss/{term}"]) > 0 for term in TERMS)
    assert np.isfinite(float(one[1]["grad_norm"]))


@pytest.mark.parametrize(
    "key,value,crop",
    [("model.hrda.detail_size", (20, 32), (64, 64)),
     ("model.hrda.detail_size", (128, 128), (64, 64)),
     ("data.crop_size", (60, 64), (60, 64)),
     ("model.hrda.detail_loss_weight", 1.5, (64, 64))],
)  # fmt: skip
def test_config_checks_name_the_hrda_key(key, value, crop):
    config = hrda_config()
    config.data.crop_size = crop
    section, name = key.rsplit(".", 1)
    node = config
    for part in section.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(config_cli.UsageError, match=key.replace(".", r"\.")):
        config_checks.check_train_config(config)
