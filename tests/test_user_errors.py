"""Every command answers a user mistake with one message naming the flag, config key or file,
and an exit status (2: usage, 1: data or runtime failure); no traceback unless --debug.

Commands run as the console scripts do (`cli.run`); the errors are all raised before any
XLA compilation, so the file stays fast.
"""

import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_convert import TINY_OVERRIDES
from test_data_fixtures import write_gta5

from lcmsm_jax import atomic, checkpoint, cli, config_checks, config_cli, convert, export
from lcmsm_jax import text as text_embeddings
from lcmsm_jax.data import labels, pipeline, pngio, sources

CONFIGS = Path(__file__).parents[1] / "configs"
DEMO = str(CONFIGS / "demo.py")
BASE = str(CONFIGS / "base.py")
TINY_MODEL = TINY_OVERRIDES  # the tiny model the converter tests use

sys.path.insert(0, str(CONFIGS))
import demo  # noqa: E402


def run(capsys, prog: str, *argv: str) -> tuple[int, str]:
    """(exit status, everything printed) of `prog argv`; never a traceback."""
    status = cli.run(prog, [str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out + err


def check(text: str, *expected: str) -> None:
    for part in expected:
        assert part in text, f"{part!r} not in:\n{text}"


# ----------------------------------------------------------------------------- lcmsm-train

# (extra argv on the demo config, what the message must say); all exit 2 before any work.
TRAIN_USAGE = {
    "batch_size_zero": (
        ["--config.data.batch_size=0"],
        ["config.data.batch_size = 0", "positive integer", "--config.data.batch_size="],
    ),
    "negative_steps": (["--config.train.steps=-5"], ["config.train.steps = -5", "positive"]),
    "steps_not_int": (["--config.train.steps=abc"], ["--config.train.steps=abc", "int"]),
    "unknown_backbone": (
        ["--config.model.backbone=mit_b7"],
        ["config.model.backbone = 'mit_b7'", "one of mit_b0"],
    ),
    "unknown_eval_mode": (["--config.eval.mode=sliding"], ["config.eval.mode", "slide, whole"]),
    "unknown_sampling": (
        ["--config.data.target.sampling=random"],
        ["config.data.target.sampling = 'random'", "uniform, epoch"],
    ),
    "unknown_pseudo_label_head": (
        ["--config.uda.pseudo_label_head=teacher"],
        ["config.uda.pseudo_label_head", "decode, lcmsm"],
    ),
    "unknown_method": (
        ["--config.train.compare_with=('sourceonly',)"],
        ["config.train.compare_with", "source_only"],
    ),
    "crop_larger_than_scale": (
        ["--config.data.crop_size=(512,512)"],
        ["config.data.crop_size = (512, 512)", "config.data.source.scale = (128, 64)", "(64, 128)"],
    ),
    "crop_not_a_pair": (["--config.data.crop_size=(64,)"], ["config.data.crop_size", "two"]),
    "alpha_out_of_range": (["--config.uda.alpha=1.5"], ["config.uda.alpha = 1.5", "0 and 1"]),
    "jitter_given_in_percent": (
        ["--config.uda.color_jitter_apply_probability=80"],
        ["config.uda.color_jitter_apply_probability = 80", "0 and 1"],
    ),
    "num_classes": (["--config.model.num_classes=20"], ["config.model.num_classes = 20", "19"]),
    "negative_lr": (["--config.optim.lr=-1"], ["config.optim.lr = -1", "finite number > 0"]),
    "nan_lr": (["--config.optim.lr=nan"], ["config.optim.lr = nan", "finite number > 0"]),
    "negative_seed": (["--config.seed=-1"], ["config.seed = -1", "an integer >= 0"]),
    "batch_beyond_memory": (
        ["--config.data.batch_size=10000000"],
        ["config.data.batch_size = 10000000", "GB as input arrays", "--config.data.batch_size=2"],
    ),
    "unknown_backward": (
        ["--config.train.backward=both"],
        ["config.train.backward = 'both'", "per_pass, joint"],
    ),
    "missing_text_embeddings": (
        ["--config.text.embeddings={tmp}/none.npz"],
        ["config.text.embeddings", "none.npz", "lcmsm-embed-text", "random:0"],
    ),
    "missing_pretrained": (
        ["--config.train.pretrained={tmp}/mit_b0.pth"],
        ["config.train.pretrained", "mit_b0.pth", "no such file"],
    ),
    "empty_dataset_root": (
        ["--config.data.source.dataset=gta5"],
        ["config.data.source.root is empty", "--config.data.source.root="],
    ),
    "missing_dataset_root": (
        ["--config.data.target.dataset=cityscapes", "--config.data.target.root={tmp}/nowhere"],
        ["config.data.target.root", "nowhere", "no such folder"],
    ),
    "split_without_labels": (
        [
            "--config.data.source.dataset=gta5",
            "--config.data.source.root={tmp}",
            "--config.data.source.split=train",
        ],
        ["config.data.source.split = 'train'", "a labelled split of GTA5: all"],
    ),
    "unknown_config_field": (["--config.data.nope=1"], ["--config.data.nope=1", "'nope'"]),
    "unknown_flag": (["--bogus"], ["Unknown command line flag 'bogus'", "--help"]),
}


@pytest.mark.parametrize("case", TRAIN_USAGE, ids=list(TRAIN_USAGE))
def test_train_usage_errors_name_the_key(case, tmp_path, capsys):
    extra, expected = TRAIN_USAGE[case]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    workdir = tmp_path / "run"
    status, text = run(capsys, "lcmsm-train", "--config", DEMO, "--workdir", workdir, *extra)
    assert status == 2
    check(text, "lcmsm-train: ", *[e.replace("{tmp}", str(tmp_path)) for e in expected])
    assert len(text.strip().splitlines()) == 1
    assert not workdir.exists()  # nothing started


CONFIG_FILES = {
    "syntax_error": ("def get_config(:\n", ["syntax error at line 1"]),
    "get_config_raises": (
        "def get_config():\n    raise ValueError('no such preset')\n",
        ["get_config() failed: ValueError: no such preset"],
    ),
    "no_get_config": ("x = 1\n", ["defines no get_config() function"]),
    "returns_no_configdict": ("def get_config():\n    return 3\n", ["returned int"]),
    "import_error": ("import no_such_module\n", ["ModuleNotFoundError", "no_such_module"]),
}


@pytest.mark.parametrize("case", CONFIG_FILES, ids=list(CONFIG_FILES))
def test_broken_config_file_is_named(case, tmp_path, capsys):
    source, expected = CONFIG_FILES[case]
    config = tmp_path / "experiment.py"
    config.write_text(source)
    status, text = run(capsys, "lcmsm-train", "--config", config, "--workdir", tmp_path / "run")
    assert status == 2
    check(text, f"lcmsm-train: --config {config}: ", *expected)


def test_train_command_line_mistakes(tmp_path, capsys):
    status, text = run(capsys, "lcmsm-train", "--config", tmp_path / "none.py", "--workdir", "w")
    assert status == 2
    check(text, f"--config {tmp_path / 'none.py'}: no such file", "configs/demo.py")
    status, text = run(capsys, "lcmsm-train", "--config", DEMO)
    assert status == 2
    check(text, "--workdir is required")
    (tmp_path / "file").write_text("")
    status, text = run(capsys, "lcmsm-train", "--config", DEMO, "--workdir", tmp_path / "file")
    assert status == 2
    check(text, f"--workdir {tmp_path / 'file'} is a file")


RUN_CONFIGS = {
    "list": (b"[1, 2]", "a JSON list"),
    "string": (b'"configs/demo.py"', "a JSON string"),
    "invalid": (b'{"model": ', "not valid JSON (Expecting value"),
    "binary": (b"\x89PNG\r\n\x1a\n", "not valid JSON ("),
}


@pytest.mark.parametrize("case", RUN_CONFIGS, ids=list(RUN_CONFIGS))
def test_run_config_that_is_no_object_is_named(case, tmp_path, capsys):
    content, found = RUN_CONFIGS[case]
    workdir = tmp_path / "run"
    workdir.mkdir()
    stored = workdir / "config.json"
    stored.write_bytes(content)
    status, text = run(capsys, "lcmsm-train", "--config", DEMO, "--workdir", workdir)
    assert status == 1
    check(
        text,
        f"lcmsm-train: --workdir {workdir}: {stored} is {found}",
        "expected the JSON object of the config that lcmsm-train wrote there",
        "Restore it, or delete it",
    )
    assert len(text.strip().splitlines()) == 1
    assert stored.read_bytes() == content  # left for the user to look at


def test_train_config_warnings():
    config = demo.get_config()
    assert config_checks.check_train_config(config) == []
    config.data.crop_size = (64, 256)  # wider than the 128-wide resized scenes
    config.optim.warmup_steps = 5000
    warnings = config_checks.check_train_config(config)
    assert len(warnings) == 3  # source, target, warmup
    check(warnings[0], "config.data.crop_size = (64, 256)", "config.data.source.scale", "padded")
    check(warnings[2], "config.optim.warmup_steps = 5000", "config.train.steps = 1500")


@pytest.mark.parametrize("disk_error", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
@pytest.mark.parametrize("prog", ["lcmsm-train", "lcmsm-eval"])
def test_full_disk_is_one_line(prog, wrapped, disk_error, tmp_path, capsys, monkeypatch):
    from lcmsm_jax import evaluate, train

    target = tmp_path / "run" / "checkpoints" / "2000"

    def write_fails(*args, **kwargs):
        err = OSError(disk_error, os.strerror(disk_error), str(target))
        if not wrapped:
            raise err
        raise RuntimeError("async checkpoint save failed") from err

    monkeypatch.setattr(train, "train", write_fails)
    monkeypatch.setattr(evaluate, "evaluate_run", write_fails)
    status, text = run(capsys, prog, "--config", DEMO, "--workdir", tmp_path / "run")
    assert status == 1
    what = "no space left on device" if disk_error == errno.ENOSPC else "disk quota exceeded"
    assert text.strip() == (
        f"{prog}: {what} writing {target}; free space on that disk or write somewhere else "
        "(--workdir / --out)"
    )


def test_non_finite_loss_is_reported(tmp_path, capsys, monkeypatch):
    from lcmsm_jax import train

    def diverges(*args, **kwargs):
        raise train.NonFiniteLossError("non-finite loss at step 7: {'loss/source': nan}")

    monkeypatch.setattr(train, "train", diverges)
    status, text = run(capsys, "lcmsm-train", "--config", DEMO, "--workdir", tmp_path)
    assert status == 1
    check(text, "lcmsm-train: non-finite loss at step 7")


# ----------------------------------------------------------------------------- debugging


def test_debug_flag_and_env_show_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["--config", BASE, "--torch-checkpoint", str(tmp_path / "x.npz"),
            "--workdir", str(tmp_path)]  # fmt: skip
    assert cli.run("lcmsm-convert", argv) == 1
    with pytest.raises(FileNotFoundError, match="x.npz does not exist"):
        cli.run("lcmsm-convert", ["--debug", *argv])
    with pytest.raises(config_cli.UsageError, match="config.data.batch_size"):
        cli.run("lcmsm-train", ["--debug", "--config", DEMO, "--workdir", str(tmp_path),
                                "--config.data.batch_size=0"])  # fmt: skip
    monkeypatch.setenv("LCMSM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.run("lcmsm-convert", argv)
    capsys.readouterr()


def test_bugs_keep_their_traceback_and_ctrl_c_is_one_line(capsys):
    def bug(argv):
        raise TypeError("unsupported operand")

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(TypeError):
        config_cli.run_main("lcmsm-x", [], bug)
    assert config_cli.run_main("lcmsm-x", [], interrupted) == 130
    assert capsys.readouterr().out == "lcmsm-x: interrupted\n"


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize(
    "prog", ["lcmsm-train", "lcmsm-eval", "lcmsm-predict", "lcmsm-convert", "lcmsm-benchmark"]
)
def test_help_prints_usage(prog, flag, capsys):
    status, text = run(capsys, prog, flag)
    assert status == 0
    check(text, f"usage: {prog} --config FILE", "--debug", "Exit status")
    assert "Unknown command line flag" not in text


# ----------------------------------------------------------------------------- lcmsm-convert


def _convert(capsys, tmp_path, checkpoint, *extra) -> tuple[int, str]:
    return run(capsys, "lcmsm-convert", "--config", BASE, *TINY_MODEL, *extra,
               "--torch-checkpoint", checkpoint, "--workdir", tmp_path / "run")  # fmt: skip


@pytest.mark.parametrize("name", ["model.pth", "model.npz", "model.safetensors"])
def test_convert_names_a_file_that_is_no_checkpoint(name, tmp_path, capsys):
    path = tmp_path / name
    path.write_text("<html>404 Not Found</html>\n")  # a failed download
    status, text = _convert(capsys, tmp_path, path)
    assert status == 1
    check(text, f"lcmsm-convert: {path} is not a PyTorch/safetensors/npz checkpoint (")
    assert not (tmp_path / "run").exists()


def test_convert_file_mistakes(tmp_path, capsys):
    status, text = _convert(capsys, tmp_path, tmp_path / "missing.pth")
    assert status == 1
    check(text, f"checkpoint {tmp_path / 'missing.pth'} does not exist")
    (tmp_path / "weights.h5").write_bytes(b"x")
    status, text = _convert(capsys, tmp_path, tmp_path / "weights.h5")
    assert status == 1
    check(text, "weights.h5: unknown checkpoint type '.h5'; expected .pth")
    (tmp_path / "run" / "converted").mkdir(parents=True)
    status, text = _convert(capsys, tmp_path, tmp_path / "missing.pth")
    assert status == 1
    check(text, f"{tmp_path / 'run' / 'converted'} already exists", "another --workdir")
    status, text = _convert(capsys, tmp_path, "x.npz", "--config.model.decode_head.fusion=mlp")
    assert status == 2
    check(text, "config.model.decode_head.fusion = 'mlp'", "sep_aspp, aspp, conv")


def test_convert_of_another_network_writes_nothing(tmp_path, capsys):
    rng = np.random.default_rng(0)
    resnet = {
        "conv1.weight": rng.normal(size=(8, 3, 7, 7)).astype(np.float32),
        "bn1.weight": np.ones(8, np.float32),
        "bn1.num_batches_tracked": np.array(3),
        "layer1.0.conv1.weight": np.zeros((8, 8, 3, 3), np.float32),
        "fc.weight": np.zeros((1000, 8), np.float32),
    }
    np.savez(tmp_path / "resnet18.npz", **resnet)
    status, text = _convert(capsys, tmp_path, tmp_path / "resnet18.npz")
    assert status == 1
    check(
        text,
        "resnet18.npz: 0 tensors matched, filling 0 of 280 model variables (0%, less than 50%)",
        "4 source tensors match no model variable (e.g. bn1.weight, conv1.weight",
        "Nothing was written; --allow-partial",
    )
    assert not (tmp_path / "run").exists()


def test_partial_fill_threshold():
    report = convert.ConversionReport(
        loaded=[("a", "a")] * 2, unmatched=["x.weight"], missing=["b"] * 3
    )
    with pytest.raises(convert.PartialConversionError, match=r"filling 2 of 5 .*x\.weight"):
        convert.check_filled(report, "ck.pth")
    convert.check_filled(report, "ck.pth", minimum=0.4)  # 40% is enough then


# ----------------------------------------------------------------------------- lcmsm-eval


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--config.eval.mode=sliding"], ["config.eval.mode = 'sliding'", "slide, whole"]),
        (["--config.data.eval.batch_size=0"], ["config.data.eval.batch_size = 0"]),
        (["--config.data.eval.root={tmp}/nowhere"], ["config.data.eval.root", "no such folder"]),
        (["--config.eval.weights=ema"], ["config.eval.weights = 'ema'", "student, teacher"]),
    ],
    ids=["mode", "batch_size", "root", "weights"],
)
def test_eval_usage_errors_name_the_key(extra, expected, tmp_path, capsys):
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    status, text = run(capsys, "lcmsm-eval", "--config", BASE, "--workdir", tmp_path, *extra)
    assert status == 2
    check(text, "lcmsm-eval: ", *expected)


def test_eval_without_checkpoints_names_the_workdir(tmp_path, capsys):
    status, text = run(capsys, "lcmsm-eval", "--config", DEMO, "--workdir", tmp_path / "run")
    assert status == 1
    check(text, f"{tmp_path / 'run'} has neither training checkpoints")


def test_eval_error_closes_the_checkpoint_manager(tmp_path, capsys, monkeypatch):
    """A manager left open at exit has orbax threads scheduling work during shutdown."""
    (tmp_path / "run" / "checkpoints" / "junk").mkdir(parents=True)
    closed = []
    real = checkpoint.run_manager

    def recording_manager(*args, **kwargs):
        manager = real(*args, **kwargs)
        close = manager.close
        manager.close = lambda: (closed.append(True), close())
        return manager

    monkeypatch.setattr(checkpoint, "run_manager", recording_manager)
    status, text = run(capsys, "lcmsm-eval", "--config", DEMO, "--workdir", tmp_path / "run")
    assert status == 1
    check(text, f"{tmp_path / 'run' / 'checkpoints'} holds no complete checkpoint")
    assert closed == [True]


# ----------------------------------------------------------------------------- lcmsm-predict


def _image(path: Path, size=(24, 40)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_predict_with_no_readable_image_fails_before_loading_weights(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "notes.png").write_text("not an image")
    status, text = run(capsys, "lcmsm-predict", "--config", DEMO, "--workdir", tmp_path / "none",
                       "--images", images, "--out", tmp_path / "out")  # fmt: skip
    assert status == 1
    check(text, f"skipping {images / 'notes.png'}: cannot be read", "none of the 1 --images files")
    assert "has neither training checkpoints" not in text


def test_predict_skips_unreadable_images(tmp_path, capsys, monkeypatch):
    """Two good images, a truncated one and a text file: the good ones are written."""
    from lcmsm_jax import evaluate, restore

    class Evaluator:  # stands in for the compiled model
        def put_weights(self, *weights):
            return weights

        def predict(self, params, batch_stats, features, inputs, size):
            return np.zeros((len(inputs), *size), np.uint8)

    monkeypatch.setattr(restore, "load_weights", lambda *a, **k: (None, {}, {}, None))
    monkeypatch.setattr(evaluate, "make_evaluator", lambda *a, **k: Evaluator())
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        _image(images / name)
    _truncate(images / "b.png")
    (images / "d.png").write_text("not an image")
    status, text = run(capsys, "lcmsm-predict", "--config", DEMO, "--workdir", tmp_path,
                       "--images", images, "--out", tmp_path / "out")  # fmt: skip
    assert status == 0
    check(
        text,
        f"warning: skipping {images / 'b.png'}: cannot be read",
        f"warning: skipping {images / 'd.png'}: cannot be read",
        "predicted 2 images; skipped 2 unreadable",
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*_trainIds.png")) == [
        "a_trainIds.png",
        "c_trainIds.png",
    ]


def test_predict_usage_errors(tmp_path, capsys):
    argv = ["--config", DEMO, "--workdir", tmp_path, "--images", tmp_path, "--out", tmp_path]
    status, text = run(capsys, "lcmsm-predict", *argv, "--batch-size=-1")
    assert status == 2
    check(text, "--batch-size -1: expected 0 or more")
    status, text = run(capsys, "lcmsm-predict", *argv[:4], "--out", tmp_path)
    assert status == 2
    check(text, "--images is required")


# ----------------------------------------------------------------------------- data layer


@pytest.fixture
def gta(tmp_path):
    write_gta5(str(tmp_path), n=2, size=(24, 40))
    return tmp_path


def test_corrupt_image_is_named_with_what_to_do(gta):
    _truncate(gta / "images" / "00002.png")
    source = sources.open_source("gta5", str(gta))
    source[0]  # the intact pair still reads
    with pytest.raises(pngio.UnreadableImageError) as info:
        source[1]
    check(
        str(info.value),
        f"{gta / 'images' / '00002.png'} cannot be read (",
        f"Run `lcmsm-prepare --dataset gta5 --root {gta}`",
        "remove this file",
    )


def test_missing_label_after_scan_is_named(gta):
    source = sources.open_source("gta5", str(gta))
    os.remove(gta / "labels" / "00001.png")
    with pytest.raises(pngio.UnreadableImageError, match="labels/00001.png cannot be read"):
        source[0]


def _first_batch(source):
    dataset = pipeline.train_dataset(
        source, batch_size=2, seed=0, stream="source", scale=(40, 24), crop_size=(16, 16)
    )
    return next(iter(dataset))


def test_corrupt_image_met_during_training_names_the_file(gta):
    _truncate(gta / "images" / "00001.png")
    with pytest.raises(pngio.UnreadableImageError, match=r"images/00001\.png cannot be read"):
        _first_batch(sources.open_source("gta5", str(gta)))


def test_label_of_the_wrong_size_names_both_files(gta):
    Image.new("P", (20, 12)).save(gta / "labels" / "00002.png")
    with pytest.raises(ValueError) as info:
        _first_batch(sources.open_source("gta5", str(gta)))
    check(
        str(info.value),
        f"{gta / 'images' / '00002.png'} and its label {gta / 'labels' / '00002.png'}",
        "the image is 40x24 (width x height) but the label is 20x12",
        "run lcmsm-prepare",
    )


def test_16_bit_grey_image_is_named_not_read_as_white(gta):
    path = gta / "images" / "00001.png"
    Image.fromarray(np.full((24, 40), 40000, np.uint16)).save(path)  # mode "I;16"
    source = sources.open_source("gta5", str(gta))
    with pytest.raises(pngio.ImageFormatError) as info:
        source[0]
    check(
        str(info.value),
        f"{path} is a 16-bit greyscale image (mode 'I;16')",
        "expected an 8-bit RGB, palette or greyscale image",
        "divide by 257",
    )
    source[1]  # the 8-bit RGB pair still reads


def test_text_embeddings_that_are_no_npz_archive(tmp_path):
    path = tmp_path / "cityscapes.npz"
    path.write_text("road\nsidewalk\n")  # a class list saved under the wrong name
    with pytest.raises(text_embeddings.TextEmbeddingError) as info:
        text_embeddings.resolve(str(path), labels.CITYSCAPES_CLASSES, 64)
    message = str(info.value)
    check(
        message,
        f"config.text.embeddings: {path} is not an .npz archive (it starts with "
        "b'road\\nsidewalk\\n'); write it with lcmsm-embed-text",
    )
    assert "pickle" not in message


def test_text_embeddings_with_object_arrays_are_not_unpickled(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, embeddings=np.array([{"a": 1}], dtype=object))
    with pytest.raises(text_embeddings.TextEmbeddingError) as info:
        text_embeddings.resolve(str(path), labels.CITYSCAPES_CLASSES, 64)
    check(str(info.value), f"{path}: holds object arrays, which are not read")
    assert "allow_pickle" not in str(info.value)


# ----------------------------------------------------------------------------- other commands


def test_prepare_and_embed_text_mistakes(tmp_path, capsys):
    status, text = run(capsys, "lcmsm-prepare", "--dataset", "gta5", "--root", tmp_path / "no")
    assert status == 1
    check(text, f"{tmp_path / 'no'}: no such folder", "Expected the GTA5 root")
    status, text = run(capsys, "lcmsm-embed-text", "--model", "ViT-H-14")
    assert status == 2
    check(text, "lcmsm-embed-text: --classes is required", "lcmsm-embed-text --help")
    status, text = run(capsys, "lcmsm-prepare", "--dataset", "gta6", "--root", tmp_path)
    assert status == 2
    check(text, "lcmsm-prepare: flag --dataset=gta6", "gta5")


def test_embed_text_names_a_pretrained_file_that_is_no_checkpoint(tmp_path, capsys):
    pytest.importorskip("open_clip")
    bogus = tmp_path / "open_clip_pytorch_model.bin"
    bogus.write_text("<html>404 Not Found</html>\n")  # a failed download
    status, text = run(capsys, "lcmsm-embed-text", "--classes", "cityscapes",
                       "--pretrained", bogus, "--out", tmp_path / "e.npz")  # fmt: skip
    assert status == 1
    check(
        text,
        f"lcmsm-embed-text: --pretrained {bogus}: not a checkpoint file (it starts with "
        "b'<html>404", "expected the OpenCLIP weights of ViT-H-14 as downloaded",
    )  # fmt: skip
    assert len(text.strip().splitlines()) == 1
    assert not (tmp_path / "e.npz").exists()


def test_embed_text_names_a_pretrained_file_that_does_not_load(tmp_path, capsys, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"\x80\x02garbage")  # begins like a pickle

    def load_fails(*args, **kwargs):
        raise KeyError(101)  # what torch's weights-only unpickler raises on such a file

    monkeypatch.setattr(open_clip, "create_model", load_fails)
    status, text = run(capsys, "lcmsm-embed-text", "--classes", "cityscapes",
                       "--pretrained", bogus, "--out", tmp_path / "e.npz")  # fmt: skip
    assert status == 1
    building, error = text.strip().splitlines()  # the progress line, then the error
    check(building, "building OpenCLIP ViT-H-14")
    check(
        error,
        f"lcmsm-embed-text: --pretrained {bogus}: could not build OpenCLIP ViT-H-14 from this "
        "file (KeyError: 101)",
        "expected the OpenCLIP weights of ViT-H-14",
    )


def test_synthetic_export_root_follows_the_umask(tmp_path, capsys):
    mask = os.umask(0o022)
    try:
        argv = ["--export", "--out", tmp_path / "syn", "--num-images", "1", "--quiet"]
        status, _ = run(capsys, "lcmsm-synthetic", *argv, "--height", "16", "--width", "16")
    finally:
        os.umask(mask)
    assert status == 0
    assert oct((tmp_path / "syn").stat().st_mode & 0o777) == oct(0o755)


# (command, argv, the message); {file} is an existing file, {dir} an existing folder.
UNUSABLE_OUTPUTS = {
    "embed_text_out_folder": (
        "lcmsm-embed-text",
        ["--classes", "cityscapes", "--out", "{dir}"],
        "--out {dir} is a folder; pass a file name (e.g. {dir}/out.npz)",
    ),
    "embed_text_out_under_file": (
        "lcmsm-embed-text",
        ["--classes", "cityscapes", "--out", "{file}/e.npz"],
        "--out {file}/e.npz: {file} is not a folder; pass a path in a folder",
    ),
    "synthetic_out_file": (
        "lcmsm-synthetic",
        ["--export", "--out", "{file}", "--num-images", "1", "--height", "16", "--width", "16"],
        "--out {file} is a file; pass a folder",
    ),
    "synthetic_out_under_file": (
        "lcmsm-synthetic",
        ["--export", "--out", "{file}/syn", "--num-images", "1"],
        "--out {file}/syn: {file} is not a folder",
    ),
    "synthetic_preview_folder": (
        "lcmsm-synthetic",
        ["--preview", "{dir}"],
        "--preview {dir} is a folder; pass a file name (e.g. {dir}/out.png)",
    ),
    "prepare_out_file": (
        "lcmsm-prepare",
        ["--dataset", "gta5", "--root", "{dir}", "--out", "{file}"],
        "--out {file} is a file; pass a folder",
    ),
    "benchmark_json_folder": (
        "lcmsm-benchmark",
        ["--config", DEMO, "--json", "{dir}"],
        "--json {dir} is a folder; pass a file name (e.g. {dir}/out.json)",
    ),
}


@pytest.mark.parametrize("case", UNUSABLE_OUTPUTS, ids=list(UNUSABLE_OUTPUTS))
def test_unusable_output_path_names_the_flag(case, tmp_path, capsys):
    prog, argv, expected = UNUSABLE_OUTPUTS[case]
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    fill = lambda a: a.replace("{file}", str(tmp_path / "file")).replace(  # noqa: E731
        "{dir}", str(tmp_path / "dir")
    )
    status, text = run(capsys, prog, *map(fill, argv))
    assert status == 1
    check(text, f"{prog}: {fill(expected)}")
    assert len(text.strip().splitlines()) == 1
    assert os.listdir(tmp_path / "dir") == []  # nothing written


def test_unusable_export_dir_names_the_flag(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(atomic.OutputPathError, match=f"--export-dir {tmp_path / 'file'} is a file"):
        export.BenchmarkExporter(tmp_path / "file", [])
    (tmp_path / "submit").mkdir()
    (tmp_path / "submit" / "labelIds").write_text("")
    with pytest.raises(atomic.OutputPathError, match=r"--export-dir .*submit/labelIds is a file"):
        export.BenchmarkExporter(tmp_path / "submit", [])


def test_ladder_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    from lcmsm_jax import ladder

    (tmp_path / "file").write_text("")
    argv = ["--config", DEMO, "--out", str(tmp_path / "file"), "--methods", "source_only"]
    assert ladder.main(argv) == 1
    check(capsys.readouterr().out, f"ladder: --out {tmp_path / 'file'} is a file; pass a folder")
