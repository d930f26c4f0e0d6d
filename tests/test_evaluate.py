"""Evaluation: window grid, slide/whole inference, mIoU, sharding, exports, lcmsm-eval/-predict."""

import fnmatch
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from lcmsm_jax import evaluate, export, inference, miou, models, predict, restore, sharding
from lcmsm_jax.data import eval_source, labels, pipeline
from lcmsm_jax.evaluator import Evaluator, InferenceSpec
from lcmsm_jax.models import layers

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402
import eval_reference as er  # noqa: E402
from eval_reference import mmseg_windows  # noqa: E402
from test_data_fixtures import write_cityscapes  # noqa: E402

CONFIG_FILE = Path(__file__).parents[1] / "configs" / "base.py"
# Full-resolution 64x128 images evaluated at 32x64 with 32x32 windows, stride 16: the
# Cityscapes geometry (2048x1024 -> 1024x512, windows 512 / 256) at 1/32 scale.
IMAGE_SIZE = (64, 128)
TINY_OVERRIDES = [
    "--config.model.backbone=mit_b0",
    "--config.model.decode_head.embed_dim=16",
    "--config.model.decode_head.channels=16",
    "--config.model.decode_head.fusion=conv",
    "--config.model.lcmsm_head.embed_dim=16",
    "--config.model.lcmsm_head.channels=16",
    "--config.model.text_dim=12",
    "--config.data.eval.scale=(64, 32)",
    "--config.eval.crop=(32, 32)",
    "--config.eval.stride=(16, 16)",
    "--config.text.embeddings=random:0",
]


def tiny_config():
    config = base.get_config()
    model = config.model
    model.backbone = "mit_b0"
    for head in (model.decode_head, model.lcmsm_head):
        head.embed_dim = head.channels = 16
    model.decode_head.fusion = "conv"
    model.text_dim = 12
    config.data.eval.scale = (64, 32)
    config.eval.crop = (32, 32)
    config.eval.stride = (16, 16)
    config.text.embeddings = "random:0"
    return config


def random_weights(model_config, seed: int):
    """(graphdef, params, batch_stats) of the configured model (plain or multi-resolution)
    with random values, BatchNorm running statistics too, without a model initialisation
    (eager init compiles ~100 small programs; this keeps the tests fast)."""
    model = nnx.eval_shape(lambda: models.build_segmentor(model_config, rngs=nnx.Rngs(0)))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = str(path[-1].key), leaf.shape
        noise = rng.standard_normal(shape)
        if name == "kernel":
            value = noise / np.sqrt(np.prod(shape[:-1]))
        elif name == "var":
            value = 0.5 + rng.random(shape)
        elif name == "scale":
            value = 1.0 + 0.1 * noise
        else:  # bias, mean
            value = 0.1 * noise
        return value.astype(np.float32)

    fill_all = lambda state: jax.tree_util.tree_map_with_path(fill, state.to_pure_dict())  # noqa: E731
    return graphdef, fill_all(params), fill_all(stats)


def fake_logits_fn(num_classes: int = 5, seed: int = 0):
    """A cheap per-image 'network': 4x4 average pooling then a fixed 3 -> K projection plus
    a little non-linearity, so windows see different logits depending on their content."""
    weights = jnp.asarray(np.random.default_rng(seed).standard_normal((3, num_classes)))

    def fn(x):
        b, h, w, c = x.shape
        pooled = x.reshape(b, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4))
        return jnp.tanh(pooled @ weights) + 0.1 * pooled[..., :1] ** 2

    return fn


# ----------------------------------------------------------------------------- window grid


def test_cityscapes_window_grid():
    assert inference.window_offsets(1024, 512, 256) == [0, 256, 512]
    assert inference.window_offsets(512, 512, 256) == [0]
    count = inference.coverage((512, 1024), (512, 512), (256, 256))
    assert (count == count[:1]).all()
    np.testing.assert_array_equal(count[0, ::256], [1, 2, 2, 1])


@pytest.mark.parametrize(
    "h,w,crop,stride",
    [(512, 1024, (512, 512), (256, 256)), (720, 1280, (512, 512), (341, 341)),
     (300, 700, (512, 512), (256, 256)), (1024, 2048, (1024, 1024), (512, 512)),
     (37, 53, (16, 20), (7, 9))],
)  # fmt: skip
def test_window_grid_matches_mmseg(h, w, crop, stride):
    boxes, (ch, cw) = inference.windows((h, w), crop, stride)
    assert [(y, y + ch, x, x + cw) for y, x in boxes] == mmseg_windows(h, w, crop, stride)
    count = np.zeros((h, w))
    for y1, y2, x1, x2 in mmseg_windows(h, w, crop, stride):
        count[y1:y2, x1:x2] += 1
    np.testing.assert_array_equal(inference.coverage((h, w), crop, stride), count)


# ----------------------------------------------------------------------------- slide inference


def reference_slide_predictions(fn, images, out_size, crop, stride):
    """mmseg's loop, one image and one window at a time, accumulated in numpy."""
    preds = []
    for image in np.asarray(images):
        h, w = image.shape[:2]
        canvas, count = None, np.zeros((h, w, 1), np.float32)
        for y1, y2, x1, x2 in mmseg_windows(h, w, crop, stride):
            logits = fn(jnp.asarray(image[None, y1:y2, x1:x2]))
            logits = np.asarray(layers.resize_bilinear(logits, (y2 - y1, x2 - x1)))[0]
            canvas = np.zeros((h, w, logits.shape[-1]), np.float32) if canvas is None else canvas
            canvas[y1:y2, x1:x2] += logits
            count[y1:y2, x1:x2] += 1
        full = layers.resize_bilinear(jnp.asarray(canvas / count)[None], out_size)
        preds.append(np.asarray(jnp.argmax(full[0], axis=-1)))
    return np.stack(preds)


def test_batched_slide_equals_the_reference_loop():
    fn = fake_logits_fn()
    images = np.random.default_rng(0).standard_normal((3, 32, 64, 3)).astype(np.float32)
    ours = jax.jit(
        lambda x: inference.predict_labels(
            fn, x, (64, 128), mode="slide", crop=(32, 32), stride=(16, 16)
        )
    )(images)
    want = reference_slide_predictions(fn, images, (64, 128), (32, 32), (16, 16))
    np.testing.assert_array_equal(np.asarray(ours), want)
    # One image at a time gives the same as the batch.
    for i in range(3):
        alone = inference.predict_labels(
            fn, images[i : i + 1], (64, 128), mode="slide", crop=(32, 32), stride=(16, 16)
        )
        np.testing.assert_array_equal(np.asarray(alone), np.asarray(ours[i : i + 1]))


@pytest.mark.torch
def test_slide_logits_match_a_torch_transcription_of_mmseg():
    """mmseg 0.16 `slide_inference` + `resize` to the original size, in torch (NCHW)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    weights = np.random.default_rng(0).standard_normal((3, 5))
    fn = fake_logits_fn(5, seed=0)

    def torch_net(x):  # fake_logits_fn in NCHW
        pooled = F.avg_pool2d(x, 4)
        proj = torch.einsum("bchw,ck->bkhw", pooled, torch.from_numpy(weights).float())
        return torch.tanh(proj) + 0.1 * pooled[:, :1] ** 2

    images = np.random.default_rng(2).standard_normal((2, 32, 64, 3)).astype(np.float32)
    img = torch.from_numpy(images.transpose(0, 3, 1, 2))
    preds = er.slide_inference(torch_net, img, (32, 32), (16, 16))
    want = F.interpolate(preds, size=(64, 128), mode="bilinear", align_corners=False)
    ours = layers.resize_bilinear(
        inference.slide_logits(fn, jnp.asarray(images), (32, 32), (16, 16)), (64, 128)
    )
    np.testing.assert_allclose(np.asarray(ours), want.numpy().transpose(0, 2, 3, 1), atol=1e-5)


@pytest.mark.parametrize("crop", [(32, 64), (48, 80)])
def test_slide_equals_whole_when_the_crop_covers_the_image(crop):
    fn = fake_logits_fn(seed=1)
    images = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 64, 3)), jnp.float32)
    slide = inference.slide_logits(fn, images, crop, (16, 16))
    whole = inference.whole_logits(fn, images)
    np.testing.assert_array_equal(np.asarray(slide), np.asarray(whole))


def test_slide_averages_overlapping_windows():
    # A network that outputs its input's mean colour everywhere: overlapping windows see
    # different means, and the canvas holds their average where they overlap.
    fn = (
        lambda x: jnp.broadcast_to(  # noqa: E731
            x.mean(axis=(1, 2), keepdims=True)[..., :1],
            (x.shape[0], x.shape[1] // 4, x.shape[2] // 4, 1),
        )
    )
    image = jnp.broadcast_to(jnp.arange(64, dtype=jnp.float32)[None, None, :, None], (1, 32, 64, 3))
    out = np.asarray(inference.slide_logits(fn, image, (32, 32), (16, 16)))[0, 0, :, 0]
    means = [15.5, 31.5, 47.5]  # windows at x = 0, 16, 32
    np.testing.assert_allclose(out[[0, 20, 40, 60]], [means[0], np.mean(means[:2]),
                                                      np.mean(means[1:]), means[2]])  # fmt: skip
    with pytest.raises(ValueError, match="leaves pixels uncovered"):
        inference.slide_logits(fn, image, (8, 8), (16, 16))


# ----------------------------------------------------------------------------- metrics


def numpy_reference_metrics(pred, label, valid, k):
    keep = (label != 255) & valid[:, None, None]
    iou, acc, inter_total = [], [], 0
    for c in range(k):
        inter = np.sum((pred == c) & (label == c) & keep)
        union = np.sum(((pred == c) | (label == c)) & keep)
        gt = np.sum((label == c) & keep)
        iou.append(inter / union if union else np.nan)
        acc.append(inter / gt if gt else np.nan)
        inter_total += inter
    return {"mIoU": 100 * np.nanmean(iou), "mAcc": 100 * np.nanmean(acc),
            "aAcc": 100 * inter_total / keep.sum(), "IoU": 100 * np.array(iou)}  # fmt: skip


def device_metrics(pred, label, valid, k=19, subsets=None):
    counts = jax.jit(miou.confusion_matrix, static_argnums=3)(pred, label, valid, k)
    total = miou.add_counts(miou.zero_counts(k), counts)
    names = labels.CITYSCAPES_CLASSES[:k] if k == 19 else [f"c{i}" for i in range(k)]
    return miou.metrics_from_confusion(miou.counts_to_numpy(total), names, subsets)


def test_miou_matches_an_independent_numpy_reference():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 17, (4, 40, 60)).astype(np.int32)  # classes 17, 18 never predicted
    label = rng.integers(0, 16, (4, 40, 60)).astype(np.int32)  # 16..18 never in the gt
    label[rng.random(label.shape) < 0.2] = 255
    label[:, :5] = np.where(pred[:, :5] < 16, pred[:, :5], 255)  # some agreement
    valid = np.array([True, True, True, False])
    ours = device_metrics(pred, label, valid)
    want = numpy_reference_metrics(pred, label, valid, 19)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert ours[key] == pytest.approx(want[key], rel=1e-12), key
    np.testing.assert_allclose(list(ours["IoU"].values()), want["IoU"], rtol=1e-12)
    assert math.isnan(ours["IoU"]["motorcycle"]) and math.isnan(ours["IoU"]["bicycle"])
    assert ours["IoU"]["train"] == 0.0  # predicted only: false positives, IoU 0


def test_hand_computed_cases():
    # 2 classes of 3 in play. gt:   [0 0 1 255]    pred: [0 1 1 2]
    #                          gt:   [2 ...]         pred: [0 ...] (second row)
    label = np.array([[[0, 0, 1, 255], [255, 255, 255, 255]]], np.int32)
    pred = np.array([[[0, 1, 1, 2], [2, 2, 2, 2]]], np.int32)
    res = device_metrics(pred, label, np.array([True]), k=4, subsets={"first2": (0, 1)})
    # class 0: I=1, U=2; class 1: I=1, U=2; class 2 only predicted on ignored pixels: U=0 ->
    # NaN (ignore pixels count nothing); class 3 absent everywhere: NaN, excluded.
    assert res["IoU"] == pytest.approx({"c0": 50.0, "c1": 50.0, "c2": math.nan, "c3": math.nan},
                                       nan_ok=True)  # fmt: skip
    assert res["mIoU"] == pytest.approx(50.0)
    assert res["aAcc"] == pytest.approx(100 * 2 / 3) and res["mAcc"] == pytest.approx(75.0)
    assert res["first2"] == pytest.approx(50.0) and res["num_pixels"] == 3
    # Now class 2 is predicted on a labelled pixel: a false positive, IoU 0, mean drops.
    pred[0, 0, 0] = 2
    res = device_metrics(pred, label, np.array([True]), k=4)
    assert res["IoU"]["c2"] == 0.0
    assert res["mIoU"] == pytest.approx((0 + 50 + 0) / 3)


def test_padding_counts_nothing_and_counts_stay_exact():
    pred = np.zeros((2, 8, 8), np.int32)
    label = np.zeros((2, 8, 8), np.int32)
    res = device_metrics(pred, label, np.array([True, False]))
    assert res["confusion"][0][0] == 64 and res["num_pixels"] == 64
    # The running total carries into the high word: exact beyond int32.
    total = miou.zero_counts(2)
    big = jnp.full((2, 2), 2**30 + 12345, jnp.int32)
    for _ in range(8):
        total = miou.add_counts(total, big)
    np.testing.assert_array_equal(miou.counts_to_numpy(total), np.full((2, 2), 8 * (2**30 + 12345)))


def test_synthia_subsets_average_the_per_class_ious():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 19, (2, 30, 30)).astype(np.int32)
    label = np.where(rng.random((2, 30, 30)) < 0.5, pred, rng.integers(0, 19, (2, 30, 30)))
    res = device_metrics(pred, label.astype(np.int32), np.ones(2, bool),
                         subsets=miou.class_subsets("synthia16"))  # fmt: skip
    iou = np.array(list(res["IoU"].values()))
    assert res["mIoU16"] == pytest.approx(np.mean(iou[list(labels.SYNTHIA16_TRAIN_IDS)]))
    assert res["mIoU13"] == pytest.approx(np.mean(iou[list(labels.SYNTHIA13_TRAIN_IDS)]))
    table = miou.format_table(res, miou.class_subsets("synthia16"))
    assert "terrain" in table and "(not in mIoU16)" in table and "mIoU13" in table
    with pytest.raises(ValueError, match="config.data.eval_classes"):
        miou.class_subsets("synthia13")


# ----------------------------------------------------------------------------- sharded evaluation


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    written = write_cityscapes(str(root), split="val", cities=("frankfurt", "lindau", "munster"),
                               per_city=2, size=IMAGE_SIZE, seed=5)  # fmt: skip
    return root, written


def val_source(root):
    config = tiny_config()
    config.data.eval.root = str(root)
    return eval_source.open_eval_source(config)


def run_evaluation(evaluator, weights, source, *, batch_size, exporter=None):
    """Evaluate `source`; returns (results, {source index: prediction})."""
    _, params, stats = weights
    dataset = pipeline.eval_dataset(source, batch_size=batch_size, scale=(64, 32))
    seen = {}

    def collect(preds, indices):
        seen.update({int(i): p for i, p in zip(indices, preds, strict=True)})
        if exporter is not None:
            exporter(preds, indices)

    results = evaluator(params, stats, None, dataset, num_images=len(source),
                        on_predictions=collect, stream=None)  # fmt: skip
    return results, seen


@pytest.fixture(scope="module")
def sharded_runs(val_root, tmp_path_factory):
    root, _ = val_root
    config = tiny_config()
    weights = random_weights(config.model, seed=0)
    source = val_source(root)
    export_dir = tmp_path_factory.mktemp("export")
    exporter = export.BenchmarkExporter(export_dir, export.benchmark_names(source, 6))
    # 6 images in batches of 8: two padding entries, one per device on the 8-device mesh.
    # The evaluator from arrays alone, and the one lcmsm-eval builds from the config.
    spec = InferenceSpec.from_config(config.eval)
    evaluator8 = Evaluator(weights[0], sharding.make_mesh(8), spec)
    eight = run_evaluation(evaluator8, weights, source, batch_size=8, exporter=exporter)
    exporter.close()
    evaluator1 = evaluate.make_evaluator(config, weights[0], sharding.make_mesh(1))
    one = run_evaluation(evaluator1, weights, source, batch_size=8)
    return eight, one, source, export_dir, (evaluator1, weights)


def test_repeated_evaluation_reuses_one_compiled_function(sharded_runs):
    _, (first, _), source, _, (evaluator, weights) = sharded_runs
    again, _ = run_evaluation(evaluator, weights, source, batch_size=8)
    assert again["confusion"] == first["confusion"]
    assert evaluator._step._cache_size() == 1


def test_eight_devices_equal_one_device_exactly(sharded_runs, val_root):
    (res8, pred8), (res1, pred1), source, *_ = sharded_runs
    assert sorted(pred8) == sorted(pred1) == list(range(6))
    for i in range(6):
        np.testing.assert_array_equal(pred8[i], pred1[i])
    assert res8["confusion"] == res1["confusion"]
    assert res8["mIoU"] == res1["mIoU"] and res8["num_images"] == 6
    # Padding is masked out: exactly the labelled pixels of the 6 images are counted.
    _, written = val_root
    lut = labels.lookup_table(labels.CITYSCAPES_ID_TO_TRAIN_ID)
    labelled = sum(int(np.sum(lut[ids] != 255)) for ids in written.values())
    assert res8["num_pixels"] == labelled
    # The metrics agree with the numpy reference on the returned predictions.
    gt = np.stack([source[i]["label"] for i in range(6)]).astype(np.int32)
    pred = np.stack([pred8[i] for i in range(6)]).astype(np.int32)
    want = numpy_reference_metrics(pred, gt, np.ones(6, bool), 19)
    assert res8["mIoU"] == pytest.approx(want["mIoU"], rel=1e-12)


def test_export_round_trip(sharded_runs):
    (_, pred8), _, source, export_dir, _ = sharded_runs
    lut = labels.lookup_table(labels.CITYSCAPES_ID_TO_TRAIN_ID)
    label_files = sorted((export_dir / "labelIds").iterdir())
    assert len(label_files) == 6
    for index, image_path in enumerate(source.images):
        name = Path(image_path).name  # e.g. frankfurt_000000_000019_leftImg8bit.png
        city, seq, frame = name.split("_")[:3]
        # The benchmark script finds exactly one `<city>_<seq>_<frame>*.png` per gt file.
        matches = fnmatch.filter([p.name for p in label_files], f"{city}_{seq}_{frame}*.png")
        assert matches == [name]
        with Image.open(export_dir / "labelIds" / name) as im:
            assert im.mode == "L" and (im.height, im.width) == IMAGE_SIZE
            label_ids = np.asarray(im)
        assert set(np.unique(label_ids)) <= set(labels.CITYSCAPES_ID_TO_TRAIN_ID)
        np.testing.assert_array_equal(lut[label_ids], pred8[index])
        with Image.open(export_dir / "color" / name) as im:
            np.testing.assert_array_equal(np.asarray(im), labels.colorize(pred8[index]))


# ----------------------------------------------------------------------------- command lines


# The PyTorch model behind `converted_workdir`: a transformers SegFormer (MiT-B0, all-MLP head
# with 16 channels = our decode head with fusion "conv") and the official LC-MSM head
# (`official_heads.py`, separable ASPP fusion) with its text projection `text_embed_net`
# (16 channels, text width 12), as TINY_OVERRIDES configure the model.
MIT_B0_CHANNELS = (32, 64, 160, 256)
# Near-ties of the reference logits. The converted model's logits differ from the
# reference's by float rounding only: at most 3e-6 (decode head) and 3.1e-5 (LC head, whose
# logits are ~10x larger) on these images, against median top-2 margins of 0.14 and 4.0. A
# pixel whose best classes lie within TIE (30x the largest difference) of each other may go
# either way; every other pixel must get the reference's arg-max.
TIE = 1e-3


def torch_models(npz=None):
    """(SegformerForSemanticSegmentation, official LC-MSM head, text projection) in eval
    mode; with `npz`, loaded from that file (the tensors `lcmsm-convert` read)."""
    import official_heads as official
    import torch
    import torch_reference as ref
    from transformers import SegformerForSemanticSegmentation

    hf = SegformerForSemanticSegmentation(ref.segformer_config(decoder_hidden_size=16))
    lc_head = official.lc_msm_head(MIT_B0_CHANNELS, 19, embed_dims=16, channels=16)
    text_proj = torch.nn.Linear(12, 16)
    if npz is not None:
        with np.load(npz) as data:
            state = {k: torch.from_numpy(data[k]) for k in data.files}
        for prefix, module in (("vlc_head.", lc_head), ("text_embed_net.", text_proj), ("", hf)):
            own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            module.load_state_dict(own)
        # The converted MiT has NVlabs' LayerNorm epsilons (1e-6 in the block and stage
        # norms) where transformers has 1e-5; the reference takes the same (test_model_parity).
        ref.match_nvlabs_epsilons_(hf)
    return hf.eval(), lc_head.eval(), text_proj.eval()


def reference_net(npz, head: str):
    """Images [B, 3, h, w] -> `head`'s logits at stride 4, from the PyTorch models alone."""
    import torch

    from lcmsm_jax import text

    hf, lc_head, text_proj = torch_models(npz)
    if head == "decode":
        return lambda x: hf(pixel_values=x).logits
    # config.text.embeddings = "random:0": 19 random unit vectors of width 12 (the input).
    embeddings = torch.from_numpy(text.random_embeddings(0, 19, 12))
    return lambda x: lc_head(hf.segformer(x, output_hidden_states=True).hidden_states,
                             text_proj(embeddings))  # fmt: skip


def reference_segment(net, image: np.ndarray) -> np.ndarray:
    """Logits [K, H, W] of one uint8 image at its own resolution, as TINY_OVERRIDES evaluate:
    keep-ratio resize into (64, 32), slide windows 32x32 with stride 16."""
    return er.segment(net, image, scale=(64, 32), mode="slide", crop=(32, 32), stride=(16, 16))


def check_against_reference(pred: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Assert `pred` [H, W] is the reference's arg-max up to near-ties; returns the reference
    prediction with those near-ties resolved as `pred` did."""
    want = logits.argmax(axis=0)
    agree = er.near_argmax(pred, logits, TIE)
    wrong = int(np.sum(~agree))
    assert wrong == 0, f"{wrong} pixels differ from the reference's arg-max beyond a near-tie"
    assert np.sum(pred != want) <= pred.size // 1000, "too many near-ties resolved otherwise"
    return np.where(agree, pred, want)


@pytest.fixture(scope="module")
def converted_workdir(tmp_path_factory):
    """An `lcmsm-convert` result from random PyTorch weights (`torch_models`), which are kept
    in `<workdir>/torch_model.npz`."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch_reference as ref

    from lcmsm_jax import convert

    torch.manual_seed(0)
    hf, lc_head, text_proj = torch_models()
    # A seed with which both heads predict several classes on the val images.
    generator = torch.Generator().manual_seed(1)
    for module in (hf, lc_head, text_proj):
        ref.randomize_(module, generator)
        er.unit_gain_(module, generator)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    state |= {f"vlc_head.{k}": v.numpy() for k, v in lc_head.state_dict().items()}
    state |= {f"text_embed_net.{k}": v.numpy() for k, v in text_proj.state_dict().items()}
    work = tmp_path_factory.mktemp("converted_run")
    np.savez(work / "torch_model.npz", **state)
    argv = ["--config", str(CONFIG_FILE), *TINY_OVERRIDES, "--strict", "--workdir", str(work),
            "--torch-checkpoint", str(work / "torch_model.npz")]  # fmt: skip
    assert convert.main(argv) == 0
    return work


@pytest.mark.torch
def test_lcmsm_eval_end_to_end_on_a_converted_checkpoint(
    converted_workdir, val_root, tmp_path, capsys
):
    root, _ = val_root
    argv = ["--config", str(CONFIG_FILE), *TINY_OVERRIDES, f"--config.data.eval.root={root}",
            "--config.data.eval.batch_size=4", "--workdir", str(converted_workdir),
            "--export-dir", str(tmp_path / "export")]  # fmt: skip
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    assert "evaluating converted checkpoint (student weights, decode head, slide)" in out
    assert "eval: 6/6 images (100%)" in out and "road" in out and "mIoU" in out
    saved = json.loads((converted_workdir / "eval_converted.json").read_text())
    assert saved["step"] is None and saved["num_images"] == 6
    assert set(saved["IoU"]) == set(labels.CITYSCAPES_CLASSES)
    assert math.isfinite(saved["mIoU"]) and saved["inference"]["crop"] == [32, 32]
    assert len(list((tmp_path / "export" / "labelIds").iterdir())) == 6

    # The reference: the split read from disk, transformers' SegFormer through mmseg's test
    # pipeline, a numpy confusion matrix and mmseg's metrics.
    label_to_train = np.full(256, 255, np.uint8)
    for label_id, train_id in er.CITYSCAPES_LABEL_ID_TO_TRAIN_ID.items():
        label_to_train[label_id] = train_id
    net = reference_net(converted_workdir / "torch_model.npz", "decode")
    conf = np.zeros((19, 19), np.int64)
    images = sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    assert len(images) == 6
    for path in images:
        image = er.read_rgb(path)
        gt = path.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        label = er.read_train_ids(root / "gtFine" / "val" / path.parent.name / gt)
        logits = reference_segment(net, image)
        with Image.open(tmp_path / "export" / "labelIds" / path.name) as im:
            exported = label_to_train[np.asarray(im)]
        conf += er.confusion(check_against_reference(exported, logits), label)
    # Predictions that are constant or ignore the image would make a weak check.
    assert np.count_nonzero(conf.sum(axis=0)) >= 5
    np.testing.assert_array_equal(np.array(saved["confusion"]), conf)
    want = er.metrics(conf)
    assert saved["num_pixels"] == conf.sum()
    for key in ("mIoU", "mAcc", "aAcc"):
        assert saved[key] == pytest.approx(want[key], abs=1e-6, nan_ok=True), key
    for key in ("IoU", "Acc"):  # JSON writes NaN as null
        got = [saved[key][c] for c in labels.CITYSCAPES_CLASSES]
        got = np.array([math.nan if v is None else v for v in got])
        np.testing.assert_allclose(got, want[key], atol=1e-6, rtol=0)
    assert np.isnan(want["IoU"]).any()  # classes in neither prediction nor label: NaN
    # Non-default choices get their own file.
    assert evaluate.results_tag(None, "student", "lcmsm") == "converted_lcmsm"
    assert evaluate.results_tag(2000, "teacher", "decode") == "2000_teacher"


@pytest.mark.torch
@pytest.mark.parametrize("head", ["decode", "lcmsm"])
def test_lcmsm_predict_on_a_converted_checkpoint(
    converted_workdir, val_root, tmp_path, capsys, head
):
    root, _ = val_root
    folder = root / "leftImg8bit" / "val" / "frankfurt"
    # The LC head uses config.text.embeddings = random:0 projected by the converted weights.
    argv = ["--config", str(CONFIG_FILE), *TINY_OVERRIDES, "--workdir", str(converted_workdir),
            "--images", str(folder), "--out", str(tmp_path / "pred"),
            "--head", head]  # fmt: skip
    assert predict.main(argv) == 0
    out = capsys.readouterr().out
    assert f"(student weights, {head} head)" in out and "predict: 2/2 images (100%)" in out
    net = reference_net(converted_workdir / "torch_model.npz", head)
    for path in sorted(folder.iterdir()):
        image = er.read_rgb(path)
        with Image.open(tmp_path / "pred" / f"{path.stem}_trainIds.png") as im:
            assert im.mode == "L" and (im.height, im.width) == IMAGE_SIZE
            train_ids = np.asarray(im)
        assert train_ids.max() < 19
        logits = reference_segment(net, image)
        check_against_reference(train_ids, logits)
        assert len(np.unique(train_ids)) >= 3
        with Image.open(tmp_path / "pred" / f"{path.stem}_color.png") as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), er.CITYSCAPES_COLOURS[train_ids])
        with Image.open(tmp_path / "pred" / f"{path.stem}_overlay.png") as im:
            assert im.mode == "RGB"
            half = (image.astype(np.float64) + er.CITYSCAPES_COLOURS[train_ids]) / 2
            assert np.abs(np.asarray(im) - half).max() <= 0.5  # half and half, rounded
    with Image.open(tmp_path / "pred" / "legend.png") as im:  # every colour of the palette
        assert {tuple(c) for c in er.CITYSCAPES_COLOURS[:19]} <= set(im.getdata())
    # A glob gives the same images.
    assert [p.name for p in predict.find_images(str(folder / "*.png"))] == sorted(
        p.name for p in folder.iterdir()
    )


def test_training_checkpoints_by_step_and_weights(tmp_path):
    """The layout `lcmsm-train` writes: items "model" and "teacher" at each saved step."""
    import orbax.checkpoint as ocp

    from lcmsm_jax import checkpoint

    config = tiny_config()
    saved = {}
    manager = checkpoint.run_manager(tmp_path, max_to_keep=None, enable_async=False)
    for step, item_names in ((10, ("model", "teacher")), (20, ("model",))):
        items = {}
        for seed, item in enumerate(item_names, start=step):
            _, params, stats = random_weights(config.model, seed)
            saved[step, item] = params
            items[item] = ocp.args.StandardSave({"params": params, "batch_stats": stats})
        manager.save(step, args=ocp.args.Composite(**items))
    manager.close()
    same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))  # noqa: E731
    _, params, _, step = restore.load_weights(config, tmp_path)
    assert step == 20 and same(params, saved[20, "model"])
    _, params, _, step = restore.load_weights(config, tmp_path, step=10, weights="teacher")
    assert step == 10 and same(params, saved[10, "teacher"])
    # The LC head's text projection comes from the student of the same step.
    text_params, embeddings = restore.text_inputs(
        config, tmp_path, params, step=10, weights="teacher"
    )
    assert same(text_params, saved[10, "model"]) and embeddings.shape == (19, 12)
    with pytest.raises(FileNotFoundError, match="has no step 30; available: \\[10, 20\\]"):
        restore.load_weights(config, tmp_path, step=30)


def test_unlabelled_split_opens_for_export_only(tmp_path):
    # The Cityscapes test split: images only. Every pixel is "ignore", so predictions can
    # be exported while the confusion matrix stays empty.
    write_cityscapes(str(tmp_path), split="test", cities=("berlin",), per_city=2, size=(8, 16))
    config = tiny_config()
    config.data.eval.root, config.data.eval.split, config.data.eval.max_images = (
        str(tmp_path), "test", 1,
    )  # fmt: skip
    source = eval_source.open_eval_source(config)
    assert len(source) == 1 and source.images == [
        "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png"
    ]
    example = source[0]
    assert example["label"].shape == (8, 16) and (example["label"] == 255).all()
    assert export.benchmark_names(source, 1) == ["berlin_000000_000019_leftImg8bit.png"]
    with pytest.raises(IndexError):
        source[1]


def test_usage_errors_name_the_problem(tmp_path, capsys):
    assert evaluate.main(["--config", str(CONFIG_FILE)]) == 2
    assert "--workdir is required" in capsys.readouterr().out
    argv = ["--config", str(CONFIG_FILE), "--workdir", str(tmp_path),
            "--images", str(tmp_path / "none*.png"), "--out", str(tmp_path)]  # fmt: skip
    assert predict.main(argv) == 1
    assert "no image files found" in capsys.readouterr().out
    argv = ["--config", str(CONFIG_FILE), *TINY_OVERRIDES, "--workdir", str(tmp_path / "run")]
    assert evaluate.main(argv) == 1
    assert f"{tmp_path / 'run'} has neither training checkpoints" in capsys.readouterr().out
    config = tiny_config()
    with pytest.raises(FileNotFoundError, match="neither training checkpoints"):
        restore.load_weights(config, tmp_path)
    with pytest.raises(ValueError, match="config.data.eval.root is empty"):
        eval_source.open_eval_source(config)
    with pytest.raises(ValueError, match="config.eval.mode"):
        config.eval.mode = "sliding"
        InferenceSpec.from_config(config.eval)


class _HalfWidthOdd:
    """A source whose odd images (and labels) are cut to their left half: an evaluation split
    of two image sizes."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        example = dict(self.source[index])
        if index % 2:
            width = example["image"].shape[1] // 2
            example["image"] = example["image"][:, :width]
            example["label"] = example["label"][:, :width]
        return example


def test_mixed_size_images_are_evaluated_each_at_its_own_size(sharded_runs):
    """Batches holding two image sizes give the predictions and confusion of evaluating
    every image alone."""
    _, _, source, _, (evaluator, weights) = sharded_runs
    mixed = _HalfWidthOdd(source)
    together, predicted = run_evaluation(evaluator, weights, mixed, batch_size=4)
    confusion = np.zeros_like(np.asarray(together["confusion"]))
    for index in range(len(mixed)):
        alone, seen = run_evaluation(evaluator, weights, [mixed[index]], batch_size=1)
        prediction = seen[0]
        confusion += np.asarray(alone["confusion"])
        np.testing.assert_array_equal(predicted[index], prediction)
        assert prediction.shape == mixed[index]["label"].shape
    np.testing.assert_array_equal(np.asarray(together["confusion"]), confusion)
    assert together["num_images"] == len(mixed)
