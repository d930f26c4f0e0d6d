"""ClassMix: batch-level class set, ceil(|U|/2) choice per image, masks, mixing (Step 7)."""

import itertools
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcmsm_jax.uda import classmix

K = 19
IGNORE = K  # slot of the ignore label 255


def two_images():
    """Image 0 holds {0, 3, 255}, image 1 holds {3, 5}: U = {0, 3, 5, 255}."""
    labels = np.zeros((2, 4, 6), np.int32)
    labels[0, :2] = 3
    labels[0, 3, :] = 255
    labels[1] = 5
    labels[1, :, :2] = 3
    return labels


choice = jax.jit(classmix.sample_classmix_choice, static_argnums=2)
many_choices = jax.jit(
    jax.vmap(classmix.sample_classmix_choice, in_axes=(0, None, None)), static_argnums=2
)


def test_present_classes_batch_level_with_ignore():
    present = np.asarray(classmix.present_classes(jnp.asarray(two_images()), K))
    assert present.shape == (K + 1,)
    assert np.flatnonzero(present).tolist() == [0, 3, 5, IGNORE]
    no_ignore = two_images()
    no_ignore[no_ignore == 255] = 0
    assert np.flatnonzero(classmix.present_classes(jnp.asarray(no_ignore), K)).tolist() == [0, 3, 5]


@pytest.mark.parametrize("values, k", [([0, 3, 5, 255], 2), ([1, 2, 7, 18, 255], 3), ([4], 1)])
def test_choice_size_subset_and_uniformity(values, k):
    labels = np.resize(np.asarray(values, np.int32), (2, 4, 5))
    present = np.asarray(classmix.present_classes(jnp.asarray(labels), K))
    chosen = np.asarray(many_choices(jax.random.split(jax.random.key(0), 3000), labels, K))
    assert chosen.shape == (3000, 2, K + 1)
    assert (chosen.sum(-1) == k).all()  # ceil(|U| / 2) per image
    assert not (chosen & ~present).any()  # chosen subset of U
    subsets = Counter(tuple(np.flatnonzero(c)) for c in chosen[:, 0])
    n_subsets = len(list(itertools.combinations(values, k)))
    assert len(subsets) == n_subsets
    for count in subsets.values():  # uniform over the k-subsets of U
        assert abs(count / 3000 - 1 / n_subsets) < 0.04
    if len(values) > 1:
        assert (chosen[:, 0] != chosen[:, 1]).any(-1).mean() > 0.3  # images draw independently


def test_chosen_class_may_be_absent_from_the_image():
    labels = jnp.asarray(two_images())
    # Image 1 "chooses" 0 and 255, neither of which it contains: nothing is pasted.
    chosen = np.zeros((2, K + 1), bool)
    chosen[0, [3, IGNORE]] = True
    chosen[1, [0, IGNORE]] = True
    mask = np.asarray(classmix.classmix_mask(labels, jnp.asarray(chosen), K))
    assert mask.dtype == np.float32
    expected0 = np.isin(two_images()[0], [3, 255]).astype(np.float32)
    np.testing.assert_array_equal(mask[0], expected0)
    np.testing.assert_array_equal(mask[1], 0)


def test_sampled_mask_consistent_with_choice():
    labels = jnp.asarray(two_images())
    chosen = np.asarray(choice(jax.random.key(4), labels, K))
    mask = np.asarray(classmix.classmix_mask(labels, jnp.asarray(chosen), K))
    slots = np.where(two_images() == 255, IGNORE, two_images())
    for b in range(2):
        np.testing.assert_array_equal(mask[b], chosen[b][slots[b]].astype(np.float32))


def test_mix_arithmetic():
    rng = np.random.default_rng(5)
    mask = (rng.random((2, 4, 6)) > 0.5).astype(np.float32)
    src, trg = rng.standard_normal((2, 2, 4, 6, 3)).astype(np.float32)
    out = np.asarray(classmix.mix(jnp.asarray(mask), jnp.asarray(src), jnp.asarray(trg)))
    np.testing.assert_array_equal(out, np.where(mask[..., None] > 0, src, trg))
    soft = np.full((2, 4, 6), 0.25, np.float32)
    out = classmix.mix(jnp.asarray(soft), jnp.asarray(src), jnp.asarray(trg))
    np.testing.assert_allclose(out, 0.25 * src + 0.75 * trg, rtol=1e-6)

    labels_s = two_images()
    labels_t = rng.integers(0, K, (2, 4, 6)).astype(np.int32)
    mixed = classmix.mix(jnp.asarray(mask), jnp.asarray(labels_s), jnp.asarray(labels_t))
    assert mixed.dtype == jnp.int32
    np.testing.assert_array_equal(mixed, np.where(mask > 0, labels_s, labels_t))

    # Weights: source pixels 1 (even where their label is 255), target pixels q.
    q = 0.37
    w = np.asarray(classmix.mix(jnp.asarray(mask), jnp.ones((2, 4, 6)), jnp.full((2, 4, 6), q)))
    np.testing.assert_allclose(w, np.where(mask > 0, 1.0, q), rtol=1e-6)


def test_pipeline_jit_sharded():
    if jax.device_count() < 4:
        pytest.skip("needs simulated devices")
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(6)
    labels = rng.choice([0, 2, 9, 255], size=(4, 8, 8)).astype(np.int32)
    labels[3] = 13  # a class only image 3 holds still enters every image's U

    @jax.jit
    def run(key, labels):
        chosen = classmix.sample_classmix_choice(key, labels, K)
        return chosen, classmix.classmix_mask(labels, chosen, K)

    chosen, mask = run(jax.random.key(7), jax.device_put(jnp.asarray(labels), sharding))
    chosen, mask = np.asarray(chosen), np.asarray(mask)
    assert (chosen.sum(-1) == 3).all()  # |U| = 5 -> 3
    assert not chosen[:, [1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18]].any()
    slots = np.where(labels == 255, IGNORE, labels)
    for b in range(4):
        np.testing.assert_array_equal(mask[b], chosen[b][slots[b]])
