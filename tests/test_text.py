"""Text embeddings: the OpenCLIP command end to end, the file validation, random specs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from lcmsm_jax import cli, clip_text, text
from lcmsm_jax.data import labels

# A small OpenCLIP architecture (text width 384, 12 layers): a full model builds in ~1 s on CPU.
SMALL_MODEL = "ViT-S-32"
SMALL_DIM = 384
CITYSCAPES = labels.CITYSCAPES_CLASSES
PAPER_NAMES = tuple(clip_text.PAPER_RENAMES.get(c, c) for c in CITYSCAPES)
NO_CLIP = "needs the clip extra (open_clip_torch + torch): pip install -e '.[clip]'"


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def open_clip():
    return pytest.importorskip("open_clip", reason=NO_CLIP)


@pytest.fixture(scope="module")
def reference(open_clip):
    """The small model as the command builds it with --pretrained none --seed 0."""
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(SMALL_MODEL, pretrained=None, precision="fp32").eval()
    return model, open_clip.get_tokenizer(SMALL_MODEL)


def encode_reference(reference, prompts: list[str]) -> np.ndarray:
    """open_clip's own encode_text, all prompts in one batch: [N, D] float32."""
    import torch

    model, tokenizer = reference
    with torch.inference_mode():
        return model.encode_text(tokenizer(prompts), normalize=False).numpy()


def run_cli(tmp_path: Path, *flags: str, name: str = "emb.npz") -> Path:
    """Runs the command on the small model (batch 64 > any prompt count used here)."""
    out = tmp_path / name
    argv = ["--model", SMALL_MODEL, "--pretrained", "none", "--batch-size", "64"]
    assert clip_text.main([*argv, *flags, "--out", str(out)]) == 0
    return out


def run_command(capsys, *argv) -> tuple[int, str]:
    """(exit status, everything printed) of `lcmsm-embed-text argv`, run as the console
    entry point runs it."""
    status = cli.run("lcmsm-embed-text", [str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out + err


def write_file(path: Path, embeddings: np.ndarray, class_names=CITYSCAPES) -> Path:
    text.save(
        path,
        embeddings,
        class_names,
        prompt_names=class_names,
        prompts=[clip_text.PAPER_PROMPT],
        model="test",
        pretrained="none",
        seed=0,
        open_clip_version="0",
        normalized=False,
    )
    return path


def rewrite(path: Path, **changes) -> None:
    """Rewrites an .npz with some arrays replaced (None removes the key)."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)


@pytest.fixture
def good_file(tmp_path) -> Path:
    """A valid 19 x 384 file for the Cityscapes classes."""
    embeddings = np.random.default_rng(0).standard_normal((19, SMALL_DIM)).astype(np.float32)
    return write_file(tmp_path / "good.npz", embeddings)


# ----------------------------------------------------------------------------- OpenCLIP path


@pytest.mark.clip
def test_cli_matches_open_clip_encode_text(tmp_path, open_clip, reference, capsys):
    out = run_cli(tmp_path, "--classes", "cityscapes", "--seed", "0")
    emb = text.load(out, class_names=CITYSCAPES, expected_dim=SMALL_DIM)

    prompts = [f"a photo of a {name}." for name in PAPER_NAMES]
    assert prompts[11] == "a photo of a pedestrian."  # the paper's rename is on by default
    np.testing.assert_allclose(emb, encode_reference(reference, prompts), rtol=0, atol=1e-6)
    assert emb.shape == (19, SMALL_DIM) and emb.dtype == np.float32

    info = text.read(out)
    assert info.class_names == CITYSCAPES
    assert info.prompt_names == PAPER_NAMES
    assert info.prompts == ("a photo of a {}.",)
    assert (info.model, info.pretrained, info.seed) == (SMALL_MODEL, "none", 0)
    assert info.open_clip_version == open_clip.__version__
    assert info.normalized is False
    assert info.sha256 == text.content_hash(emb, CITYSCAPES, False)
    assert "encoded batch 1/1 (19 prompts)" in capsys.readouterr().out  # progress shown


@pytest.mark.clip
def test_cli_offline_checkpoint_file(tmp_path, reference):
    import torch

    checkpoint = tmp_path / "weights.pt"
    torch.save(reference[0].state_dict(), checkpoint)
    # A different seed proves the weights come from the file, not from random init.
    out = run_cli(
        tmp_path, "--classes", "synthia16", "--seed", "7", "--pretrained", str(checkpoint)
    )

    emb = text.load(out, class_names=labels.SYNTHIA16_CLASSES, expected_dim=SMALL_DIM)
    names = [clip_text.PAPER_RENAMES.get(c, c) for c in labels.SYNTHIA16_CLASSES]
    expected = encode_reference(reference, [f"a photo of a {n}." for n in names])
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-6)
    assert text.read(out).pretrained == str(checkpoint)


@pytest.mark.clip
def test_cli_prompt_ensemble(tmp_path, reference):
    templates = ["a photo of a {}.", "a blurry street scene with a {}."]
    flags = [arg for t in templates for arg in ("--prompt", t)]
    out = run_cli(tmp_path, "--classes", "cityscapes", *flags)
    emb = text.load(out, class_names=CITYSCAPES, expected_dim=SMALL_DIM)

    raw = encode_reference(reference, [t.format(n) for t in templates for n in PAPER_NAMES])
    unit = raw.reshape(2, 19, SMALL_DIM).astype(np.float64)
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    expected = unit.mean(axis=0)
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    info = text.read(out)
    assert info.normalized is True and info.prompts == tuple(templates)


@pytest.mark.clip
def test_cli_renames(tmp_path, reference):
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# my classes\nperson\nrider\n\ntraffic light\n")
    renames_file = tmp_path / "renames.txt"
    renames_file.write_text("person -> human being\n")
    flags = ["--classes", str(classes_file), "--prompt", "{}"]

    replaced = run_cli(tmp_path, *flags, "--renames", str(renames_file), name="replaced.npz")
    plain = run_cli(tmp_path, *flags, "--no-renames", name="plain.npz")
    default = run_cli(tmp_path, *flags, name="default.npz")

    classes = ("person", "rider", "traffic light")
    expectations = {
        replaced: ("human being", "rider", "traffic light"),  # the file replaces the defaults
        plain: classes,
        default: ("pedestrian", "driver", "traffic light"),
    }
    for path, names in expectations.items():
        emb = text.load(path, class_names=classes, expected_dim=SMALL_DIM)
        assert text.read(path).prompt_names == names
        np.testing.assert_allclose(emb, encode_reference(reference, list(names)), atol=1e-6)


@pytest.mark.clip
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "ViT-Nope-1"], "not an OpenCLIP architecture"),
        (["--pretrained", "no_such_tag"], "not an OpenCLIP tag for ViT-S-32"),
    ],
)
def test_cli_rejects_unknown_model_or_weights(tmp_path, open_clip, capsys, flags, message):
    argv = ["--classes", "cityscapes", "--model", SMALL_MODEL, *flags]
    status, text_out = run_command(capsys, *argv, "--out", tmp_path / "x.npz")
    assert status == 2 and message in text_out
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.clip
def test_cli_reports_a_checkpoint_that_does_not_fit(tmp_path, open_clip, capsys):
    import torch

    checkpoint = tmp_path / "other.pt"
    torch.save({"not_a_clip_weight": torch.zeros(1)}, checkpoint)
    argv = ["--classes", "cityscapes", "--model", SMALL_MODEL, "--pretrained", str(checkpoint)]
    status, text_out = run_command(capsys, *argv, "--out", tmp_path / "x.npz")
    assert status == 1 and f"could not build OpenCLIP {SMALL_MODEL}" in text_out
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------- command input


@pytest.mark.parametrize(
    ("files", "flags", "message"),
    [
        ({}, ["--classes", "mapillary"], "neither a built-in list"),
        ({"c.txt": "road\nroad\n"}, ["--classes", "c.txt"], "duplicate class names ['road']"),
        ({}, ["--classes", "cityscapes", "--prompt", "a photo"], "exactly one '{}'"),
        (
            {"r.txt": "persn -> pedestrian\n"},
            ["--classes", "cityscapes", "--renames", "r.txt"],
            "not in the class list: ['persn']",
        ),
        ({"r.txt": "person pedestrian\n"}, ["--classes", "cityscapes", "--renames", "r.txt"], "->"),
        ({}, ["--classes", "cityscapes", "--batch-size", "0"], "must be at least 1"),
        ({}, ["--classes", "cityscapes", "--no-renames", "--renames", "r.txt"], "exclude each"),
        ({}, ["--classes", "cityscapes", "--batch-size", "many"], "--batch_size"),
        ({}, ["--classes", "cityscapes", "--colour"], "Unknown command line flag 'colour'"),
    ],
)
def test_cli_input_errors(tmp_path, monkeypatch, capsys, files, flags, message):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        Path(name).write_text(content)
    status, text_out = run_command(capsys, *flags, "--out", "x.npz")
    assert status == 2 and message in text_out, text_out
    assert not Path("x.npz").exists()


def test_cli_without_open_clip_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    status, text_out = run_command(capsys, "--classes", "cityscapes", "--out", tmp_path / "x.npz")
    assert status == 1 and 'pip install -e ".[clip]"' in text_out
    assert "Traceback" not in text_out


def test_cli_help_and_required_flags(capsys):
    status, text_out = run_command(capsys, "--help")
    assert status == 0
    for part in ("usage: lcmsm-embed-text --classes ... --out ...", "examples:", "--no-renames",
                 "--prompt", "--batch-size", "(default: ViT-H-14)"):  # fmt: skip
        assert part in text_out, text_out
    status, text_out = run_command(capsys, "--classes", "cityscapes")
    assert status == 2 and "--out is required" in text_out


def test_combine_single_template_keeps_raw_vectors():
    raw = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    emb, normalized = clip_text.combine(raw, normalize=False)
    np.testing.assert_array_equal(emb, raw[0])
    assert normalized is False
    emb, normalized = clip_text.combine(raw + 1, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert normalized is True


# ----------------------------------------------------------------------------- file format


def test_save_is_atomic(tmp_path, good_file, monkeypatch):
    before = good_file.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        write_file(good_file, np.zeros((19, 8), np.float32))
    assert good_file.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["good.npz"]  # no temp file left


def test_load_returns_the_stored_vectors(tmp_path):
    embeddings = np.random.default_rng(1).standard_normal((19, 32)).astype(np.float32)
    path = write_file(tmp_path / "e.npz", embeddings)
    np.testing.assert_array_equal(text.load(path, class_names=CITYSCAPES), embeddings)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # a normal file, not a private temp


def test_load_rejects_wrong_class_count(tmp_path):
    emb = np.ones((16, 8), np.float32)
    path = write_file(tmp_path / "s16.npz", emb, labels.SYNTHIA16_CLASSES)
    with pytest.raises(text.TextEmbeddingError) as error:
        text.load(path, class_names=CITYSCAPES)
    assert str(path) in str(error.value)
    assert "has 16 classes but the dataset has 19" in str(error.value)


def test_load_rejects_wrong_class_order(tmp_path):
    swapped = list(CITYSCAPES)
    swapped[11], swapped[12] = swapped[12], swapped[11]
    path = write_file(tmp_path / "swapped.npz", np.ones((19, 8), np.float32), swapped)
    with pytest.raises(ValueError) as error:  # TextEmbeddingError is a ValueError
        text.load(path, class_names=CITYSCAPES)
    message = str(error.value)
    assert str(path) in message
    assert "class 11 is 'rider' but the dataset expects 'person'" in message


def test_load_rejects_wrong_dimension(good_file):
    with pytest.raises(text.TextEmbeddingError) as error:
        text.load(good_file, class_names=CITYSCAPES, expected_dim=1024)
    assert str(good_file) in str(error.value)
    assert "dimension 384 but the model expects 1024" in str(error.value)


@pytest.mark.parametrize("key", ["embeddings", "class_names", "sha256", "normalized"])
def test_load_rejects_missing_keys(good_file, key):
    rewrite(good_file, **{key: None})
    with pytest.raises(text.TextEmbeddingError, match=rf"missing keys \['{key}'\]") as error:
        text.load(good_file, class_names=CITYSCAPES)
    assert str(good_file) in str(error.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_load_rejects_non_finite_values(tmp_path, bad):
    embeddings = np.ones((19, 8), np.float32)
    embeddings[2, 5] = bad
    path = write_file(tmp_path / "nan.npz", embeddings)
    with pytest.raises(text.TextEmbeddingError) as error:
        text.load(path, class_names=CITYSCAPES)
    assert str(path) in str(error.value)
    assert "1 non-finite values" in str(error.value)
    assert "row 2 (class 'building')" in str(error.value)


def test_load_rejects_corrupted_content(good_file):
    with np.load(good_file) as data:
        embeddings = data["embeddings"].copy()
    embeddings[0, 0] += 1e-3
    rewrite(good_file, embeddings=embeddings)
    with pytest.raises(text.TextEmbeddingError, match="content hash mismatch") as error:
        text.load(good_file, class_names=CITYSCAPES)
    assert str(good_file) in str(error.value)


def test_load_rejects_renamed_classes_with_stale_hash(good_file):
    # Editing the class list by hand must not pass: the hash covers the names too.
    names = np.asarray(["street", *CITYSCAPES[1:]])
    rewrite(good_file, class_names=names)
    with pytest.raises(text.TextEmbeddingError, match="content hash mismatch"):
        text.read(good_file)


def test_load_rejects_wrong_dtype(good_file):
    with np.load(good_file) as data:
        embeddings = data["embeddings"].astype(np.float64)
    rewrite(good_file, embeddings=embeddings)
    with pytest.raises(text.TextEmbeddingError, match="float32 array, found float64"):
        text.load(good_file, class_names=CITYSCAPES)


def test_load_rejects_non_npz_and_missing_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(text.TextEmbeddingError, match="junk.npz is not an .npz archive"):
        text.load(junk, class_names=CITYSCAPES)
    with pytest.raises(FileNotFoundError, match="lcmsm-embed-text"):
        text.load(tmp_path / "absent.npz", class_names=CITYSCAPES)


# ----------------------------------------------------------------------------- config specs


def test_resolve_random_is_deterministic():
    first, description = text.resolve("random:3", CITYSCAPES, 64)
    again, _ = text.resolve("random:3", CITYSCAPES, 64)
    other, _ = text.resolve("random:4", CITYSCAPES, 64)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.shape == (19, 64) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    assert "random" in description and "seed 3" in description


@pytest.mark.parametrize(
    ("spec", "dim", "message"),
    [
        ("random:abc", 64, "must be an integer"),
        ("random:-1", 64, "must be >= 0"),
        ("random:0", None, "need the model's text dimension"),
    ],
)
def test_resolve_random_rejects_bad_specs(spec, dim, message):
    with pytest.raises(text.TextEmbeddingError, match=message):
        text.resolve(spec, CITYSCAPES, dim)


def test_resolve_file_describes_its_source(good_file):
    embeddings, description = text.resolve(str(good_file), CITYSCAPES, SMALL_DIM)
    assert embeddings.shape == (19, SMALL_DIM)
    assert str(good_file) in description
    assert text.read(good_file).sha256[:12] in description
    with pytest.raises(text.TextEmbeddingError, match="expects 512"):
        text.resolve(str(good_file), CITYSCAPES, 512)
