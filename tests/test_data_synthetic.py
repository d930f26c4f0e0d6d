"""Synthetic two-domain scenes: determinism, classes, the domain gap, exports, pipelines."""

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from lcmsm_jax import cli
from lcmsm_jax.data import labels as L
from lcmsm_jax.data import pipeline, prepare, rcs, sources
from lcmsm_jax.data import synthetic as S
from lcmsm_jax.data.synthetic import exporter

SMALL = (64, 128)


def _class_stats(domain: str, indices, size=(128, 256)):
    """Pixel share per class `[19]` and mean colour per class `[19, 3]` (NaN if absent)."""
    counts, colour = np.zeros(19), np.zeros((19, 3))
    for i in indices:
        image, label = S.render(domain, i, size=size)
        for c in np.unique(label[label != 255]):
            mask = label == c
            counts[c] += mask.sum()
            colour[c] += image[mask].sum(axis=0)
    with np.errstate(invalid="ignore"):
        return counts / counts.sum(), colour / counts[:, None]


def _nearest_mean_accuracy(means: np.ndarray, domain: str, indices, size=(128, 256)) -> float:
    """Pixel accuracy of labelling every pixel with the class of the nearest mean colour."""
    hits = total = 0
    for i in indices:
        image, label = S.render(domain, i, size=size)
        valid = label != 255
        dist = ((image[valid][:, None, :].astype(np.float32) - means[None]) ** 2).sum(-1)
        hits += int((np.nanargmin(np.nan_to_num(dist, nan=np.inf), axis=1) == label[valid]).sum())
        total += int(valid.sum())
    return hits / total


def test_rasteriser_covers_pixel_centres():
    # Pixels whose centres lie in [left, right) x [top, bottom): a rectangle over x 1.5..4.5,
    # y 0.5..2.5 covers columns 1..3 of rows 0..1; shapes paint in order.
    part = np.zeros((5, 6), np.uint16)
    xs, ys = [[1.5, 4.5, 4.5, 1.5], [0, 6, 6, 6]], [[0.5, 0.5, 2.5, 2.5], [0, 0, 5, 5]]
    S.fill_spans(part, S.polygon_spans(xs, ys, 5, 6), np.array([7, 2], np.uint16))
    expected = np.zeros((5, 6), np.uint16)
    expected[0:2, 1:4] = 7
    expected[np.triu_indices(5, 1, 6)] = 2  # the triangle x > y (a vertex repeated)
    np.testing.assert_array_equal(part, expected)
    _, row, left, right = S.ellipse_spans([3.0], [3.0], [1.2], [1.2], 5, 6)
    np.testing.assert_array_equal(row, [2, 3])
    np.testing.assert_array_equal(left, [2, 2])
    np.testing.assert_array_equal(right, [4, 4])


def test_render_is_a_pure_function_of_domain_seed_and_index():
    image, label = S.render("source", 3, size=SMALL)
    again = S.render("source", 3, size=SMALL)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(label, again[1])
    for other in (
        S.render("source", 3, seed=1, size=SMALL),
        S.render("source", 4, size=SMALL),
        S.render("target", 3, size=SMALL),
    ):
        assert not np.array_equal(image, other[0]) and not np.array_equal(label, other[1])
    assert image.dtype == np.uint8 and image.shape == (*SMALL, 3)
    assert label.dtype == np.int32 and label.shape == SMALL
    assert set(np.unique(label)) <= set(range(19)) | {255}


def test_source_protocol_and_pickling():
    src = S.SyntheticSource("target", 5, size=SMALL, seed=2)
    assert len(src) == 5 and src.has_labels and "target" in repr(src)
    item = src[4]
    assert item["image"].shape == (*SMALL, 3) and item["label"].dtype == np.int32
    np.testing.assert_array_equal(src.read_label(4), item["label"])
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[4]["image"], item["image"])
    unlabelled = S.SyntheticSource("target", 5, size=SMALL, seed=2, labels=False)
    assert not unlabelled.has_labels and set(unlabelled[0]) == {"image"}
    np.testing.assert_array_equal(unlabelled[4]["image"], item["image"])
    with pytest.raises(IndexError):
        src[5]
    with pytest.raises(ValueError, match="domain"):
        S.SyntheticSource("gta", 5)


@pytest.mark.parametrize("domain", S.DOMAINS)
def test_all_19_classes_occur_within_16_images(domain):
    seen = set()
    for i in range(16):
        seen |= set(np.unique(S.render(domain, i, image=False)[1]).tolist())
    assert seen - {255} == set(range(19))


def test_domains_differ_in_colour_much_more_than_in_layout():
    share_s, colour_s = _class_stats("source", range(10))
    share_t, colour_t = _class_stats("target", range(10))
    # Layout: similar class frequencies (total variation distance), but not identical.
    tv = 0.5 * np.abs(share_s - share_t).sum()
    assert 0.02 < tv < 0.25, tv
    # Appearance: every frequent class changes its mean colour clearly.
    big = [L.CITYSCAPES_CLASSES.index(n) for n in ("road", "building", "vegetation", "sky")]
    assert (np.linalg.norm(colour_s[big] - colour_t[big], axis=1) > 40).all()
    # Colour alone: a source nearest-mean-colour classifier is weak (not a giveaway) on
    # source and far worse on target.
    on_source = _nearest_mean_accuracy(colour_s, "source", range(10, 14))
    on_target = _nearest_mean_accuracy(colour_s, "target", range(10, 14))
    assert on_source < 0.6 and on_target < on_source / 2, (on_source, on_target)


def test_rendering_speed_sanity():
    start = time.process_time()
    for i in range(4):
        image, _ = S.render("target", i)
        assert image.shape == (256, 512, 3)
    print(f"{(time.process_time() - start) / 4 * 1e3:.1f} ms per 256x512 image")


def _same_as_rendered(source, domain, n, size, seed=0):
    assert len(source) == n
    for i in range(n):
        image, label = S.render(domain, i, seed=seed, size=size)
        item = source[i]
        np.testing.assert_array_equal(item["image"], image)
        np.testing.assert_array_equal(item["label"], label)


def test_gta5_export_round_trips_and_validates(tmp_path):
    root = str(tmp_path / "gta")
    assert S.export("source", root, 3, layout="gta5", size=SMALL, seed=1) == root
    assert sorted(os.listdir(tmp_path)) == ["gta"]  # no temporary folder left behind
    with Image.open(os.path.join(root, "labels", "00001.png")) as im:
        assert im.mode == "P"
    _same_as_rendered(sources.open_source("gta5", root), "source", 3, SMALL, seed=1)
    assert prepare.main(["--dataset", "gta5", "--root", root, "--workers", "1", "--quiet"]) == 0
    _same_as_rendered(sources.open_source("gta5", root), "source", 3, SMALL, seed=1)


def test_cityscapes_export_round_trips_with_ignore_and_splits(tmp_path):
    root = str(tmp_path / "cs")
    S.export("target", root, 4, layout="cityscapes", size=SMALL)
    S.export("target", root, 2, layout="cityscapes", split="val", size=SMALL, seed=5)
    rendered = [S.render("target", i, size=SMALL)[1] for i in range(4)]
    assert any((lab == 255).any() for lab in rendered)  # the ego hood is ignored
    for kind in ("ids", "trainids"):
        train = sources.open_source("cityscapes", root, "train", label_kind=kind)
        _same_as_rendered(train, "target", 4, SMALL)
    _same_as_rendered(sources.open_source("cityscapes", root, "val"), "target", 2, SMALL, 5)
    args = ["--dataset", "cityscapes", "--root", root, "--workers", "1", "--quiet"]
    assert prepare.main(args) == 0
    assert sorted(f for f in os.listdir(tmp_path)) == ["cs"]


def test_export_refuses_to_clobber_and_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    root = str(tmp_path / "cs")
    S.export("target", root, 2, layout="cityscapes", size=SMALL)
    args = ["--dataset", "cityscapes", "--root", root, "--splits", "train", "--workers", "1"]
    assert prepare.main([*args, "--quiet"]) == 0
    with pytest.raises(FileExistsError, match="overwrite"):
        S.export("target", root, 3, layout="cityscapes", size=SMALL)
    S.export("target", root, 3, layout="cityscapes", size=SMALL, overwrite=True)
    # The stale manifest went with the old files, so readers scan the new ones.
    assert not os.path.exists(os.path.join(root, "lcmsm_manifest.json"))
    _same_as_rendered(sources.open_source("cityscapes", root), "target", 3, SMALL)

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(exporter, "_write_example", broken)
    with pytest.raises(OSError):
        S.export("source", str(tmp_path / "gta"), 2, size=SMALL)
    with pytest.raises(OSError):
        S.export("target", root, 2, layout="cityscapes", size=SMALL, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["cs"]
    assert not [f for f in os.listdir(root) if f.startswith(".")]
    _same_as_rendered(sources.open_source("cityscapes", root), "target", 3, SMALL)


def test_command_line_export_and_preview(tmp_path, capsys):
    out = str(tmp_path / "gta")
    size = ["--num-images", "2", "--height", "32", "--width", "64"]
    argv = ["--export", "--domain", "target", "--layout", "gta5", "--out", out, *size]
    assert cli.run("lcmsm-synthetic", argv) == 0
    assert "2/2" in capsys.readouterr().out
    assert len(sources.open_source("gta5", out)) == 2
    assert cli.run("lcmsm-synthetic", argv) == 1  # exists
    assert "overwrite" in capsys.readouterr().out
    picture = str(tmp_path / "preview.png")
    assert cli.run("lcmsm-synthetic", ["--preview", picture, *size]) == 0
    with Image.open(picture) as im:
        assert im.size == (4 * 64, 2 * 32)
    assert sorted(os.listdir(tmp_path)) == ["gta", "preview.png"]  # no temporary files


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--export"], "--export needs --out DIR"),
        (["--export", "--preview", "x.png"], "one of --export or --preview"),
        ([], "one of --export or --preview"),
        (["--preview", "x.png", "--height", "8"], "height"),
        (["--export", "--out", "x", "--layout", "synthia"], "layout"),
    ],
)
def test_command_line_usage_errors(argv, message, capsys):
    assert cli.run("lcmsm-synthetic", argv) == 2
    assert message in capsys.readouterr().out


def test_command_line_help_and_module_entry(tmp_path, capsys):
    assert cli.run("lcmsm-synthetic", ["--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "lcmsm-synthetic --preview previews.png" in text
    picture = tmp_path / "p.png"
    args = ["--preview", str(picture), "--num-images", "1", "--height", "16", "--width", "32"]
    done = subprocess.run([sys.executable, "-m", "lcmsm_jax.data.synthetic", *args],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and f"wrote {picture}" in done.stdout, done
    assert picture.is_file()


def test_synthetic_sources_feed_the_training_and_eval_pipelines():
    src = S.SyntheticSource("source", 8, size=SMALL)
    counts = rcs.compute_class_counts(src)
    assert counts.shape == (8, 19) and (counts.sum(axis=1) > 0).all()
    expected = np.bincount(src[3]["label"].ravel(), minlength=256)[:19]
    np.testing.assert_array_equal(counts[3], expected)
    view = dict(scale=(128, 64), crop_size=(32, 32), num_threads=1)
    train = pipeline.train_dataset(
        src, batch_size=2, seed=0, stream="source", class_counts=counts, rcs_min_pixels=1, **view
    )
    batch = next(iter(train))
    assert batch["image"].shape == (2, 32, 32, 3) and batch["label"].shape == (2, 32, 32)
    assert set(np.unique(batch["label"])) <= set(range(19)) | {255}
    target = S.SyntheticSource("target", 3, size=SMALL, labels=False)
    unlabelled = pipeline.train_dataset(
        target, batch_size=2, seed=0, stream="target", cat_max_ratio=1.0, sampling="uniform", **view
    )
    assert set(next(iter(unlabelled))) == {"image", "index"}
    val = S.SyntheticSource("target", 3, size=SMALL, seed=1)
    batches = list(pipeline.eval_dataset(val, batch_size=2, scale=(128, 64), num_threads=1))
    assert [b["valid"].tolist() for b in batches] == [[True, True], [True, False]]
    np.testing.assert_array_equal(batches[0]["label"][1], val[1]["label"])
