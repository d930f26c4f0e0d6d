"""`lcmsm-predict` inputs: tiny images, the output folder next to the images, image folders
with subfolders (Cityscapes' leftImg8bit/val/<city>/).

Most tests stand a fake evaluator in for the compiled model (as tests/test_user_errors.py
does); one runs the tiny model of tests/test_evaluate.py on a one-pixel-high image.
"""

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lcmsm_jax import cli, predict
from lcmsm_jax.data import transforms as T

sys.path.insert(0, str(Path(__file__).parent))
from test_data_fixtures import write_cityscapes  # noqa: E402

CONFIGS = Path(__file__).parents[1] / "configs"
DEMO = str(CONFIGS / "demo.py")  # evaluates at (128, 64): a 1 x 512 image gets factor 1/4


def run(capsys, *argv) -> tuple[int, str]:
    """(exit status, everything printed) of `lcmsm-predict argv`, as the console script runs."""
    status = cli.run("lcmsm-predict", [str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out + err


def write_image(path: Path, size: tuple[int, int] = (24, 40), seed: int = 0) -> Path:
    """A random uint8 RGB PNG of `size` (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


class FakeEvaluator:
    """Stands in for the compiled model: predicts class 1 everywhere, records input shapes."""

    def __init__(self):
        self.input_shapes: list[tuple[int, ...]] = []

    def put_weights(self, *weights):
        return weights

    def predict(self, params, batch_stats, features, inputs, size):
        assert min(inputs.shape[1:3]) >= 1, inputs.shape
        self.input_shapes.append(inputs.shape)
        return np.ones((len(inputs), *size), np.uint8)


@pytest.fixture
def fake_model(monkeypatch) -> FakeEvaluator:
    from lcmsm_jax import evaluate, restore

    evaluator = FakeEvaluator()
    monkeypatch.setattr(restore, "load_weights", lambda *a, **k: (None, {}, {}, None))
    monkeypatch.setattr(evaluate, "make_evaluator", lambda *a, **k: evaluator)
    return evaluator


def predicted_stems(out: Path) -> list[str]:
    return sorted(p.name[: -len("_trainIds.png")] for p in out.rglob("*_trainIds.png"))


# ----------------------------------------------------------------------------- tiny images


@pytest.mark.parametrize(
    "size, scale, expected",
    [
        ((1, 512), (128, 64), (1, 128)),  # 1 * 0.25 rounds to 0
        ((512, 1), (128, 64), (128, 1)),
        ((1, 5000), (2048, 1024), (1, 2048)),
        ((2, 4096), (1024, 512), (1, 1024)),  # 2 * 0.25 = 0.5 rounds up
    ],
)
def test_keep_ratio_size_never_gives_an_empty_side(size, scale, expected):
    assert T.keep_ratio_size(*size, scale) == expected


def test_resize_of_a_one_pixel_side_is_constant_along_it():
    rng = np.random.default_rng(1)
    row = rng.integers(0, 256, (1, 40, 3), dtype=np.uint8)
    # Both taps of a size-1 axis are its only pixel: every output row is the 1-row resize.
    once = T.resize_image(row, (1, 64))
    np.testing.assert_array_equal(T.resize_image(row, (5, 64)), np.repeat(once, 5, axis=0))
    column = row.transpose(1, 0, 2)
    np.testing.assert_array_equal(
        T.resize_image(column, (64, 3)), np.repeat(once.transpose(1, 0, 2), 3, axis=1)
    )
    # OpenCV agrees bit for bit at an integer factor.
    wide = rng.integers(0, 256, (1, 512, 3), dtype=np.uint8)
    want = cv2.resize(wide, (128, 1), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(T.resize_image(wide, (1, 128)), want)


@pytest.mark.parametrize("size", [(0, 128), (4, 0)])
def test_resize_to_an_empty_size_is_refused(size):
    image = np.zeros((1, 512, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 1 pixel"):
        T.resize_image(image, size)


def test_predict_a_one_pixel_high_image_with_the_others(tmp_path, capsys, fake_model):
    images = tmp_path / "images"
    write_image(images / "a.png")
    write_image(images / "line.png", (1, 512))
    write_image(images / "z.png", seed=2)
    status, text = run(capsys, "--config", DEMO, "--workdir", tmp_path, "--images", images,
                       "--out", tmp_path / "out")  # fmt: skip
    assert status == 0, text
    assert "predicted 3 images" in text and "skipped" not in text
    assert predicted_stems(tmp_path / "out") == ["a", "line", "z"]
    with Image.open(tmp_path / "out" / "line_trainIds.png") as im:
        assert (im.height, im.width) == (1, 512)
        assert (np.asarray(im) == 1).all()
    assert (1, 128) in [shape[1:3] for shape in fake_model.input_shapes]  # network input


def test_tiny_model_predicts_a_one_pixel_high_image(tmp_path, capsys):
    """The tiny model of tests/test_evaluate.py, restored from a training checkpoint."""
    import orbax.checkpoint as ocp
    import test_evaluate

    from lcmsm_jax import checkpoint

    _, params, stats = test_evaluate.random_weights(test_evaluate.tiny_config().model, 0)
    manager = checkpoint.run_manager(tmp_path / "run", max_to_keep=None, enable_async=False)
    item = ocp.args.StandardSave({"params": params, "batch_stats": stats})
    manager.save(10, args=ocp.args.Composite(model=item))
    manager.close()
    images = tmp_path / "images"
    write_image(images / "line.png", (1, 512))  # evaluated at (64, 32): 1 x 64
    write_image(images / "street.png", (64, 128), seed=3)
    status, text = run(capsys, "--config", CONFIGS / "base.py", *test_evaluate.TINY_OVERRIDES,
                       "--workdir", tmp_path / "run", "--images", images,
                       "--out", tmp_path / "out", "--head", "decode")  # fmt: skip
    assert status == 0, text
    assert "predicted 2 images" in text
    for stem, size in (("line", (1, 512)), ("street", (64, 128))):
        with Image.open(tmp_path / "out" / f"{stem}_trainIds.png") as im:
            assert (im.height, im.width) == size
            assert np.asarray(im).max() < 19


# ----------------------------------------------------------------------------- --out


@pytest.mark.parametrize("spelling", ["same", "trailing_slash", "relative", "glob"])
def test_out_equal_to_the_images_folder_is_a_usage_error(
    tmp_path, capsys, fake_model, monkeypatch, spelling
):
    images = tmp_path / "images"
    write_image(images / "a.png")
    monkeypatch.chdir(tmp_path)
    images_arg, out_arg = {
        "same": (images, images),
        "trailing_slash": (f"{images}/", images),
        "relative": (images, "images"),
        "glob": (images / "*.png", "./images/"),
    }[spelling]
    status, text = run(capsys, "--config", DEMO, "--workdir", tmp_path, "--images", images_arg,
                       "--out", out_arg)  # fmt: skip
    assert status == 2, text
    line = text.strip()
    assert "\n" not in line
    assert line.startswith("lcmsm-predict: --out") and "--images" in line
    assert "choose an --out outside" in line
    assert sorted(p.name for p in images.iterdir()) == ["a.png"]  # nothing written


@pytest.mark.parametrize("pattern", ["folder", "**/*.png"])
def test_out_inside_the_images_folder_is_never_searched(tmp_path, capsys, fake_model, pattern):
    images = tmp_path / "images"
    write_image(images / "a.png")
    write_image(images / "city" / "b.png", seed=1)
    out = images / "pred"
    spec = images if pattern == "folder" else images / pattern
    argv = ["--config", DEMO, "--workdir", tmp_path, "--images", spec, "--out", out]
    for _ in range(2):  # the second run finds the first run's outputs under --out
        status, text = run(capsys, *argv)
        assert status == 0, text
        assert "predicted 2 images" in text
    assert predicted_stems(out) == ["a", "b"]
    assert [p.name for p in predict.find_images(str(spec), exclude=str(out))] == ["a.png", "b.png"]


# ----------------------------------------------------------------------------- subfolders


def test_a_folder_is_searched_with_its_subfolders_in_sorted_order(tmp_path):
    write_cityscapes(str(tmp_path), split="val", cities=("munster", "frankfurt"), per_city=2)
    folder = tmp_path / "leftImg8bit" / "val"
    found = predict.find_images(str(folder))
    rel = [p.relative_to(folder).as_posix() for p in found]
    assert rel == [
        f"{city}/{city}_{j:06d}_000019_leftImg8bit.png"
        for city in ("frankfurt", "munster")
        for j in range(2)
    ], rel
    # Files directly in the folder and in subfolders, one sorted order.
    write_image(folder / "zz.JPG")
    write_image(folder / "aa.png")
    (folder / "notes.txt").write_text("not an image")
    rel = [p.relative_to(folder).as_posix() for p in predict.find_images(str(folder))]
    assert rel[0] == "aa.png" and rel[-1] == "zz.JPG" and len(rel) == 6


def test_predict_a_cityscapes_split_folder(tmp_path, capsys, fake_model):
    write_cityscapes(str(tmp_path), split="val", cities=("lindau", "frankfurt"), per_city=2)
    folder = tmp_path / "leftImg8bit" / "val"
    status, text = run(capsys, "--config", DEMO, "--workdir", tmp_path, "--images", folder,
                       "--out", tmp_path / "out")  # fmt: skip
    assert status == 0, text
    assert "predicted 4 images" in text
    assert len(predicted_stems(tmp_path / "out")) == 4


def test_no_images_message_names_the_folder_subfolders_and_extensions(tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "city").mkdir(parents=True)
    (folder / "city" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError) as info:
        predict.find_images(str(folder))
    message = str(info.value)
    assert "\n" not in message
    for part in (f"--images {str(folder)!r}", "subfolders", ".png", ".jpg", "no image files"):
        assert part in message, message
    status, text = run(capsys, "--config", DEMO, "--workdir", tmp_path, "--images", folder,
                       "--out", tmp_path / "out")  # fmt: skip
    assert status == 1 and "subfolders" in text
    # A misspelt folder and a pattern that matches nothing say which.
    with pytest.raises(FileNotFoundError, match="no image files found: no such folder or file"):
        predict.find_images(str(tmp_path / "fotos"))
    with pytest.raises(FileNotFoundError, match="no image files found: the pattern matches no"):
        predict.find_images(str(folder / "*.jpg"))


def test_same_file_name_in_two_subfolders_is_named(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "b" / "x.jpg")
    with pytest.raises(ValueError) as info:
        predict.find_images(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    for part in (os.path.join("a", "x.png"), os.path.join("b", "x.jpg"), "share the name 'x'"):
        assert part in message, message


def test_images_inside_the_out_folder_are_still_found(tmp_path):
    out = tmp_path / "out"
    write_image(out / "photos" / "a.png")
    for spec in (out / "photos", out / "photos" / "*.png"):
        assert [p.name for p in predict.find_images(str(spec), exclude=str(out))] == ["a.png"]


def test_a_symlink_loop_in_the_folder_ends(tmp_path):
    write_image(tmp_path / "photos" / "city" / "a.png")
    (tmp_path / "photos" / "city" / "up").symlink_to(tmp_path / "photos")
    (tmp_path / "photos" / "linked").symlink_to(tmp_path / "photos" / "city")
    found = predict.find_images(str(tmp_path / "photos"))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["photos/city/a.png"]
