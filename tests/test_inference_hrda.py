"""Multi-resolution (HRDA) test-time inference and the HRDA experiment configs.

The evaluator's logits of a `MultiResSegmentor` against a hand composition: outer windows
cut by hand, `forward_inference` over a hand-listed detail grid, PyTorch's bilinear resize
to the window, a numpy average. `lcmsm-eval` and `lcmsm-predict` on a training checkpoint
of that model against the same composition. Sizes: HRDA's Cityscapes geometry at 1/16
(a 1024 x 2048 image, outer windows 1024 / 512, detail windows 512 / 256 -> 64 x 128,
64 / 32, 32 / 16).
"""

import importlib
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from lcmsm_jax import evaluate, inference, sharding, train
from lcmsm_jax.data import eval_source, pipeline
from lcmsm_jax.evaluator import Evaluator, InferenceSpec

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402
import test_evaluate  # noqa: E402
from test_data_fixtures import write_cityscapes  # noqa: E402
from test_evaluate import random_weights  # noqa: E402

CONFIGS = Path(__file__).parents[1] / "configs"
IMAGE_SIZE = (64, 128)  # (height, width), evaluated at its own size
OUTER = [(0, 0), (0, 32), (0, 64)]  # 64 x 64 windows, stride 32
INNER = [(y, x) for y in (0, 16, 32) for x in (0, 16, 32)]  # 32 x 32 windows, stride 16
HEADS = ("decode", "lcmsm")
# test_evaluate.py's tiny model with the multi-resolution heads, evaluated at 128 x 64.
TINY_OVERRIDES = [
    *[
        o
        for o in test_evaluate.TINY_OVERRIDES
        if not o.startswith(("--config.data.eval", "--config.eval"))
    ],
    "--config.model.hrda.enabled=True",
    "--config.model.hrda.detail_size=(32, 32)",
    "--config.model.hrda.attention_embed_dim=16",
    "--config.data.eval.scale=(128, 64)",
    "--config.data.eval.batch_size=3",
    "--config.eval.crop=(64, 64)",
    "--config.eval.stride=(32, 32)",
    "--config.mesh.data=1",
    "--config.compile_cache_dir=",
]


def tiny_config():
    config = test_evaluate.tiny_config()
    config.model.hrda.enabled = True
    config.model.hrda.detail_size = (32, 32)
    config.model.hrda.attention_embed_dim = 16
    config.data.eval.scale = (128, 64)
    config.eval.crop, config.eval.stride = (64, 64), (32, 32)
    return config


@pytest.fixture(scope="module")
def tiny_model():
    config = tiny_config()
    graphdef, params, stats = random_weights(config.model, seed=3)
    model = nnx.merge(graphdef, params, stats)
    embeddings = np.random.default_rng(4).standard_normal((19, 12)).astype(np.float32)
    features = model.project_text(jax.numpy.asarray(embeddings))
    return config, (graphdef, params, stats), model, features


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    """A 4-image Cityscapes val split at 64 x 128 and its one evaluation batch."""
    root = tmp_path_factory.mktemp("cityscapes")
    write_cityscapes(str(root), split="val", cities=("frankfurt", "lindau"), per_city=2,
                     size=IMAGE_SIZE, seed=5)  # fmt: skip
    config = tiny_config()
    config.data.eval.root = str(root)
    source = eval_source.open_eval_source(config)
    batch = next(iter(pipeline.eval_dataset(source, batch_size=4, scale=(128, 64))))
    assert batch["valid"].all() and batch["image"].shape == (4, *IMAGE_SIZE, 3)
    return root, source, batch


@pytest.fixture(scope="module")
def hand(tiny_model, val_set):
    """{head: `hand_logits` of the val batch} for both heads."""
    _, (graphdef, params, stats), _, features = tiny_model
    return hand_logits(graphdef, params, stats, val_set[2]["image"], features)


def hand_logits(graphdef, params, stats, images, text_features) -> dict[str, np.ndarray]:
    """HRDA's test-time composition written out: [B, 64, 128, 3] -> {head: [B, 64, 128, K]}."""

    @jax.jit
    def fused(windows):  # [3 B, 64, 64, 3], window-major -> {head: [3 B, 16, 16, K]}
        model = nnx.merge(graphdef, params, stats)
        out = model.forward_inference(
            windows, windows=INNER, text_features=text_features, heads=HEADS, train=False
        )
        return {head: out[head][0] for head in HEADS}

    b, h, w, _ = images.shape
    logits = fused(np.concatenate([images[:, y : y + 64, x : x + 64] for y, x in OUTER]))
    result = {}
    for head in HEADS:
        assert logits[head].shape[1:3] == (16, 16)  # stride 4 of the window
        up = torch.tensor(np.asarray(logits[head])).permute(0, 3, 1, 2)
        up = F.interpolate(up, size=(64, 64), mode="bilinear", align_corners=False)
        up = up.permute(0, 2, 3, 1).numpy().astype(np.float64)
        canvas, count = np.zeros((b, h, w, up.shape[-1])), np.zeros((h, w))
        for i, (y, x) in enumerate(OUTER):
            canvas[:, y : y + 64, x : x + 64] += up[i * b : (i + 1) * b]
            count[y : y + 64, x : x + 64] += 1
        result[head] = canvas / count[None, :, :, None]
    return result


# ----------------------------------------------------------------------------- geometry


def test_hrda_window_grids():
    # Outer: 1024 x 1024 windows at stride 512 over Cityscapes' 1024 x 2048 (notes: HRDA's
    # test_cfg); inner: 512 detail windows at stride 256 over each 1024 window.
    boxes, size = inference.windows((1024, 2048), (1024, 1024), (512, 512))
    assert boxes == [(0, 0), (0, 512), (0, 1024)] and size == (1024, 1024)
    count = inference.coverage((1024, 2048), (1024, 1024), (512, 512))
    assert [count[0, x] for x in (0, 512, 1024, 1536)] == [1, 2, 2, 1]
    assert inference.detail_windows((1024, 1024), (512, 512)) == [
        (y, x) for y in (0, 256, 512) for x in (0, 256, 512)
    ]
    assert inference.detail_windows((64, 64), (32, 32)) == INNER
    assert inference.windows(IMAGE_SIZE, (64, 64), (32, 32))[0] == OUTER


# ----------------------------------------------------------------------------- logits


@pytest.mark.parametrize("head", ["decode", "lcmsm"])
def test_evaluator_logits_equal_the_hand_composition(tiny_model, val_set, hand, head):
    _, (graphdef, params, stats), _, features = tiny_model
    features = features if head == "lcmsm" else None
    images = val_set[2]["image"]
    spec = InferenceSpec(mode="slide", crop=(64, 64), stride=(32, 32), head=head)
    evaluator = Evaluator(graphdef, sharding.make_mesh(1), spec)
    got = evaluator.logits(params, stats, features, images)
    assert got.shape == (4, *IMAGE_SIZE, 19)
    np.testing.assert_allclose(got, hand[head], rtol=1e-4, atol=1e-4)


def test_inputs_off_the_stride_8_grid_are_named(tiny_model):
    _, _, model, _ = tiny_model
    fn = inference.model_logits_fn(model, "decode")
    with pytest.raises(ValueError, match="multiples of 8, got 60 x 64.*config.data.eval.scale"):
        fn(np.zeros((1, 60, 64, 3), np.float32))


# ----------------------------------------------------------------------------- commands


def confusion(pred: np.ndarray, label: np.ndarray, k: int = 19) -> np.ndarray:
    keep = label < k
    return np.bincount(label[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def test_lcmsm_eval_of_a_multires_checkpoint(tiny_model, val_set, hand, tmp_path, capsys):
    import orbax.checkpoint as ocp

    from lcmsm_jax import checkpoint

    _, (_, params, stats), _, _ = tiny_model
    root, _, batch = val_set
    workdir = tmp_path / "run"
    manager = checkpoint.run_manager(workdir, max_to_keep=None, enable_async=False)
    item = ocp.args.StandardSave({"params": params, "batch_stats": stats})
    manager.save(40, args=ocp.args.Composite(model=item))
    manager.close()
    expected = confusion(hand["decode"].argmax(-1), batch["label"])

    argv = ["--config", str(CONFIGS / "base.py"), *TINY_OVERRIDES, "--workdir", str(workdir),
            f"--config.data.eval.root={root}"]  # fmt: skip
    assert evaluate.main(argv) == 0
    assert "multi-resolution" in capsys.readouterr().out
    results = json.loads((workdir / "eval_40.json").read_text())
    np.testing.assert_array_equal(np.asarray(results["confusion"]), expected)
    tp = np.diag(expected)
    with np.errstate(invalid="ignore"):
        ious = tp / (expected.sum(0) + expected.sum(1) - tp)
    assert results["mIoU"] == pytest.approx(100 * np.nanmean(ious), abs=1e-6)


# ----------------------------------------------------------------------------- configs

PUBLISHED = {
    "gta2cs_hrda": (73.8, "gta5", False, "decode"),
    "gta2cs_mic_hrda": (75.9, "gta5", True, "decode"),
    "gta2cs_lcmsm_hrda": (76.0, "gta5", False, "lcmsm"),
    "synthia2cs_lcmsm_hrda": (68.2, "synthia", False, "lcmsm"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_hrda_configs(name, tmp_path):
    published, source, masked_target, pseudo_head = PUBLISHED[name]
    module = importlib.import_module(name)
    assert f"Published: {published}" in module.__doc__
    config = module.get_config()
    assert config.model.backbone == "mit_b5"
    hrda = config.model.hrda
    assert hrda.enabled and tuple(hrda.detail_size) == (512, 512)
    assert hrda.detail_loss_weight == 0.1
    data = config.data
    assert data.source.dataset == source and tuple(data.crop_size) == (1024, 1024)
    assert tuple(data.source.scale) == base.HR_SOURCE_SCALES[source]
    assert tuple(data.target.scale) == tuple(data.eval.scale) == (2048, 1024)
    assert tuple(data.target.pseudo_margins) == (30, 240, 30, 30)
    assert data.source.rcs_min_crop_ratio == 2.0
    assert data.eval_classes == ("synthia16" if source == "synthia" else "cityscapes19")
    assert config.uda.ignore_top == config.uda.ignore_bottom == 0
    assert (config.eval.mode, tuple(config.eval.crop), tuple(config.eval.stride)) == (
        "slide", (1024, 1024), (512, 512))  # fmt: skip
    uda = config.uda
    assert uda.masked_target == masked_target and uda.pseudo_label_head == pseudo_head
    lcmsm = pseudo_head == "lcmsm"
    assert uda.masked_source == uda.masked_mix == lcmsm
    width = 512 if lcmsm else 256
    assert config.model.decode_head.embed_dim == config.model.decode_head.channels == width
    if masked_target or lcmsm:
        assert (uda.mask_block_size, uda.mask_ratio) == (64, 0.7)
    # lcmsm-train's parsing and checks accept the file as it is (data roots given).
    roots = [f"--config.data.{d}.root={tmp_path}" for d in ("source", "target", "eval")]
    argv = ["--config", str(CONFIGS / f"{name}.py"), "--workdir", str(tmp_path / "run"),
            *roots, "--config.text.embeddings=random:0"]  # fmt: skip
    fv, warnings = train.parse_command("lcmsm-train", argv, "")
    assert warnings == [] and fv.config.model.hrda.enabled
