"""`lcmsm-prepare`: exact statistics, atomic outputs, and clear reports on broken datasets."""

import importlib.util
import json
import os
import sys
from pathlib import Path

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

from lcmsm_jax import atomic, cli
from lcmsm_jax.data import labels as L
from lcmsm_jax.data import manifest, prepare, rcs, sources

TOOLS = Path(__file__).parents[1] / "tools"


def run(root, *extra, dataset="gta5"):
    """Exit status of the command, as the console entry point reports it."""
    argv = ["--dataset", dataset, "--root", str(root), "--workers", "1", *extra]
    return cli.run("lcmsm-prepare", argv)


def outputs(root):
    """The written files and any temporary file left beside them (".lcmsm_*.tmp")."""
    return sorted(f for f in os.listdir(root) if f.startswith(("lcmsm_", ".lcmsm_")))


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
    assert "5/5 pairs (100%)" in out.out  # progress


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
    out = capsys.readouterr()
    err = out.err + out.out  # the listing on stderr, the one-line failure on stdout
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
    assert run(tmp_path, dataset="synthia") == 1
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
    real = atomic.write_bytes

    def dies_on_manifest(path, data):
        if path.endswith(manifest.MANIFEST_NAME):
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", dies_on_manifest)
    assert run(tmp_path, "--quiet") == 130  # "interrupted"
    assert outputs(tmp_path) == sorted([manifest.MANIFEST_NAME, manifest.STATS_NAME])
    with pytest.raises(manifest.ManifestError, match="does not match"):
        manifest.load_stats(str(tmp_path))


def test_temporary_file_removed_when_writing_fails(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        manifest.write_prepared(str(tmp_path), {}, {})
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


def test_command_line_mistakes_and_help(tmp_path, capsys):
    write_gta5(str(tmp_path), n=1)
    assert run(tmp_path, "--splits", "train") == 2
    assert "GTA5 has no split 'train' (all)" in capsys.readouterr().out
    assert cli.run("lcmsm-prepare", ["--root", str(tmp_path)]) == 2
    assert "--dataset is required" in capsys.readouterr().out
    assert run(tmp_path, "--labels", "colour") == 2
    assert "--labels" in capsys.readouterr().out
    assert outputs(tmp_path) == []
    assert cli.run("lcmsm-prepare", ["--help"]) == 0
    text = capsys.readouterr().out
    for part in ("usage: lcmsm-prepare --dataset ... --root ...", "example", "--skip-bad"):
        assert part in text


def test_rcs_stats_tool(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("rcs_stats", TOOLS / "rcs_stats.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    write_gta5(str(tmp_path), n=3)
    assert run(tmp_path, "--quiet") == 0
    capsys.readouterr()
    assert tool.main(["--root", str(tmp_path), "--min-pixels", "10"]) == 0
    out = capsys.readouterr().out
    assert "gta5/all: 3 images, T=0.01" in out and "imgs>10px" in out
    assert tool.main(["--root", str(tmp_path), "--temperature", "0"]) == 2
    assert "--temperature 0.0: must be above 0" in capsys.readouterr().out
    with pytest.raises(manifest.ManifestError, match="no statistics for split 'train'"):
        tool.main(["--root", str(tmp_path), "--split", "train"])
