"""The data side of the multi-resolution (HRDA) variant: pseudo-label margins, HRDA's data
settings and RCS on the resized high-resolution crop, the "far_objects" synthetic scenes,
and the checks of the new config keys (docs/method.md §5.7)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from lcmsm_jax import config_checks
from lcmsm_jax.config_cli import UsageError
from lcmsm_jax.data import datasets, pipeline
from lcmsm_jax.data import synthetic as S
from lcmsm_jax.data import transforms as T
from lcmsm_jax.data.synthetic import cli as synthetic_cli
from lcmsm_jax.data.synthetic.geometry import (
    BICYCLE,
    LIGHT,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    SIGN,
)  # fmt: skip

sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402
import demo  # noqa: E402
import demo_hr  # noqa: E402

FAR_CLASSES = {POLE, LIGHT, SIGN, PERSON, RIDER, MOTORCYCLE, BICYCLE}


def _hrda_mask(height, width, margins):
    """HRDA's `valid_pseudo_mask` construction (mmseg/datasets/cityscapes.py, pre_pipeline),
    transcribed: ones, then each non-zero margin zeroed with its own slice."""
    mask = np.ones((height, width), np.uint8)
    top, bottom, left, right = margins
    if top > 0:
        mask[:top, :] = 0
    if bottom > 0:  # the test matters: [-0:] would be the whole array
        mask[-bottom:, :] = 0
    if left > 0:
        mask[:, :left] = 0
    if right > 0:
        mask[:, -right:] = 0
    return mask


# ----------------------------------------------------------------------------- margins


@pytest.mark.parametrize(
    "margins", [(0, 0, 0, 0), (30, 240, 30, 30), (0, 5, 0, 0), (7, 0, 0, 3), (600, 600, 0, 0)]
)
def test_margin_mask_at_original_size_is_hrdas(margins):
    mask = T.valid_margin_mask(1024, 2048, margins)
    assert mask.shape == (1024, 2048) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, _hrda_mask(1024, 2048, margins))
    if margins == (30, 240, 30, 30):
        assert mask.sum() == (1024 - 270) * (2048 - 60)
        assert mask[29].sum() == 0 and mask[30, 30] == 1 and mask[30, 29] == 0
        assert mask[1024 - 241, 2047 - 30] == 1 and mask[1024 - 240].sum() == 0


@pytest.mark.parametrize("crop", [(24, 32), (48, 40)])  # the second is padded (rows)
def test_margin_mask_follows_the_image_through_resize_crop_flip_and_pad(crop):
    # A marker label (every native pixel its own id, above the pad value 255) goes through
    # the same resize (nearest), crop and flip as the image; the mask must equal the native
    # mask read at the marker's ids, whatever the crop and flip.
    h, w, margins = 37, 53, (3, 7, 2, 5)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    marker = (np.arange(h * w).reshape(h, w) + 256).astype(np.int32)
    native = T.valid_margin_mask(h, w, margins)
    kwargs = dict(scale=(80, 40), crop_size=crop, cat_max_ratio=1.0, flip_prob=0.5)
    assert T.keep_ratio_size(h, w, (80, 40)) == (40, 57)  # a non-integer factor
    flips, partial = 0, 0
    for seed in range(40):
        view = pipeline.train_view(image, marker, np.random.default_rng(seed),
                                   pseudo_margins=margins, **kwargs)  # fmt: skip
        ids = view["label"]
        expected = np.where(ids == 255, 0, native.ravel()[np.maximum(ids - 256, 0)])
        valid = view["target_valid"]
        assert valid.shape == crop and valid.dtype == np.uint8
        np.testing.assert_array_equal(valid, expected)
        # Without a label (the target), the same draws give the same image and mask.
        unlabelled = pipeline.train_view(image, None, np.random.default_rng(seed),
                                         pseudo_margins=margins, **kwargs)  # fmt: skip
        plain = pipeline.train_view(image, None, np.random.default_rng(seed), **kwargs)
        np.testing.assert_array_equal(unlabelled["target_valid"], valid)
        np.testing.assert_array_equal(unlabelled["image"], view["image"])
        np.testing.assert_array_equal(plain["image"], view["image"])
        assert set(plain) == {"image"}
        unpadded = ids != 255
        flips += ids[0, 0] > ids[0, -1]  # ids fall along a row: flipped
        partial += 0 < valid[unpadded].mean() < 1
    assert 5 < flips < 35 and partial > 5


def _tiny_synthetic_config():
    config = demo.get_config()
    config.data.synthetic.size = (32, 64)
    config.data.synthetic.num_images = 4
    config.data.crop_size = (16, 16)
    for domain in (config.data.source, config.data.target):
        domain.scale = (64, 32)
    config.data.source.rcs = False
    config.data.num_threads = 0
    config.data.worker_count = 0
    return config


def test_default_margins_leave_batches_unchanged_and_margins_draw_nothing():
    config = _tiny_synthetic_config()
    assert tuple(base.get_config().data.target.pseudo_margins) == (0, 0, 0, 0)
    _, target = datasets.train_iterators(config, process_index=0, process_count=1)
    config.data.target.pseudo_margins = (2, 6, 1, 3)
    _, masked = datasets.train_iterators(config, process_index=0, process_count=1)
    for _ in range(3):
        plain, with_mask = next(target), next(masked)
        assert set(plain) == {"image", "index"}
        assert set(with_mask) == {"image", "index", "target_valid"}
        for key in plain:
            np.testing.assert_array_equal(plain[key], with_mask[key], err_msg=key)
        valid = with_mask["target_valid"]
        assert valid.shape == (2, 16, 16) and valid.dtype == np.uint8
        assert set(np.unique(valid)) <= {0, 1}
    # Explicit zero margins are the default.
    source = S.SyntheticSource("target", 4, size=(32, 64), labels=False)
    view = dict(batch_size=2, seed=0, stream="target", scale=(64, 32), crop_size=(16, 16),
                cat_max_ratio=1.0, sampling="uniform", num_threads=0)  # fmt: skip
    a = next(iter(pipeline.train_dataset(source, **view)))
    b = next(iter(pipeline.train_dataset(source, pseudo_margins=(0, 0, 0, 0), **view)))
    assert set(a) == set(b) == {"image", "index"}
    np.testing.assert_array_equal(a["image"], b["image"])
    with pytest.raises(ValueError, match="pseudo_margins"):
        pipeline.train_dataset(source, pseudo_margins=(1, 2, 3), **view)


# ----------------------------------------------------------------------------- HRDA settings


@pytest.mark.parametrize("source, scale, resized", [
    ("gta5", (2560, 1440), (1407, 2560)),  # GTA5 1914 x 1052
    ("synthia", (2560, 1520), (1520, 2560)),  # SYNTHIA 1280 x 760
])  # fmt: skip
def test_hr_data_config_has_hrdas_settings(source, scale, resized, tmp_path):
    data = base.hr_data_config(source)
    assert data.source.dataset == source and tuple(data.source.scale) == scale
    native = {"gta5": (1052, 1914), "synthia": (760, 1280)}[source]
    assert T.keep_ratio_size(*native, tuple(data.source.scale)) == resized
    assert tuple(data.target.scale) == (2048, 1024) and tuple(data.eval.scale) == (2048, 1024)
    assert T.keep_ratio_size(1024, 2048, tuple(data.target.scale)) == (1024, 2048)
    assert tuple(data.crop_size) == (1024, 1024)
    assert data.source.rcs_min_crop_ratio == 2.0 and data.source.rcs_min_pixels == 3000
    assert tuple(data.target.pseudo_margins) == (30, 240, 30, 30)
    assert data.eval_classes == ("synthia16" if source == "synthia" else "cityscapes19")
    # Everything else is the single-resolution default.
    default = base.data_config()
    assert data.batch_size == default.batch_size and data.target.dataset == "cityscapes"
    config = base.get_config()
    config.data = data
    for key in ("source", "target", "eval"):
        config.data[key].root = str(tmp_path)
    config.text.embeddings = "random:0"
    assert config_checks.check_train_config(config) == []
    with pytest.raises(ValueError, match="gta5"):
        base.hr_data_config("cityscapes")


class _CountingRng:
    """A numpy Generator that counts flip draws (one per crop attempt of train_view)."""

    def __init__(self, seed):
        self.rng, self.flips = np.random.default_rng(seed), 0

    def integers(self, *args, **kwargs):
        return self.rng.integers(*args, **kwargs)

    def random(self):
        self.flips += 1
        return self.rng.random()


@pytest.mark.parametrize("side, accepted", [(39, True), (38, False)])
def test_rcs_counts_the_class_in_the_resized_hr_crop(side, accepted):
    # HRDA: a crop is kept when it holds more than min_pixels * min_crop_ratio = 6000 pixels
    # of the sampled class, counted in the crop of the resized image. A 39 x 39 block (1521
    # native pixels) becomes 78 x 78 = 6084 > 6000 at twice the size: kept at the first
    # draw. 38 x 38 -> 76 x 76 = 5776: re-drawn ten times, the eleventh draw kept.
    data = base.hr_data_config()
    threshold = data.source.rcs_min_pixels * data.source.rcs_min_crop_ratio
    assert threshold == 6000
    label = np.zeros((64, 64), np.uint8)
    label[10 : 10 + side, 20 : 20 + side] = 6
    image = np.zeros((64, 64, 3), np.uint8)
    rng = _CountingRng(0)
    view = pipeline.train_view(
        image, label, rng, scale=(128, 128), crop_size=(128, 128), cat_max_ratio=1.0,
        flip_prob=0.5, rare_class=6, min_class_pixels=threshold,
    )  # fmt: skip
    assert np.count_nonzero(view["label"] == 6) == (2 * side) ** 2
    assert rng.flips == (1 if accepted else 11)


# ----------------------------------------------------------------------------- far objects


def test_far_objects_add_only_small_classes_to_the_same_streets():
    added = 0
    for domain in S.DOMAINS:
        for i in range(3):
            _, plain = S.render(domain, i, size=(128, 256), image=False)
            _, far = S.render(domain, i, size=(128, 256), image=False, variant="far_objects")
            np.testing.assert_array_equal(
                plain, S.render(domain, i, size=(128, 256), image=False, variant="default")[1]
            )
            changed = far != plain
            assert set(np.unique(far[changed]).tolist()) <= FAR_CLASSES
            added += changed.sum()
    assert added > 0


def test_far_objects_are_small_and_many():
    # Visible instances of the far classes per image and their height, at 512 x 1024.
    def instances(variant):
        heights = []
        for i in range(2):
            sc = S.build_scene("target", i, 0, (512, 1024), variant)
            inst = np.asarray(sc.canvas.part_inst)[sc.canvas.part]
            cls = np.asarray(sc.canvas.inst_cls)
            for k in np.unique(inst):
                if cls[k] in FAR_CLASSES:
                    rows = np.flatnonzero((inst == k).any(axis=1))
                    heights.append(rows[-1] - rows[0] + 1)
        return np.array(heights)

    plain, far = instances("default"), instances("far_objects")
    assert len(far) > 2 * len(plain)
    assert np.median(far) < 0.5 * np.median(plain) and np.median(far) < 24


def test_variant_reaches_the_sources_and_is_checked(tmp_path, capsys):
    config = _tiny_synthetic_config()
    config.data.synthetic.variant = "far_objects"
    source = datasets.open_domain(config.data.target, config.data, labels_wanted=True, seed=0,
                                  synthetic_domain="target")  # fmt: skip
    assert source.variant == "far_objects" and "far_objects" in repr(source)
    _, expected = S.render("target", 1, size=(32, 64), image=False, variant="far_objects")
    np.testing.assert_array_equal(source[1]["label"], expected)
    with pytest.raises(ValueError, match="variant"):
        S.SyntheticSource("source", 2, variant="near")
    picture = tmp_path / "far.png"
    argv = ["--preview", str(picture), "--variant", "far_objects", "--height", "32",
            "--width", "64", "--num_images", "1"]  # fmt: skip
    assert synthetic_cli.main(argv) == 0 and picture.is_file()


def test_training_batches_carry_target_valid_sharded_like_the_images():
    from lcmsm_jax import sharding, train

    config = _tiny_synthetic_config()
    config.data.target.pseudo_margins = (2, 6, 1, 3)
    mesh = sharding.make_mesh(2)
    source_it, target_it = datasets.train_iterators(config, process_index=0, process_count=1)
    _, expected_it = datasets.train_iterators(config, process_index=0, process_count=1)
    batch, items = train._next_batch(source_it, target_it, sharding.batch_sharded(mesh), False)
    expected = next(expected_it)
    assert set(batch) == {"source_image", "source_label", "target_image", "target_valid"}
    np.testing.assert_array_equal(np.asarray(batch["target_valid"]), expected["target_valid"])
    np.testing.assert_array_equal(items["target"], expected["index"])
    # Split over the data axis like the target images: one image's mask per device.
    assert batch["target_valid"].sharding == batch["target_image"].sharding
    assert {s.data.shape for s in batch["target_valid"].addressable_shards} == {(1, 16, 16)}


def test_demo_hr_reads_far_objects_at_half_and_full_size():
    single, multires = demo_hr.get_config(), demo_hr.get_config("lcmsm_hrda")
    for config in (single, multires):
        assert config_checks.check_train_config(config) == []
        data = config.data
        assert data.synthetic.variant == "far_objects"
        assert tuple(data.synthetic.size) == (512, 1024)
    # Single resolution: DAFormer's proportions (half-size images, crops of half the height).
    assert not single.model.hrda.enabled and tuple(single.data.crop_size) == (256, 256)
    for domain in ("source", "target", "eval"):
        assert T.keep_ratio_size(512, 1024, tuple(single.data[domain].scale)) == (256, 512)
        assert T.keep_ratio_size(512, 1024, tuple(multires.data[domain].scale)) == (512, 1024)
    # HRDA's: full-size crops of twice the side, whose x0.5 context input has the single-
    # resolution crop's size, as has the full-resolution detail crop.
    assert multires.model.hrda.enabled and tuple(multires.data.crop_size) == (512, 512)
    assert tuple(multires.model.hrda.detail_size) == tuple(single.data.crop_size)


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize("key, value, expected", [
    ("data.target.pseudo_margins", (30, 240, 30), "four integers >= 0"),
    ("data.target.pseudo_margins", (30, -1, 30, 30), "four integers >= 0"),
    ("data.target.pseudo_margins", (30.0, 240, 30, 30), "four integers >= 0"),
    ("data.target.pseudo_margins", (20, 50, 0, 0), "leave part of the synthetic images"),
    ("data.synthetic.variant", "far", "one of default, far_objects"),
    ("data.source.rcs_min_crop_ratio", -1.0, "a number >= 0"),
])  # fmt: skip
def test_new_keys_are_checked(key, value, expected):
    config = _tiny_synthetic_config()  # synthetic scenes 64 x 32
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(UsageError) as error:
        config_checks.check_train_config(config)
    message = str(error.value)
    assert f"config.{key} = " in message and expected in message and f"--config.{key}=" in message


def test_margins_are_checked_against_the_native_size_of_real_datasets(tmp_path):
    config = base.get_config()
    for key in ("source", "target", "eval"):
        config.data[key].root = str(tmp_path)
    config.text.embeddings = "random:0"
    config.data.target.pseudo_margins = (30, 240, 1024, 1024)  # Cityscapes is 2048 wide
    with pytest.raises(UsageError, match=r"cityscapes images \(2048 x 1024"):
        config_checks.check_train_config(config)
    config.data.target.pseudo_margins = (30, 240, 30, 30)
    assert config_checks.check_train_config(config) == []
