"""Sources read each dataset's true on-disk format and map ids as the tables say."""

import os

import grain
import numpy as np
import pytest
from test_data_fixtures import (
    write_acdc,
    write_cityscapes,
    write_darkzurich,
    write_gta5,
    write_synthia,
)

from lcmsm_jax.data import labels as L
from lcmsm_jax.data import sources


def _check_labels(source, written, table):
    lut = L.lookup_table(table)
    assert sorted(source.labels) == sorted(written)
    for i, rel in enumerate(source.labels):
        example = source[i]
        ids = written[rel]
        assert example["image"].dtype == np.uint8 and example["image"].shape == (*ids.shape, 3)
        assert example["label"].dtype == np.uint8
        np.testing.assert_array_equal(example["label"], lut[ids])
        np.testing.assert_array_equal(source.read_label_ids(i, exact=True), ids)


def test_gta5_palette_labels(tmp_path):
    written = write_gta5(str(tmp_path), n=3)
    source = sources.open_source("gta5", str(tmp_path))
    assert len(source) == 3 and source.images[0] == "images/00001.png"
    _check_labels(source, written, L.GTA5_ID_TO_TRAIN_ID)
    # grain wraps it as a random-access source.
    assert grain.MapDataset.source(source)[1]["label"].shape == (24, 40)


@pytest.mark.parametrize("channels", [3, 4])
def test_synthia_16bit_labels(tmp_path, channels):
    written = write_synthia(str(tmp_path), n=3, channels=channels)
    source = sources.open_source("synthia", str(tmp_path))
    _check_labels(source, written, L.SYNTHIA_ID_TO_TRAIN_ID)


@pytest.mark.parametrize("kind", ["ids", "trainids"])
def test_cityscapes_label_ids_and_train_ids_agree(tmp_path, kind):
    written = write_cityscapes(str(tmp_path), split="val")
    source = sources.open_source("cityscapes", str(tmp_path), "val", label_kind=kind)
    assert len(source) == 4
    assert source.images[0] == "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    suffix = "_gtFine_labelIds.png" if kind == "ids" else "_gtFine_labelTrainIds.png"
    assert all(f.endswith(suffix) for f in source.labels)
    lut = L.lookup_table(L.CITYSCAPES_ID_TO_TRAIN_ID)
    for i, rel in enumerate(source.labels):
        ids = written[rel.replace(suffix, "_gtFine_labelIds.png")]
        np.testing.assert_array_equal(source[i]["label"], lut[ids])


def test_acdc_conditions_and_reference_images(tmp_path):
    written = write_acdc(str(tmp_path), conditions=("fog", "snow"))
    source = sources.open_source("acdc", str(tmp_path), "train")
    assert len(source) == 4  # the *_ref folders are not part of the split
    assert all("_ref" not in f for f in source.images)
    _check_labels(source, written, L.ACDC_ID_TO_TRAIN_ID)
    only_fog = sources.open_source("acdc", str(tmp_path), "train", conditions=("fog",))
    assert len(only_fog) == 2


def test_dark_zurich_labelled_val_and_unlabelled_train(tmp_path):
    written = write_darkzurich(str(tmp_path))
    val = sources.open_source("darkzurich", str(tmp_path), "val")
    _check_labels(val, written, L.DARK_ZURICH_ID_TO_TRAIN_ID)
    train = sources.open_source("darkzurich", str(tmp_path), "train", labels=False)
    assert len(train) == 2 and not train.has_labels  # night only, not day
    assert all("/night/" in f for f in train.images) and set(train[0]) == {"image"}
    with pytest.raises(ValueError, match="has no labels"):
        sources.open_source("darkzurich", str(tmp_path), "train")


def test_wrong_root_suggests_the_right_one(tmp_path):
    write_gta5(str(tmp_path / "gta5"), n=1)
    with pytest.raises(sources.LayoutError, match=r"images is missing.*did you mean --root"):
        sources.open_source("gta5", str(tmp_path))
    inside = str(tmp_path / "gta5" / "images")
    with pytest.raises(sources.LayoutError, match=f"did you mean --root {tmp_path / 'gta5'}"):
        sources.open_source("gta5", inside)
    os.makedirs(tmp_path / "loose")
    os.rename(tmp_path / "gta5" / "images" / "00001.png", tmp_path / "loose" / "00001.png")
    with pytest.raises(sources.LayoutError, match="holds PNG files directly"):
        sources.open_source("gta5", str(tmp_path / "loose"))
    with pytest.raises(sources.LayoutError, match="no such folder"):
        sources.open_source("gta5", str(tmp_path / "nowhere"))


def test_empty_folder_and_missing_label_folder(tmp_path):
    os.makedirs(tmp_path / "images")
    with pytest.raises(sources.LayoutError, match=r"images holds no \*\.png files"):
        sources.open_source("gta5", str(tmp_path))
    write_gta5(str(tmp_path), n=1)
    os.rename(tmp_path / "labels", tmp_path / "labels_old")
    with pytest.raises(sources.LayoutError, match="labels is missing"):
        sources.open_source("gta5", str(tmp_path))


def test_unpaired_image_is_named(tmp_path):
    write_gta5(str(tmp_path), n=3)
    os.remove(tmp_path / "labels" / "00002.png")
    pairs = sources.find_pairs("gta5", str(tmp_path), "all")
    assert pairs.unpaired_images == ["images/00002.png"] and len(pairs.images) == 2
    with pytest.raises(sources.LayoutError, match="images/00002.png"):
        sources.open_source("gta5", str(tmp_path))
    assert len(sources.open_source("gta5", str(tmp_path), labels=False)) == 3


def test_colour_label_is_rejected(tmp_path):
    write_gta5(str(tmp_path), n=1)
    from PIL import Image

    Image.new("RGB", (40, 24)).save(tmp_path / "labels" / "00001.png")
    with pytest.raises(ValueError, match="colour visualisation"):
        sources.open_source("gta5", str(tmp_path))[0]
