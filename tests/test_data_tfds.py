"""ArrayRecord path: tools/prepare_tfds.py builds, TfdsSource reads (without TensorFlow),
and `config.data.<domain>.format = "tfds"` trains on the same arrays as the files."""

import importlib.util
import os
import sys
from pathlib import Path

import array_record  # noqa: F401  (test dependency: fail, not skip, without it)
import numpy as np
import pytest
import tensorflow_datasets  # noqa: F401  (test dependency: fail, not skip, without it)
from test_data_fixtures import write_gta5

from lcmsm_jax import config_checks, config_cli
from lcmsm_jax.data import datasets, pipeline, prepare, rcs, sources, tfds_source

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "prepare_tfds.py")
BASE = str(Path(__file__).parents[1] / "configs" / "base.py")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("prepare_tfds", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = str(tmp_path_factory.mktemp("gta5"))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    write_gta5(root, n=5, size=(32, 48))
    assert prepare.main(["--dataset", "gta5", "--root", root, "--workers", "1", "--quiet"]) == 0
    name = tool.main(["--dataset", "gta5", "--root", root, "--data-dir", data_dir])
    assert name == 0
    return root, data_dir


def test_tfds_source_matches_the_file_source(built):
    root, data_dir = built
    files = sources.open_source("gta5", root)
    records = tfds_source.TfdsSource("lcmsm_gta5", "train", data_dir=data_dir)
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
    records = tfds_source.TfdsSource("lcmsm_gta5", "train", data_dir=data_dir)
    ds = pipeline.train_dataset(
        records, batch_size=2, seed=0, stream="source", scale=(48, 32), crop_size=(16, 16),
        class_counts=records.class_counts(), rcs_min_pixels=0, worker_count=0,
    )  # fmt: skip
    batch = next(iter(ds))
    assert batch["image"].shape == (2, 16, 16, 3) and batch["label"].shape == (2, 16, 16)
    images_only = tfds_source.TfdsSource("lcmsm_gta5", "train", data_dir=data_dir, label_key=None)
    assert set(images_only[0]) == {"image"}


def _config(root: str, data_dir: str, source_format: str):
    """A GTA5 -> synthetic training config on the built images, with RCS."""
    config = config_cli.parse("test", ["--config", BASE], lambda fv: None).config
    data = config.data
    data.source.update(dict(format=source_format, root=root, tfds_data_dir=data_dir,
                            scale=(48, 32), rcs_min_pixels=0))  # fmt: skip
    data.target.update(dict(dataset="synthetic", scale=(48, 32)))
    data.synthetic.update(dict(size=(32, 48), num_images=4))
    data.update(dict(batch_size=2, crop_size=(16, 16), worker_count=0))
    config.text.embeddings = "random:0"
    config.train.eval_every = -1
    return config


def test_tfds_format_in_the_config_gives_the_files_arrays(built):
    root, data_dir = built
    configs = {f: _config(root, data_dir, f) for f in ("files", "tfds")}
    assert config_checks.check_train_config(configs["tfds"]) == []
    opened = {
        f: datasets.open_domain(c.data.source, c.data, labels_wanted=True, seed=0,
                                synthetic_domain="source")
        for f, c in configs.items()
    }  # fmt: skip
    assert isinstance(opened["files"], sources.PngSource)
    assert isinstance(opened["tfds"], tfds_source.TfdsSource)
    assert len(opened["tfds"]) == len(opened["files"]) == 5
    for i, image in enumerate(opened["files"].images):  # built in the file source's order
        assert opened["tfds"]._open()[i]["file_name"].decode() == image
        for key in ("image", "label"):
            np.testing.assert_array_equal(opened["tfds"][i][key], opened["files"][i][key])
    # The same class counts for rare-class sampling, so the same batches.
    iterators = {f: datasets.train_iterators(c)[0] for f, c in configs.items()}
    for _ in range(3):
        files_batch, tfds_batch = next(iterators["files"]), next(iterators["tfds"])
        assert files_batch.keys() == tfds_batch.keys()
        for key in files_batch:
            np.testing.assert_array_equal(files_batch[key], tfds_batch[key], err_msg=key)
    assert "tensorflow" not in sys.modules


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"source.format": "tfrecord"}, ["config.data.source.format = 'tfrecord'", "files, tfds"]),
        ({"source.format": "tfds", "source.dataset": "synthetic"},
         ["config.data.source.format = 'tfds'", "'files' for synthetic", "gta5, synthia"]),
        ({"target.format": "tfds", "target.dataset": "acdc"},
         ["config.data.target.format = 'tfds'", "'files' for acdc"]),
        ({"target.format": "tfds", "target.dataset": "cityscapes", "target.split": "extra"},
         ["config.data.target.split = 'extra'", "train, val, test"]),
        ({"source.format": "tfds", "source.tfds_data_dir": "{tmp}/none"},
         ["config.data.source.tfds_data_dir", "no such folder"]),
        ({"source.format": "tfds", "source.tfds_data_dir": "{tmp}"},
         ["holds no lcmsm_gta5 dataset", "tools/prepare_tfds.py --dataset gta5"]),
    ],
)  # fmt: skip
def test_tfds_format_config_mistakes_name_the_key(built, tmp_path, changes, expected):
    root, data_dir = built
    config = _config(root, data_dir, "files")
    for key, value in changes.items():
        domain, field = key.split(".")
        config.data[domain][field] = value.format(tmp=tmp_path)
    with pytest.raises(config_cli.UsageError) as error:
        config_checks.check_train_config(config)
    for text in expected:
        assert text in str(error.value), str(error.value)


def test_missing_tfds_build_is_named(tmp_path):
    source = tfds_source.open_tfds("gta5", "all", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no ArrayRecord build of lcmsm_gta5"):
        len(source)
