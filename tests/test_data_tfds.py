"""ArrayRecord path: tools/prepare_tfds.py builds, TfdsSource reads (without TensorFlow)."""

import importlib.util
import os
import sys

import array_record  # noqa: F401  (test dependency: fail, not skip, without it)
import numpy as np
import pytest
import tensorflow_datasets  # noqa: F401  (test dependency: fail, not skip, without it)
from test_data_fixtures import write_gta5

from lcmsm_jax.data import pipeline, rcs, sources

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "prepare_tfds.py")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("prepare_tfds", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = str(tmp_path_factory.mktemp("gta5"))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    write_gta5(root, n=5, size=(32, 48))
    name = tool.main(["--dataset", "gta5", "--root", root, "--data-dir", data_dir])
    assert name == 0
    return root, data_dir


def test_tfds_source_matches_the_file_source(built):
    root, data_dir = built
    files = sources.open_source("gta5", root)
    records = sources.TfdsSource("lcmsm_gta5", "train", data_dir=data_dir)
    assert len(records) == len(files) == 5
    by_name = {}
    raw = records._open()
    for i in range(len(records)):
        by_name[raw[i]["file_name"].decode()] = i
    for j, image in enumerate(files.images):
        a, b = files[j], records[by_name[image]]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    counts = records.class_counts()
    order = [by_name[image] for image in files.images]
    np.testing.assert_array_equal(counts[order], rcs.compute_class_counts(files))
    assert "tensorflow" not in sys.modules  # read (and built) without TensorFlow


def test_tfds_source_in_the_pipeline(built):
    _, data_dir = built
    records = sources.TfdsSource("lcmsm_gta5", "train", data_dir=data_dir)
    ds = pipeline.train_dataset(
        records, batch_size=2, seed=0, stream="source", scale=(48, 32), crop_size=(16, 16),
        class_counts=records.class_counts(), rcs_min_pixels=0, worker_count=0,
    )  # fmt: skip
    batch = next(iter(ds))
    assert batch["image"].shape == (2, 16, 16, 3) and batch["label"].shape == (2, 16, 16)
    images_only = sources.TfdsSource("lcmsm_gta5", "train", data_dir=data_dir, label_key=None)
    assert set(images_only[0]) == {"image"}
