"""Losses: upsampling, weighted CE, label downscaling, feature distance, pseudo-labels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcmsm_jax.uda import losses

THINGS = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def np_cross_entropy(logits, labels, weights=None):
    """Reference on logits already at label size: Σ w·valid·nll / (B·H·W), float64."""
    z = logits.astype(np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    valid = labels != 255
    nll = -np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    w = np.ones(labels.shape) if weights is None else weights
    return float((w * valid * nll).sum() / labels.size)


# ----------------------------------------------------------------------------- upsampling


def test_upsample_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    for size in [(20, 28), (13, 17), (5, 7)]:
        out = np.asarray(losses.upsample_logits(jnp.asarray(logits), size))
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(logits.transpose(0, 3, 1, 2)),
            size=size,
            mode="bilinear",
            align_corners=False,
        )
        np.testing.assert_allclose(out, expected.numpy().transpose(0, 2, 3, 1), atol=1e-5)


# ----------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_matches_reference():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 6, 5, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, (2, 6, 5)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 255
    weights = rng.random(labels.shape).astype(np.float32)
    ce = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    assert ce.shape == () and ce.dtype == jnp.float32
    np.testing.assert_allclose(ce, np_cross_entropy(logits, labels, weights), rtol=1e-5)
    unweighted = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(unweighted, np_cross_entropy(logits, labels), rtol=1e-5)


def test_cross_entropy_averages_over_all_pixels():
    labels = np.zeros((2, 4, 4), np.int32)
    labels[:, :2] = 255  # half the pixels ignored
    ce = losses.cross_entropy(jnp.zeros((2, 4, 4, 5)), jnp.asarray(labels))
    np.testing.assert_allclose(ce, 0.5 * math.log(5), rtol=1e-6)  # not log(5)


def test_cross_entropy_all_ignore_is_zero_with_zero_gradient():
    labels = jnp.full((2, 8, 8), 255, jnp.int32)
    logits = jnp.asarray(np.random.default_rng(2).standard_normal((2, 2, 2, 3)), jnp.float32)
    ce, grad = jax.value_and_grad(losses.cross_entropy)(logits, labels)
    assert float(ce) == 0.0
    assert np.isfinite(grad).all() and (np.asarray(grad) == 0).all()


def test_cross_entropy_upsamples_logits_first():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((1, 3, 4, 6)).astype(np.float32)
    labels = rng.integers(0, 6, (1, 12, 16)).astype(np.int32)
    labels[0, 0] = 255
    big = np.asarray(losses.upsample_logits(jnp.asarray(logits), (12, 16)))
    ce = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(ce, np_cross_entropy(big, labels), rtol=1e-5)
    bf16 = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels))
    assert bf16.dtype == jnp.float32


# ----------------------------------------------------------------------------- label downscale


def test_downscale_label_ratio_hand_cases():
    # Four 2x2 cells: pure 13; 3/4 of 6 plus one 2; 2/2 split; 3/4 ignore plus one 13.
    labels = np.array(
        [
            [13, 13, 6, 6, 1, 1, 255, 255],
            [13, 13, 6, 2, 4, 4, 255, 13],
        ],
        np.int32,
    )[None]
    out = np.asarray(losses.downscale_label_ratio(jnp.asarray(labels), 2, 0.75, 19))
    assert out.shape == (1, 1, 4) and out.dtype == np.int32
    assert out[0, 0].tolist() == [13, 6, 255, 255]
    strict = np.asarray(losses.downscale_label_ratio(jnp.asarray(labels), 2, 0.8, 19))
    assert strict[0, 0].tolist() == [13, 255, 255, 255]  # 0.75 share < 0.8
    loose = np.asarray(losses.downscale_label_ratio(jnp.asarray(labels), 2, 0.5, 19))
    # A 2/2 tie goes to the lower class id; an ignore winner stays 255 whatever the ratio.
    assert loose[0, 0].tolist() == [13, 6, 1, 255]


def test_downscale_label_ratio_cells_at_factor_32():
    rng = np.random.default_rng(4)
    cells = rng.choice([0, 11, 255], size=(2, 4, 4)).astype(np.int32)
    labels = np.kron(cells, np.ones((32, 32), np.int32))  # every cell pure
    labels[0, :8, :32] = 5  # 1/4 of cell (0, 0) replaced: share 0.75 survives
    labels[1, :9, :32] = 5  # share < 0.75: ignored
    out = np.asarray(losses.downscale_label_ratio(jnp.asarray(labels), 32, 0.75, 19))
    expected = cells.copy()
    expected[1, 0, 0] = 255
    np.testing.assert_array_equal(out, expected)


# ----------------------------------------------------------------------------- feature distance


def fd(student, imnet, labels):
    return losses.feature_distance(student, imnet, labels, thing_classes=THINGS)


def test_feature_distance_value_pooled_over_batch():
    labels = np.zeros((2, 4, 4), np.int32)  # factor 2, 2x2 cells per image
    labels[0, :2, :2] = 13  # thing
    labels[0, :2, 2:] = 11  # thing
    labels[1, 2:, 2:] = 17  # thing; other cells are stuff (0)
    student = np.zeros((2, 2, 2, 3), np.float32)
    imnet = np.zeros_like(student)
    student[0, 0, 0] = [3, 4, 0]  # distance 5
    imnet[0, 0, 1] = [0, 0, 1]  # distance 1
    student[1, 1, 1] = [0, 2, 0]  # distance 2
    student[1, 0, 0] = [100, 0, 0]  # stuff cell: not counted
    value = fd(jnp.asarray(student), jnp.asarray(imnet), jnp.asarray(labels))
    # Pooled: (5 + 1 + 2) / 3, not the mean of per-image means ((5 + 1)/2 + 2)/2.
    np.testing.assert_allclose(value, 8 / 3, rtol=1e-6)


def test_feature_distance_gradients():
    rng = np.random.default_rng(5)
    labels = np.kron(rng.choice([0, 13], size=(2, 4, 4)), np.ones((4, 4), np.int32))
    labels[0, :4, :4] = 13
    student = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
    imnet = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
    g_student, g_imnet = jax.grad(fd, argnums=(0, 1))(student, imnet, jnp.asarray(labels))
    assert (np.asarray(g_imnet) == 0).all()  # the ImageNet features are frozen
    diff = np.asarray(student - imnet)
    mask = np.asarray(labels[:, ::4, ::4] == 13, np.float32)
    expected = mask[..., None] * diff / np.linalg.norm(diff, axis=-1, keepdims=True) / mask.sum()
    np.testing.assert_allclose(g_student, expected, rtol=1e-5, atol=1e-7)


def test_feature_distance_equal_features_give_zero_gradient_not_nan():
    labels = jnp.full((2, 8, 8), 13, jnp.int32)
    feats = jnp.asarray(np.random.default_rng(6).standard_normal((2, 2, 2, 4)), jnp.float32)
    value, grad = jax.value_and_grad(fd)(feats, feats, labels)
    assert float(value) == 0.0
    assert np.isfinite(grad).all() and (np.asarray(grad) == 0).all()


def test_feature_distance_no_thing_cell_is_zero():
    labels = jnp.zeros((2, 8, 8), jnp.int32)
    student = jnp.ones((2, 2, 2, 4))
    value, grad = jax.value_and_grad(fd)(student, jnp.zeros_like(student), labels)
    assert float(value) == 0.0 and (np.asarray(grad) == 0).all()


# ----------------------------------------------------------------------------- pseudo-labels


def confident_logits(batch, height, width, confident):
    """Two classes; where `confident` p(class 1) = 0.99, elsewhere p(class 0) = 0.6."""
    logits = np.zeros((batch, height, width, 2), np.float32)
    logits[..., 0] = math.log(0.6 / 0.4)
    logits[confident, 0] = 0.0
    logits[confident, 1] = math.log(0.99 / 0.01)
    return logits


def test_pseudo_labels_one_batch_scalar():
    confident = np.zeros((2, 4, 5), bool)
    confident[0] = True  # image 0 fully confident, image 1 not at all
    labels, weights, quality = losses.pseudo_labels(
        jnp.asarray(confident_logits(2, 4, 5, confident)), (4, 5)
    )
    assert labels.dtype == jnp.int32 and weights.dtype == jnp.float32 and quality.shape == ()
    np.testing.assert_array_equal(labels, confident.astype(np.int32))
    np.testing.assert_allclose(quality, 0.5)
    np.testing.assert_allclose(weights, np.full((2, 4, 5), 0.5))  # the same q for both images


def test_pseudo_labels_threshold_is_inclusive():
    logits = jnp.zeros((1, 1, 1, 2))  # p = 0.5 exactly
    _, _, at = losses.pseudo_labels(logits, (1, 1), threshold=0.5)
    _, _, above = losses.pseudo_labels(logits, (1, 1), threshold=0.5000001)
    assert float(at) == 1.0 and float(above) == 0.0


def test_pseudo_labels_crop_rows_and_upsampling():
    confident = np.ones((2, 3, 3), bool)
    confident[1, 0, 0] = False
    logits = confident_logits(2, 3, 3, confident)
    labels, weights, quality = losses.pseudo_labels(
        jnp.asarray(logits), (12, 12), ignore_top=2, ignore_bottom=3
    )
    assert labels.shape == (2, 12, 12) and weights.shape == (2, 12, 12)
    q = float(quality)
    assert 0.9 < q < 1.0  # q counts upsampled pixels
    expected = np.full((2, 12, 12), q, np.float32)
    expected[:, :2] = 0
    expected[:, -3:] = 0
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
