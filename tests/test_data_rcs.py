"""Rare-class sampling: statistics, the temperature softmax, candidates, crop re-draws."""

import numpy as np
import pytest
from test_data_fixtures import write_gta5

from lcmsm_jax.data import pipeline, rcs, sources

# 99.9% quantiles of the chi-square distribution by degrees of freedom.
CHI2_999 = {3: 16.27, 4: 18.47, 5: 20.52}


def _chi2(observed: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def _counts_for(target_probs, temperature=0.01, images_per_class=(3, 4, 5, 6)):
    """Per-image counts whose class frequencies give `target_probs` under the softmax."""
    logp = np.log(target_probs)
    k = len(target_probs)
    freq = (1 + temperature * logp.sum()) / k - temperature * logp
    totals = np.round(freq * 1e7).astype(np.int64)
    rows = []
    for c, n_images in enumerate(images_per_class):
        for share in np.linspace(1, 2, n_images) / np.linspace(1, 2, n_images).sum():
            row = np.zeros(19, np.int64)
            row[2 * c] = int(totals[c] * share)
            rows.append(row)
    return np.stack(rows)


def test_class_pixel_counts_ignore_255():
    label = np.array([[0, 0, 255], [18, 3, 255]], np.uint8)
    counts = rcs.class_pixel_counts(label)
    assert counts.shape == (19,) and counts.sum() == 4 and counts[0] == 2 and counts[18] == 1


def test_probabilities_are_the_temperature_softmax():
    counts = np.random.default_rng(0).integers(0, 10_000, (7, 19))
    counts[:, 9] = 0  # a class that never occurs is not sampled
    classes, probs = rcs.class_probabilities(counts, 0.01)
    assert 9 not in classes and len(classes) == 18
    f = counts.sum(0)[classes] / counts.sum()
    expected = np.exp((1 - f) / 0.01) / np.exp((1 - f) / 0.01).sum()
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    np.testing.assert_allclose(probs, np.exp(-f / 0.01) / np.exp(-f / 0.01).sum(), rtol=1e-9)


def test_gta_like_statistics_favour_the_rarest_classes():
    # Road-dominated pixel shares (percent) roughly like GTA5.
    shares = np.array([34, 8, 18, 2.5, 1, 1.2, 0.15, 0.1, 8, 2.4, 14, 0.4, 0.04, 3, 1.2, 0.45,
                       0.07, 0.03, 0.01])  # fmt: skip
    classes, probs = rcs.class_probabilities((shares * 1e6)[None].astype(np.int64), 0.01)
    assert probs[classes == 18] > probs[classes == 0] * 1e10 and probs[0] < 1e-10
    assert np.argsort(probs)[::-1][:3].tolist() == [18, 17, 12]


def test_sampler_frequencies_follow_the_softmax():
    target = np.array([0.5, 0.3, 0.15, 0.05])
    counts = _counts_for(target)
    sampler = rcs.make_sampler(counts, temperature=0.01, min_pixels=3000)
    np.testing.assert_allclose(sampler.probs, target, rtol=1e-3)
    rng = np.random.default_rng(1234)
    draws = [sampler.draw(rng) for _ in range(20_000)]
    classes = np.array([c for c, _ in draws])
    observed = np.array([(classes == c).sum() for c in sampler.classes])
    assert _chi2(observed, sampler.probs) < CHI2_999[3]
    # Given the class, images are uniform among its candidates.
    c = int(sampler.classes[3])
    images = np.array([i for k, i in draws if k == c])
    cands = sampler.candidates[3]
    assert set(images.tolist()) == set(cands.tolist())
    observed = np.array([(images == i).sum() for i in cands])
    assert _chi2(observed, np.full(len(cands), 1 / len(cands))) < CHI2_999[len(cands) - 1]


def test_candidates_need_more_than_min_pixels():
    counts = np.zeros((3, 19), np.int64)
    counts[:, 0] = [3000, 3001, 10]
    sampler = rcs.make_sampler(counts, min_pixels=3000)
    assert sampler.candidates[0].tolist() == [1]
    counts = _counts_for(np.array([0.5, 0.3, 0.15, 0.05]))
    counts[0, 18] = 2000  # occurs, but in no image with more than 3000 pixels
    with pytest.raises(ValueError, match=r"more than 3000 pixels of bicycle \(18\)"):
        rcs.make_sampler(counts, min_pixels=3000)


def test_rcs_crop_is_redrawn_until_the_class_is_present():
    # Class 5 occupies a 32x32 corner of a 128x128 image: under a third of the 64x64 crops
    # hold more than 50 of its pixels (58/200 here); with ten re-draws 95% do (190/200).
    label = np.zeros((128, 128), np.uint8)
    label[:, 64:] = 1
    label[96:, 96:] = 5
    image = np.zeros((128, 128, 3), np.uint8)
    kwargs = dict(scale=(128, 128), crop_size=(64, 64), cat_max_ratio=0.75, flip_prob=0.5)
    hits = {None: 0, 5: 0}
    for seed in range(200):
        for rare in (None, 5):
            view = pipeline.train_view(
                image, label, np.random.default_rng(seed), rare_class=rare,
                min_class_pixels=50, **kwargs,
            )  # fmt: skip
            hits[rare] += (view["label"] == 5).sum() > 50
    assert hits[None] < 90 and hits[5] > 170


def test_pipeline_draws_rare_class_images_more_often(tmp_path):
    write_gta5(str(tmp_path), n=6, size=(32, 48), ids=[7, 11, 23])  # road, building, sky
    source = sources.open_source("gta5", str(tmp_path))
    counts = rcs.compute_class_counts(source)
    # Paint a rare class (bicycle) into image 4 only, through its statistics.
    counts[4, 18] = 400
    ds = pipeline.train_dataset(
        source, batch_size=2, seed=0, stream="source", scale=(48, 32), crop_size=(16, 16),
        class_counts=counts, rcs_min_pixels=100, num_threads=0,
    )  # fmt: skip
    it = iter(ds)
    drawn = np.concatenate([next(it)["index"] for _ in range(60)])
    classes, probs = rcs.class_probabilities(counts, 0.01)
    assert (drawn == 4).mean() > 0.9 * probs[classes == 18][0]


class _ConstantSource:
    """In-memory source: image i is all ones, label i is all class `classes[i]`."""

    def __init__(self, classes):
        self.classes = classes

    def __len__(self):
        return len(self.classes)

    def __getitem__(self, i):
        label = np.full((8, 8), self.classes[i], np.uint8)
        return {"image": np.ones((8, 8, 3), np.uint8), "label": label}


def test_pipeline_class_frequencies_follow_the_softmax():
    # One candidate image per class, so the drawn image reveals the drawn class.
    target = np.array([0.45, 0.3, 0.15, 0.07, 0.03])
    counts = _counts_for(target, images_per_class=(1, 1, 1, 1, 1))
    classes = [int(np.flatnonzero(row)[0]) for row in counts]
    ds = pipeline.train_dataset(
        _ConstantSource(classes), batch_size=50, seed=7, stream="source", scale=(8, 8),
        crop_size=(8, 8), class_counts=counts, rcs_min_pixels=3000, rcs_min_crop_ratio=0.0,
        num_threads=0,
    )  # fmt: skip
    it = iter(ds)
    drawn = np.concatenate([next(it)["index"] for _ in range(60)])
    observed = np.bincount(drawn, minlength=5)
    _, probs = rcs.class_probabilities(counts, 0.01)
    np.testing.assert_allclose(probs, target, rtol=1e-3)
    assert _chi2(observed, probs) < CHI2_999[4]
