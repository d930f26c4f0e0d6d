"""The values of the step: the EMA teacher after several updates, and every loss term.

`test_step.py` checks which terms exist, where their gradients go and that the gradient is
the derivative of the loss. This file checks that the loss is the right one: each term is
recomputed from separate forward passes of the model, composed in numpy (hand-mixed images
and labels, an independent softmax, upsampling by PyTorch's `F.interpolate`, the weighted
cross-entropy written out), and the teacher is recomputed from an independent float64 EMA
of the student's parameter history.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from test_step import SIZE, build, deterministic, make_batch, rest_of, tiny_config

from lcmsm_jax import optim
from lcmsm_jax.uda import augment, masking
from lcmsm_jax.uda import step as uda_step

NUM_CLASSES = 19
IGNORE = 255
# Rows whose pseudo-label weight is 0 (the pseudo-label crop), non-zero to exercise it.
IGNORE_TOP, IGNORE_BOTTOM = 4, 8
MASK_WEIGHT = 0.7  # not 1, so a dropped masked-loss weight shows


# ----------------------------------------------------------------------------- numpy pieces


def np_upsample(logits, size):
    """[B, h, w, K] -> [B, H, W, K], bilinear with align_corners=False (PyTorch's own)."""
    x = torch.from_numpy(np.asarray(logits, np.float32)).permute(0, 3, 1, 2).double()
    if tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).numpy()


def np_softmax(x):
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_cross_entropy(logits, labels, weights=None):
    """(1 / #pixels) * sum of w * [y != ignore] * -log p_y, over all pixels of the batch."""
    labels = np.asarray(labels)
    probs = np_softmax(np_upsample(logits, labels.shape[1:]))
    valid = labels != IGNORE
    safe = np.where(valid, labels, 0)
    nll = -np.log(np.take_along_axis(probs, safe[..., None], axis=-1)[..., 0])
    loss = np.where(valid, nll, 0.0)
    if weights is not None:
        loss = loss * np.asarray(weights, np.float64)
    return loss.sum() / labels.size


def np_feature_distance(student, imnet, labels, things, min_ratio):
    """Mean L2 distance over the stride cells whose majority label is a thing class."""
    student, imnet, labels = (np.asarray(a, np.float64) for a in (student, imnet, labels))
    batch, h, w, _ = student.shape
    f = labels.shape[1] // h
    selected = np.zeros((batch, h, w), bool)
    for b in range(batch):
        for i in range(h):
            for j in range(w):
                cell = labels[b, i * f : (i + 1) * f, j * f : (j + 1) * f].ravel()
                values, counts = np.unique(cell, return_counts=True)
                # The ignore label competes; ties go to the smaller id (ignore is largest).
                best = np.lexsort((values, -counts))[0]
                share = counts[best] / cell.size
                selected[b, i, j] = (
                    values[best] != IGNORE and share >= min_ratio and int(values[best]) in things
                )
    dist = np.sqrt(((student - imnet) ** 2).sum(-1))
    return (dist * selected).sum() / max(selected.sum(), 1)


def np_pseudo_labels(teacher_logits, size, threshold):
    """Arg-max labels, max probability, quality q and the cropped weight map."""
    probs = np_softmax(np_upsample(teacher_logits, size))
    labels, confidence = probs.argmax(-1), probs.max(-1)
    quality = (confidence >= threshold).mean()
    weight = np.full(labels.shape, quality)
    weight[:, :IGNORE_TOP] = 0.0
    weight[:, size[0] - IGNORE_BOTTOM :] = 0.0
    return labels, confidence, quality, weight


def np_text_features(params, embeddings):
    """The student's text projection, x W + b, in float64."""
    layer = {k: np.asarray(v, np.float64) for k, v in params["text_embed_net"].items()}
    return np.asarray(embeddings, np.float64) @ layer["kernel"] + layer["bias"]


# ----------------------------------------------------------------------------- loss terms


@pytest.fixture(scope="module")
def model_state():
    """One tiny model and its t = 0 state; the tests differ only in `config.uda`/`optim`."""
    return build(value_config())


def value_config(**uda):
    config = deterministic(tiny_config(**uda))
    config.uda.ignore_top, config.uda.ignore_bottom = IGNORE_TOP, IGNORE_BOTTOM
    config.uda.mask_weight = MASK_WEIGHT
    config.uda.feature_distance_weight = 0.05
    config.uda.update(uda)
    return config


def forward(graphdef, params, batch_stats, images, head, text_features=None):
    """One separate train-mode forward pass (batch statistics, no dropout)."""
    model = nnx.merge(graphdef, params, batch_stats)
    out = model(
        jnp.asarray(images, jnp.float32),
        text_features=None if text_features is None else jnp.asarray(text_features, jnp.float32),
        train=True,
        rng=None,
        heads=(head,),
    )
    return np.asarray(out[head], np.float64), out["features"]


def middle_threshold(graphdef, params, batch_stats, target, head, text_features):
    """A confidence threshold near the median, in the widest gap between the 40% and 60%
    quantiles, so that float32 rounding cannot move a pixel across it."""
    logits, _ = forward(graphdef, params, batch_stats, target, head, text_features)
    values = np.sort(np_softmax(np_upsample(logits, target.shape[1:3])).max(-1).ravel())
    low, high = int(0.4 * values.size), int(0.6 * values.size)
    i = low + int(np.argmax(np.diff(values[low:high])))
    return float((values[i] + values[i + 1]) / 2)


@pytest.mark.parametrize(
    "method,uda",
    [
        ("lcmsm", {}),
        (
            "mic",
            {
                "masked_source": False,
                "masked_mix": False,
                "masked_target": True,
                "pseudo_label_head": "decode",
            },
        ),
    ],
)
def test_every_loss_term_equals_a_numpy_composition(model_state, method, uda):
    config = value_config(**uda)
    graphdef, imnet_graphdef, _, _, state = model_state
    batch = make_batch(seed=4)
    params, batch_stats = state["params"], state["batch_stats"]
    rest = rest_of(state)
    # A moved ImageNet backbone, so the feature distance is not 0.
    rest["imnet_params"] = jax.tree.map(lambda p: p * 1.05, rest["imnet_params"])
    text = np_text_features(params, rest["text_embeddings"])
    source, label, target = batch["source_image"], batch["source_label"], batch["target_image"]
    size = label.shape[1:]
    head = config.uda.pseudo_label_head
    # A threshold near the teacher's median confidence makes the quality q about 1/2, so a
    # weight that is dropped (1) or applied twice (q^2) changes the loss.
    config.uda.pseudo_threshold = middle_threshold(
        graphdef, params, batch_stats, target, head, text
    )
    loss_fn = uda_step.make_loss_fn(config, graphdef, imnet_graphdef)
    draws = uda_step.sample_draws(jax.random.key(7), jnp.asarray(label), config.uda, NUM_CLASSES)
    _, aux = loss_fn(params, batch, rest, jax.random.key(0), draws)
    terms = {k: float(v) for k, v in aux["losses"].items()}

    expected = {}
    logits, features = forward(graphdef, params, batch_stats, source, "decode")
    expected["source"] = np_cross_entropy(logits, label)
    # Feature distance on the last backbone map, against the frozen ImageNet backbone.
    imnet = nnx.merge(imnet_graphdef, rest["imnet_params"])
    imnet_last = np.asarray(imnet(jnp.asarray(source))[-1])
    fd = np_feature_distance(
        features[-1],
        imnet_last,
        label,
        set(config.uda.feature_distance_classes),
        config.uda.feature_distance_min_ratio,
    )
    assert fd > 0
    expected["feature_distance"] = config.uda.feature_distance_weight * fd

    # Teacher (here equal to the student: t = 0) on the clean target.
    teacher_logits, _ = forward(graphdef, rest["ema_params"], batch_stats, target, head, text)
    pseudo, _, quality, pseudo_weight = np_pseudo_labels(
        teacher_logits, size, config.uda.pseudo_threshold
    )
    assert 0.2 < quality < 0.8
    np.testing.assert_allclose(float(aux["quality"]), quality, atol=1e-6)

    # ClassMix by hand: source pixels whose label value was chosen, the rest from the target.
    chosen = np.asarray(draws["classmix_choice"])
    slots = np.where(label < NUM_CLASSES, label, NUM_CLASSES)
    paste = np.stack([chosen[b][slots[b]] for b in range(len(label))])
    assert 0 < paste.mean() < 1
    mixed_label = np.where(paste, label, pseudo)
    mixed_weight = np.where(paste, 1.0, pseudo_weight)
    mixed_clean = np.where(paste[..., None], source, target)
    mixed_image = np.asarray(
        augment.strong_transform(
            jnp.asarray(mixed_clean), draws["mix_aug"], *uda_step.NORMALIZATION
        )
    )
    np.testing.assert_array_equal(np.asarray(aux["mixed_label"]), mixed_label)
    np.testing.assert_allclose(np.asarray(aux["mixed_weight"]), mixed_weight, atol=1e-6)
    logits, _ = forward(graphdef, params, batch_stats, mixed_image, "decode")
    expected["mix"] = np_cross_entropy(logits, mixed_label, mixed_weight)

    def masked(images, name):
        strong = augment.strong_transform(
            jnp.asarray(images), draws[f"{name}_aug"], *uda_step.NORMALIZATION
        )
        return np.asarray(strong) * np.asarray(draws[f"{name}_mask"])[..., None]

    if config.uda.masked_source:
        logits, _ = forward(
            graphdef, params, batch_stats, masked(source, "masked_source"), "lcmsm", text
        )
        expected["masked_source"] = MASK_WEIGHT * np_cross_entropy(logits, label)
    if config.uda.masked_mix:
        logits, _ = forward(
            graphdef, params, batch_stats, masked(mixed_image, "masked_mix"), "lcmsm", text
        )
        expected["masked_mix"] = MASK_WEIGHT * np_cross_entropy(logits, mixed_label, mixed_weight)
    if config.uda.masked_target:
        logits, _ = forward(
            graphdef, params, batch_stats, masked(target, "masked_target"), "decode"
        )
        expected["masked_target"] = MASK_WEIGHT * np_cross_entropy(logits, pseudo, pseudo_weight)

    assert set(terms) == set(expected)
    for name in expected:
        np.testing.assert_allclose(terms[name], expected[name], rtol=2e-5, err_msg=name)
    # The pieces are not interchangeable: the mixed terms differ from their unweighted CE.
    unweighted = np_cross_entropy(
        forward(graphdef, params, batch_stats, mixed_image, "decode")[0], mixed_label
    )
    assert abs(unweighted - expected["mix"]) > 1e-2 * expected["mix"]


def test_masked_inputs_are_block_masked_strong_augmentations(model_state):
    """The masked images the step feeds the student: jitter/blur first, then whole blocks 0."""
    config = value_config()
    graphdef, imnet_graphdef, _, _, state = model_state
    batch = make_batch(seed=5)
    loss_fn = uda_step.make_loss_fn(config, graphdef, imnet_graphdef)
    draws = uda_step.sample_draws(
        jax.random.key(1), jnp.asarray(batch["source_label"]), config.uda, NUM_CLASSES
    )
    _, aux = loss_fn(state["params"], batch, rest_of(state), jax.random.key(0), draws)
    mask = np.asarray(draws["masked_source_mask"])
    block = config.uda.mask_block_size
    cells = mask.reshape(len(mask), SIZE // block, block, SIZE // block, block)
    assert np.all(cells.min(axis=(2, 4)) == cells.max(axis=(2, 4)))  # constant per block
    assert 0 < mask.mean() < 1
    strong = augment.strong_transform(
        jnp.asarray(batch["source_image"]), draws["masked_source_aug"], *uda_step.NORMALIZATION
    )
    np.testing.assert_array_equal(
        np.asarray(aux["masked_source_image"]),
        np.asarray(masking.apply_block_mask(strong, jnp.asarray(mask))),
    )
    np.testing.assert_array_equal(np.asarray(aux["masked_source_image"])[mask == 0], 0.0)


# ----------------------------------------------------------------------------- the teacher


def numpy_ema(history, alpha_max):
    """Teacher after len(history) updates: theta'_t = a_t theta'_{t-1} + (1 - a_t) theta_t,
    a_t = min(1 - 1/(t + 1), alpha_max), in float64 from the student at each step t."""
    teacher = None
    for t, student in enumerate(history):
        student = jax.tree.map(lambda x: np.asarray(x, np.float64), student)
        if teacher is None:
            teacher = student
            continue
        a = min(1.0 - 1.0 / (t + 1.0), alpha_max)
        teacher = jax.tree.map(lambda e, s, a=a: a * e + (1.0 - a) * s, teacher, student)
    return teacher


def test_teacher_is_the_ema_of_the_student_history(model_state):
    """Four real steps; the fourth step's pseudo-labels come from the EMA parameters."""
    # A smaller program to compile: source, masked source (which trains the LC-MSM head and
    # the text projection the teacher borrows) and mix.
    config = value_config(masked_mix=False, feature_distance_weight=0.0)
    config.optim.lr = 1e-3  # visible parameter changes within a few steps
    config.optim.warmup_steps = 0
    config.uda.alpha = 0.6  # caps from t = 3 on: the update rule past the ramp is used too
    config.uda.pseudo_threshold = 0.08
    graphdef, imnet_graphdef, _, _, state = model_state
    tx, schedule = optim.make_optimizer(config.optim, state["params"], config.train.steps)
    state = {**state, "opt_state": tx.init(state["params"])}
    train_step = jax.jit(
        uda_step.make_train_step(config, graphdef, imnet_graphdef, tx, schedule, with_images=True)
    )
    history, metrics = [], None
    for i in range(4):
        history.append(state["params"])
        state, metrics = train_step(state, make_batch(seed=10 + i), jax.random.key(i))
    assert int(state["step"]) == 4

    teacher_params = numpy_ema(history, config.uda.alpha)
    for path, ours in jax.tree_util.tree_leaves_with_path(state["ema_params"]):
        expected = np.asarray(_at(teacher_params, path))
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6, err_msg=str(path))
    # The student moved: the teacher is not any single student.
    moved = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(history[-1]), jax.tree.leaves(teacher_params), strict=True)
    ]
    assert max(moved) > 1e-3
    # The student's text projection moved too, so the teacher borrowing the student's (not
    # its own EMA copy) is visible in its pseudo-labels.
    kernel = lambda tree: np.asarray(tree["text_embed_net"]["kernel"])  # noqa: E731
    assert np.max(np.abs(kernel(history[-1]) - kernel(teacher_params))) > 1e-4

    # The fourth step's teacher forward, recomputed: EMA parameters, train-mode BN, the
    # student's (pre-update) text projection.
    target = make_batch(seed=13)["target_image"]
    text = np_text_features(history[-1], state["text_embeddings"])
    as32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), teacher_params)
    logits, _ = forward(graphdef, as32, state["ema_batch_stats"], target, "lcmsm", text)
    pseudo, confidence, quality, _ = np_pseudo_labels(
        logits, target.shape[1:3], config.uda.pseudo_threshold
    )
    images = metrics["images"]
    np.testing.assert_allclose(np.asarray(images["pseudo_confidence"]), confidence, atol=2e-5)
    agree = np.mean(np.asarray(images["pseudo_label"]) == pseudo)
    assert agree > 0.999, agree
    np.testing.assert_allclose(float(metrics["pseudo_label_quality"]), quality, atol=2e-3)

    # The student's own forward gives other pseudo-labels: the check above can tell them apart.
    student_logits, _ = forward(
        graphdef, history[-1], state["ema_batch_stats"], target, "lcmsm", text
    )
    _, student_confidence, _, _ = np_pseudo_labels(
        student_logits, target.shape[1:3], config.uda.pseudo_threshold
    )
    assert np.max(np.abs(student_confidence - confidence)) > 1e-3


def _at(tree, path):
    for entry in path:
        tree = tree[getattr(entry, "key", getattr(entry, "idx", None))]
    return tree
