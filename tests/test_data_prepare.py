"""`lcmsm-prepare`: exact statistics, atomic outputs, and clear reports on broken datasets."""

import json
import os
import sys

import numpy as np
import pytest
from test_data_fixtures import (
    save_palette,
    write_acdc,
    write_cityscapes,
    write_darkzurich,
    write_gta5,
    write_synthia,
)

from lcmsm_jax import cli
from lcmsm_jax.data import labels as L
from lcmsm_jax.data import manifest, prepare, rcs, sources


def run(root, *extra, dataset="gta5"):
    return prepare.main(["--dataset", dataset, "--root", str(root), "--workers", "1", *extra])


def outputs(root):
    return sorted(f for f in os.listdir(root) if f.startswith(("lcmsm_", ".tmp-")))


def expected_counts(written, table):
    lut = L.lookup_table(table)
    return {f: np.bincount(lut[ids].ravel(), minlength=256)[:19] for f, ids in written.items()}


@pytest.mark.parametrize(
    "dataset, writer, table",
    [
        ("gta5", write_gta5, L.GTA5_ID_TO_TRAIN_ID),
        ("synthia", write_synthia, L.SYNTHIA_ID_TO_TRAIN_ID),
    ],
)
def test_statistics_are_exact_and_files_complete(tmp_path, capsys, dataset, writer, table):
    written = writer(str(tmp_path), n=5)
    assert run(tmp_path, dataset=dataset) == 0
    assert outputs(tmp_path) == sorted([manifest.MANIFEST_NAME, manifest.STATS_NAME])
    stats = manifest.load_stats(str(tmp_path))["splits"]["all"]
    want = expected_counts(written, table)
    assert sorted(stats["labels"]) == sorted(want)
    for f, counts in zip(stats["labels"], stats["class_pixels"], strict=True):
        assert counts == want[f].tolist()
    source = sources.open_source(dataset, str(tmp_path))
    aligned = rcs.load_class_counts(str(tmp_path), "all", source)
    np.testing.assert_array_equal(aligned, rcs.compute_class_counts(source))
    out = capsys.readouterr()
    assert "5 images" in out.out and "RCS P(c)" in out.out
    assert "5/5 checked (100%)" in out.err  # progress


def test_every_split_of_the_target_datasets(tmp_path):
    write_cityscapes(str(tmp_path / "cs"), "train")
    write_cityscapes(str(tmp_path / "cs"), "val", seed=1)
    assert run(tmp_path / "cs", "--quiet", dataset="cityscapes") == 0
    found = manifest.load_manifest(str(tmp_path / "cs"))
    assert {s: e["num_images"] for s, e in found["splits"].items()} == {"train": 4, "val": 4}
    write_acdc(str(tmp_path / "acdc"), split="train")
    write_acdc(str(tmp_path / "acdc"), split="val", seed=1)
    assert run(tmp_path / "acdc", "--quiet", dataset="acdc") == 0
    write_darkzurich(str(tmp_path / "dz"))
    assert run(tmp_path / "dz", "--quiet", dataset="darkzurich") == 0
    dz = manifest.load_manifest(str(tmp_path / "dz"))["splits"]
    assert dz["train"]["num_images"] == 2 and "labels" not in dz["train"]
    assert sources.open_source("darkzurich", str(tmp_path / "dz"), "train", labels=False)


def _fails(tmp_path, capsys, *expected, extra=()):
    before = {f: open(tmp_path / f, "rb").read() for f in outputs(tmp_path)}
    assert run(tmp_path, *extra, "--quiet") == 1
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Nothing was written" in err
    after = {f: open(tmp_path / f, "rb").read() for f in outputs(tmp_path)}
    assert after == before  # neither new nor half-written nor touched files
    return err


def test_missing_label(tmp_path, capsys):
    write_gta5(str(tmp_path))
    os.remove(tmp_path / "labels" / "00002.png")
    err = _fails(tmp_path, capsys, "missing label (1)", "images/00002.png", "--skip-bad")
    assert "restore the label file" in err


def test_size_mismatch(tmp_path, capsys):
    write_gta5(str(tmp_path))
    from PIL import Image

    Image.new("P", (41, 24)).save(tmp_path / "labels" / "00003.png")
    _fails(tmp_path, capsys, "size mismatch", "labels/00003.png: label is 41x24 but "
           "images/00003.png is 40x24")  # fmt: skip


def test_corrupt_pngs(tmp_path, capsys):
    write_gta5(str(tmp_path))
    image = tmp_path / "images" / "00001.png"
    image.write_bytes(image.read_bytes()[:-40])  # truncated
    (tmp_path / "labels" / "00004.png").write_bytes(b"not a png at all")
    _fails(tmp_path, capsys, "unreadable image (1)", "images/00001.png",
           "unreadable label (1)", "labels/00004.png", "extract it again")  # fmt: skip


def test_unknown_ids(tmp_path, capsys):
    written = write_gta5(str(tmp_path))
    ids = written["labels/00002.png"].copy()
    ids[0, :3] = 40
    save_palette(str(tmp_path / "labels" / "00002.png"), ids)
    _fails(tmp_path, capsys, "unknown ids (1)", "labels/00002.png: ids 40 (3 pixels)",
           "known: 0..33", "--allow-unknown-ids")  # fmt: skip
    assert run(tmp_path, "--quiet", "--allow-unknown-ids") == 0


def test_synthia_ids_above_255_are_caught(tmp_path, capsys):
    write_synthia(str(tmp_path), n=2)
    from test_data_fixtures import encode_png

    gt = np.zeros((24, 40, 3), np.uint16)
    gt[..., 0] = 3
    gt[5, 5, 0] = 256 + 3  # would read as road if only the low byte were looked at
    (tmp_path / "GT" / "LABELS" / "0000001.png").write_bytes(encode_png(gt))
    assert prepare.main(["--dataset", "synthia", "--root", str(tmp_path), "--workers", "1"]) == 1
    assert "GT/LABELS/0000001.png: ids 259 (1 pixels)" in capsys.readouterr().err


def test_colour_labels_and_grey_images(tmp_path, capsys):
    write_gta5(str(tmp_path))
    from PIL import Image

    Image.new("RGB", (40, 24)).save(tmp_path / "labels" / "00001.png")
    Image.new("L", (40, 24)).save(tmp_path / "images" / "00002.png")
    _fails(tmp_path, capsys, "wrong label format (1)", "labels/00001.png", "colour",
           "wrong image format (1)", "images/00002.png")  # fmt: skip


def test_empty_folder_and_wrong_root(tmp_path, capsys):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "labels")
    _fails(tmp_path, capsys, f"{tmp_path / 'images'} holds no *.png files")
    write_gta5(str(tmp_path / "GTA5"), n=2)
    _fails(tmp_path / "GTA5" / "labels", capsys, "is not a GTA5 root",
           f"did you mean --root {tmp_path / 'GTA5'}")  # fmt: skip


def test_skip_bad_writes_a_manifest_without_the_bad_pairs(tmp_path, capsys):
    write_gta5(str(tmp_path), n=4)
    os.remove(tmp_path / "labels" / "00002.png")
    (tmp_path / "images" / "00003.png").write_bytes(b"\x89PNG broken")
    assert run(tmp_path, "--quiet", "--skip-bad") == 0
    assert "leaving 2 file(s) out" in capsys.readouterr().err
    source = sources.open_source("gta5", str(tmp_path))
    assert source.images == ["images/00001.png", "images/00004.png"]
    assert rcs.load_class_counts(str(tmp_path), "all", source).shape == (2, 19)
    skipped = manifest.load_manifest(str(tmp_path))["skipped"]["all"]
    assert skipped == ["images/00002.png", "images/00003.png"]


def test_interrupted_write_leaves_no_partial_file_and_is_detected(tmp_path, monkeypatch):
    write_gta5(str(tmp_path), n=2)
    assert run(tmp_path, "--quiet") == 0
    write_gta5(str(tmp_path), n=2, seed=1)  # dataset changes; the run below dies mid-write
    real = manifest.atomic_write_bytes

    def dies_on_manifest(path, data):
        if path.endswith(manifest.MANIFEST_NAME):
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(manifest, "atomic_write_bytes", dies_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "--quiet")
    assert outputs(tmp_path) == sorted([manifest.MANIFEST_NAME, manifest.STATS_NAME])
    with pytest.raises(manifest.ManifestError, match="does not match"):
        manifest.load_stats(str(tmp_path))


def test_temporary_file_removed_when_writing_fails(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        manifest.atomic_write_bytes(str(tmp_path / "x.json"), b"{}")
    assert os.listdir(tmp_path) == []


def test_console_entry_point(tmp_path, monkeypatch, capsys):
    write_gta5(str(tmp_path), n=2)
    argv = ["lcmsm-prepare", "--dataset", "gta5", "--root", str(tmp_path), "--workers", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.prepare()
    assert exit_info.value.code == 0
    assert json.loads((tmp_path / manifest.MANIFEST_NAME).read_text())["dataset"] == "gta5"


def test_worker_processes(tmp_path):
    written = write_gta5(str(tmp_path), n=6)
    assert prepare.main(["--dataset", "gta5", "--root", str(tmp_path), "--workers", "2",
                         "--quiet"]) == 0  # fmt: skip
    stats = manifest.load_stats(str(tmp_path))["splits"]["all"]
    want = expected_counts(written, L.GTA5_ID_TO_TRAIN_ID)
    assert [want[f].tolist() for f in stats["labels"]] == stats["class_pixels"]
