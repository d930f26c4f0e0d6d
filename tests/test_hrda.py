"""The multi-resolution (HRDA) pieces of `lcmsm_jax/models/hrda.py` (docs/method.md §8).

References: `hrda_reference.py`, a plain-PyTorch transcription of HRDA's
`HRDAEncoderDecoder` / `HRDAHead` (crop box, crop, slide windows, `decode_hr`, scale
attention, fusion, loss weighting) on the heads of `official_heads.py`, loaded with the
same weights as ours through the converter; PyTorch's `F.interpolate`; hand values.
Sizes are small (HR 64 x 64, detail 32 x 32, batch 2); the geometry rules are written for
any size, so the same rule runs at 1024 / 512.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="needs the test extra (torch)")

from lcmsm_jax import convert, inference, models, optim  # noqa: E402
from lcmsm_jax.models import hrda, hrda_inference  # noqa: E402
from lcmsm_jax.uda import losses  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402
import hrda_reference as ref  # noqa: E402
import official_heads as official  # noqa: E402
from test_heads_official import rel_err, to_nchw, to_nhwc  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-5
B, HR, DETAIL = 2, 64, 32
NUM_CLASSES = 19
DECODE_EMBED, DECODE_CHANNELS = 16, 24
VLC_EMBED, VLC_CHANNELS = 24, 32
ATTENTION_EMBED = 12
TEXT_DIM = 40


def torch_rescale(x, factor: float) -> np.ndarray:
    """PyTorch's bilinear `F.interpolate(scale_factor=...)`, align_corners False, NHWC."""
    t = torch.nn.functional.interpolate(
        to_nchw(x), scale_factor=factor, mode="bilinear", align_corners=False
    )
    return to_nhwc(t)


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "image,crop,offsets",
    [
        (1024, 512, range(0, 512, 8)),  # HRDA's sizes: 504 is the last, 512 never comes
        (64, 32, range(0, 32, 8)),  # the sizes of the tests below
        (71, 32, range(0, 40, 8)),  # margin 39: (39 + 1) // 8 = 5 values, up to 32
        (70, 32, range(0, 32, 8)),  # margin 38: 32 would fit, the rule stops at 24
    ],
)
def test_detail_box_offsets_follow_hrdas_rule(image, crop, offsets):
    keys = jax.random.split(jax.random.key(0), 4096)
    boxes = np.asarray(
        jax.jit(jax.vmap(lambda k: hrda.draw_detail_box(k, (image, image), (crop, crop))))(keys)
    )
    assert boxes.shape == (4096, 2) and boxes.dtype == np.int32  # one (y0, x0) per draw
    assert set(boxes[:, 0]) == set(offsets) and set(boxes[:, 1]) == set(offsets)
    assert not np.array_equal(boxes[:, 0], boxes[:, 1])  # the axes are drawn independently
    rng = np.random.RandomState(0)
    theirs = [ref.get_crop_bbox(image, image, (crop, crop), 8, rng) for _ in range(4096)]
    assert {b[0] for b in theirs} == set(offsets) == {b[2] for b in theirs}
    assert all(b[1] - b[0] == crop == b[3] - b[2] for b in theirs)


def test_detail_box_edge_cases():
    key = jax.random.key(1)
    np.testing.assert_array_equal(hrda.draw_detail_box(key, (32, 64), (32, 32)) % 8, 0)
    assert int(hrda.draw_detail_box(key, (32, 64), (32, 32))[0]) == 0  # no margin: offset 0
    with pytest.raises(ValueError, match="larger than"):
        hrda.draw_detail_box(key, (16, 64), (32, 32))
    with pytest.raises(ValueError, match="margin"):
        hrda.draw_detail_box(key, (36, 64), (32, 32))


def test_downscale_half_is_torch_bilinear_half_without_antialiasing():
    x = np.random.default_rng(0).standard_normal((2, 12, 10, 3)).astype(np.float32)
    want = torch_rescale(x, 0.5)
    ours = np.asarray(hrda.downscale_half(jnp.asarray(x)))
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)
    # JAX's default resize antialiases when shrinking: a wider kernel, other values.
    antialiased = jax.image.resize(x, (2, 6, 5, 3), method="bilinear")
    assert np.max(np.abs(np.asarray(antialiased) - want)) > 1e-2


def test_upsample2_is_torch_bilinear_x2_edges_included():
    x = np.random.default_rng(1).standard_normal((2, 5, 7, 3)).astype(np.float32)
    want = torch_rescale(x, 2)
    np.testing.assert_allclose(np.asarray(hrda.upsample2(jnp.asarray(x))), want, atol=1e-6)


def test_crop_images_labels_and_weights_with_a_traced_box():
    rng = np.random.default_rng(2)
    images = rng.standard_normal((B, HR, HR, 3)).astype(np.float32)
    labels = rng.integers(0, 19, (B, HR, HR)).astype(np.int32)
    box = jnp.asarray([24, 8], jnp.int32)
    crop = jax.jit(hrda.crop, static_argnums=2)
    for x in (images, labels):
        ours = np.asarray(crop(jnp.asarray(x), box, (DETAIL, DETAIL)))
        np.testing.assert_array_equal(ours, x[:, 24 : 24 + DETAIL, 8 : 8 + DETAIL])
        # One box for the batch: every sample is cut at the same place (as HRDA's `crop`).
        torch_x = torch.from_numpy(x if x.ndim == 3 else x.transpose(0, 3, 1, 2).copy())
        theirs = ref.crop(torch_x, (24, 24 + DETAIL, 8, 8 + DETAIL)).numpy()
        np.testing.assert_array_equal(ours, theirs if x.ndim == 3 else theirs.transpose(0, 2, 3, 1))


def test_slide_window_grid_and_count():
    """HRDA's inner slide: 512 windows, stride 256, over a 1024 crop: a 3 x 3 grid; each
    stride-4 canvas cell is covered by 1, 2 or 4 windows."""
    assert inference.window_offsets(1024, 512, 256) == [0, 256, 512]
    for size, crop in ((1024, 512), (HR, DETAIL)):
        windows, window_size = inference.windows((size, size), (crop, crop), (crop // 2,) * 2)
        assert len(windows) == 9 and window_size == (crop, crop)
        count = hrda_inference.window_count(windows, window_size, (size, size))
        assert count.shape == (size // 4, size // 4)
        band = np.repeat([1, 2, 2, 1], size // 16)  # per axis: 1, 2, 2, 1 windows
        np.testing.assert_array_equal(count, np.outer(band, band))
        assert set(np.unique(count)) == {1, 2, 4}
    with pytest.raises(ValueError, match="uncovered"):
        hrda_inference.window_count([(0, 0)], (32, 32), (64, 64))
    with pytest.raises(ValueError, match="grid"):
        hrda_inference.window_count([(2, 0)], (32, 32), (64, 64))


# ----------------------------------------------------------------------------- fusion by hand


def test_border_ring_with_full_attention():
    """A = 1: inside the box the detail logits h, outside the context logits l, and a ring
    where the box mask, applied at context resolution, is upsampled: 0.25 / 0.75 blends on
    the rows and columns either side of each box edge, their products at the corners; no
    ring at the image border."""
    l_value, h_value = 2.0, -1.0
    lr = jnp.full((1, 8, 8, 1), l_value)  # context logits of a 64 x 64 HR image
    hr = jnp.full((1, 8, 8, 1), h_value)  # detail logits of a 32 x 32 crop
    attention = jnp.full((1, 8, 8, 1), 100.0)  # sigmoid = 1 in float32
    fused, attenuated, detail = hrda.fuse_train(lr, hr, attention, jnp.asarray([16, 8]))
    # Box rows 16..48 -> canvas rows 4..11, context rows 2..5; columns 8..40 -> 2..9, 1..4.
    rows = np.array([0, 0, 0, 0.25, 0.75, 1, 1, 1, 1, 1, 1, 0.75, 0.25, 0, 0, 0])
    cols = np.array([0, 0.25, 0.75, 1, 1, 1, 1, 1, 1, 0.75, 0.25, 0, 0, 0, 0, 0])
    weight = np.outer(rows, cols)
    inside = np.zeros((16, 16))
    inside[4:12, 2:10] = 1
    want = weight * inside * h_value + (1 - weight) * l_value
    np.testing.assert_allclose(np.asarray(fused)[0, :, :, 0], want, atol=1e-6)
    f = np.asarray(fused)[0, :, :, 0]
    assert f[3, 5] == pytest.approx(0.75 * l_value)  # just outside: 0.25 A x 0 + 0.75 l
    assert f[4, 5] == pytest.approx(0.75 * h_value + 0.25 * l_value)  # first row inside
    assert f[12, 5] == pytest.approx(0.75 * l_value)  # just outside the far edge
    assert f[4, 2] == pytest.approx(0.5625 * h_value + 0.4375 * l_value)  # corner
    want_lr = np.full((8, 8), l_value)
    want_lr[2:6, 1:5] = 0.0  # (1 - A M) L
    np.testing.assert_allclose(np.asarray(attenuated)[0, :, :, 0], want_lr, atol=1e-6)
    np.testing.assert_array_equal(detail, hr)
    # A box at the image corner: edge clamping, so the first row and column are pure h.
    fused, _, _ = hrda.fuse_train(lr, hr, attention, jnp.asarray([0, 0]))
    f = np.asarray(fused)[0, :, :, 0]
    np.testing.assert_allclose(f[:7, :7], h_value, atol=1e-6)
    assert f[8, 0] == pytest.approx(0.75 * l_value)


def test_inference_fusion_attention_everywhere():
    rng = np.random.default_rng(3)
    lr = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    canvas = rng.standard_normal((1, 8, 8, 2)).astype(np.float32)
    logits = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    fused, attenuated, hr = hrda.fuse_inference(jnp.asarray(lr), jnp.asarray(canvas), logits)
    a = 1 / (1 + np.exp(-logits))
    want = torch_rescale(a, 2) * canvas + torch_rescale((1 - a) * lr, 2)
    np.testing.assert_allclose(fused, want, atol=1e-5)
    np.testing.assert_allclose(attenuated, (1 - a) * lr, atol=1e-6)
    np.testing.assert_array_equal(hr, canvas)


# ----------------------------------------------------------------------------- losses


def test_loss_weights_and_cropped_detail_targets_by_hand():
    """Two classes, spatially constant logits: p(fused) = (1/4, 3/4), p(detail) = (3/4, 1/4).
    A 16 x 16 label map is class 0 with a class-1 square at rows/columns 8..15 and one
    ignored pixel; weights 0.5 except 2.0 inside the square. Box (8, 8), detail 8 x 8."""
    labels = np.zeros((1, 16, 16), np.int32)
    labels[:, 8:, 8:] = 1
    labels[0, 0, 0] = 255
    weights = np.full((1, 16, 16), 0.5, np.float32)
    weights[:, 8:, 8:] = 2.0
    fused = jnp.broadcast_to(jnp.asarray([0.0, np.log(3.0)]), (1, 4, 4, 2))
    detail = jnp.broadcast_to(jnp.asarray([np.log(3.0), 0.0]), (1, 2, 2, 2))
    box = jnp.asarray([8, 8])
    outputs = (fused, None, detail)
    total = hrda.multires_cross_entropy(
        losses.cross_entropy, outputs, jnp.asarray(labels), jnp.asarray(weights), box, (8, 8)
    )
    # Fused: 191 class-0 pixels at weight 0.5 pay log 4, 64 class-1 pixels at 2.0 pay log 4/3.
    ce_fused = (191 * 0.5 * np.log(4) + 64 * 2.0 * np.log(4 / 3)) / 256
    ce_detail = 2.0 * np.log(4.0)  # the crop is all class 1 at weight 2, p = 1/4
    assert float(total) == pytest.approx(0.9 * ce_fused + 0.1 * ce_detail, rel=1e-6)
    assert float(hrda.multires_loss(1.0, 3.0)) == pytest.approx(0.9 + 0.3)  # not 1 + 0.1 x 3
    no_weights = hrda.multires_cross_entropy(
        losses.cross_entropy, outputs, jnp.asarray(labels), None, box, (8, 8)
    )
    want = 0.9 * (191 * np.log(4) + 64 * np.log(4 / 3)) / 256 + 0.1 * np.log(4.0)
    assert float(no_weights) == pytest.approx(want, rel=1e-6)


def test_loss_matches_hrda_head_losses():
    rng = np.random.default_rng(4)
    fused = rng.standard_normal((B, 16, 16, 5)).astype(np.float32)
    detail = rng.standard_normal((B, 8, 8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (B, HR, HR)).astype(np.int32)
    labels[:, :3] = 255
    weights = rng.uniform(0, 1, (B, HR, HR)).astype(np.float32)
    box = (16, 24)
    head = ref.HRDAHead(None, None, 5)
    head.set_hr_crop_box((16, 16 + DETAIL, 24, 24 + DETAIL))
    parts = head.losses(
        (to_nchw(fused), None, to_nchw(detail)), torch.from_numpy(labels), torch.from_numpy(weights)
    )
    ours = hrda.multires_cross_entropy(
        losses.cross_entropy, (fused, None, detail), labels, weights, jnp.asarray(box), (32, 32)
    )
    assert float(ours) == pytest.approx(sum(float(v) for v in parts.values()), rel=1e-5)


# ----------------------------------------------------------------------------- the model


def model_config():
    cfg = base.model_config()
    cfg.backbone = "mit_b0"
    cfg.drop_path_rate = 0.0
    cfg.text_dim = TEXT_DIM
    cfg.decode_head.embed_dim, cfg.decode_head.channels = DECODE_EMBED, DECODE_CHANNELS
    cfg.lcmsm_head.embed_dim, cfg.lcmsm_head.channels = VLC_EMBED, VLC_CHANNELS
    return cfg


def abstract_model(cfg, **options):
    options = {"detail_size": (DETAIL, DETAIL), "attention_embed_dim": ATTENTION_EMBED} | options
    return nnx.eval_shape(lambda: hrda.MultiResSegmentor(cfg, rngs=nnx.Rngs(0), **options))


def build_model(cfg, seed: int = 0) -> hrda.MultiResSegmentor:
    """numpy-drawn values in the model's structure (kernels N(0, 1/fan_in)); avoids compiling
    the initialisers. The heads are overwritten from the PyTorch modules below."""
    graphdef, state = nnx.split(abstract_model(cfg))
    rng = np.random.default_rng(seed)
    flat = []
    for path, variable in nnx.to_flat_state(state):
        shape = variable.get_value().shape
        noise = rng.standard_normal(shape).astype(np.float32)
        value = {
            # A stage's stacked blocks: fan-in of one block (the leading axis is the depth).
            "kernel": noise / np.sqrt(np.prod(shape[int(models.is_stacked(path)) : -1])),
            "scale": 1.0 + 0.1 * noise,
            "bias": 0.1 * noise,
            "mean": np.zeros(shape, np.float32),
            "var": np.ones(shape, np.float32),
        }[path[-1]]
        flat.append((path, variable.replace(jnp.asarray(value))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def test_multires_segmentor_keeps_the_segmentor_tree_and_adds_attention_heads():
    cfg = model_config()
    single = nnx.state(nnx.eval_shape(lambda: models.Segmentor(cfg, rngs=nnx.Rngs(0))))
    model = abstract_model(cfg)
    multi = nnx.state(model)
    single = {p: v.get_value().shape for p, v in nnx.to_flat_state(single)}
    multi = {p: v.get_value().shape for p, v in nnx.to_flat_state(multi)}
    assert {p: s for p, s in multi.items() if p[0] != "attention_head"} == single
    extra = {p for p in multi if p[0] == "attention_head"}
    assert {p[1] for p in extra} == {"decode", "lcmsm"}
    # The attention heads join the heads' parameter group (x10 learning rate), as in HRDA.
    rules = base.get_config().optim.param_groups
    for path in extra:
        assert optim.group_multipliers(".".join(map(str, path)), rules) == (10.0, 1.0), path


def test_attention_head_is_hrdas_attn_cfg():
    """Our default ScaleAttentionHead has exactly the tensors of HRDA's attention head built
    from the DAFormer head config (embedding and width 256, 1x1 conv fusion, 19 outputs)."""
    dims = models.MIT_VARIANTS["mit_b5"].embed_dims
    widths = {"decode_embed": 256, "decode_channels": 256, "vlc_embed": 256, "vlc_channels": 256}
    daformer = official.lc_msm_model_cfg(dims, 19, **widths)["decode_head"]
    attn_cfg = ref.attention_head_cfg(daformer)
    assert attn_cfg["channels"] == 256 and attn_cfg["decoder_params"]["embed_dims"] == 256
    assert attn_cfg["dropout_ratio"] == 0.1
    theirs = official.build_head(attn_cfg)
    ours = nnx.eval_shape(lambda: hrda.ScaleAttentionHead(dims, 19, rngs=nnx.Rngs(0)))
    assert ours.dropout == 0.1
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    report = convert.load_torch_state_dict(ours, state, strict=True, dry_run=True)
    assert len(report.loaded) == len(state) - 1  # all but BN's step counter


def torch_modules(cfg, seed: int):
    """Official heads (decode, LC-MSM), two HRDA attention heads and the text projection,
    with randomised weights and BN buffers, and their state_dict under our names."""
    widths = {"decode_embed": DECODE_EMBED, "decode_channels": DECODE_CHANNELS}
    widths |= {"vlc_embed": VLC_EMBED, "vlc_channels": VLC_CHANNELS}
    dims = models.MIT_VARIANTS[cfg.backbone].embed_dims
    model_cfg = official.lc_msm_model_cfg(dims, cfg.num_classes, **widths)
    torch.manual_seed(seed)
    attn_cfg = ref.attention_head_cfg(model_cfg["decode_head"], ATTENTION_EMBED)
    modules = {
        "decode_head": official.build_head(model_cfg["decode_head"]),
        "vlc_head": official.build_head(dict(model_cfg["vlc_head"], tau=model_cfg["tau"])),
        "attention_head.decode": official.build_head(attn_cfg),
        "attention_head.lcmsm": official.build_head(attn_cfg),
        "text_embed_net": torch.nn.Linear(TEXT_DIM, VLC_CHANNELS),
    }
    gen = torch.Generator().manual_seed(seed + 1)
    state = {}
    with torch.no_grad():
        for prefix, module in modules.items():
            for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
                if name.endswith("running_var"):
                    tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
                elif name.endswith(("running_mean", "bias")):
                    tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen))
                elif tensor.ndim == 1 and not name.endswith("num_batches_tracked"):
                    tensor.copy_(1.0 + 0.3 * torch.randn(tensor.shape, generator=gen))
            state |= {f"{prefix}.{k}": v.numpy().copy() for k, v in module.state_dict().items()}
    return modules, state


@nnx.jit
def backbone_features(model, images):
    return model.backbone(images)


def torch_pipelines(model, modules, text):
    """One HRDA encoder-decoder per head on the same torch modules; the backbone is ours."""

    def backbone(images):
        # Batches of B at a time: the backbone mixes no samples, and one compiled size
        # serves the context, detail and window batches.
        chunks = [backbone_features(model, jnp.asarray(to_nhwc(c))) for c in images.split(B)]
        return [to_nchw(np.concatenate(level)) for level in zip(*chunks, strict=True)]

    with torch.no_grad():
        text_features = modules["text_embed_net"](torch.from_numpy(text))
    heads = {
        "decode": modules["decode_head"],
        "lcmsm": ref.TextConditioned(modules["vlc_head"], text_features),
    }
    return {
        name: ref.HRDAEncoderDecoder(
            backbone,
            ref.HRDAHead(head, modules[f"attention_head.{name}"], NUM_CLASSES),
            hr_crop_size=(DETAIL, DETAIL),
        )
        for name, head in heads.items()
    }


def set_torch_mode(modules, train: bool):
    """BN in `train` mode; Dropout2d off on both sides (rng=None on ours)."""
    for module in modules.values():
        module.train(train)
        for sub in module.modules():
            if isinstance(sub, torch.nn.Dropout2d):
                sub.eval()


@nnx.jit
def our_train_forward(model, images, box, text):
    return model.forward_train(images, box, text, heads=("decode", "lcmsm"), train=True)


@nnx.jit
def our_teacher_inference(model, images, text):
    windows, _ = inference.windows((HR, HR), (DETAIL, DETAIL), (DETAIL // 2, DETAIL // 2))
    return model.forward_inference(
        images, text, windows=windows, heads=("decode", "lcmsm"), train=True
    )


@pytest.fixture
def pair():
    cfg = model_config()
    modules, state = torch_modules(cfg, seed=5)
    model = build_model(cfg)
    report = convert.load_torch_state_dict(model, state)
    assert report.unmatched == []
    assert report.missing and all(m.startswith("backbone.") for m in report.missing)
    rng = np.random.default_rng(6)
    images = rng.standard_normal((B, HR, HR, 3)).astype(np.float32)
    text = rng.standard_normal((NUM_CLASSES, TEXT_DIM)).astype(np.float32)
    return model, modules, torch_pipelines(model, modules, text), images, text


def compare(ours: dict, theirs: dict) -> None:
    for name, pipeline_out in theirs.items():
        for part, mine, want in zip(("fused", "lr", "hr"), ours[name], pipeline_out, strict=True):
            assert rel_err(mine, to_nhwc(want)) <= TOL, (name, part)


def test_training_forward_matches_hrda_with_a_box(pair):
    """Train mode (BN batch statistics, separately for the context pass, the detail pass and
    the attention head), box at the largest offset on one axis; then the BN running
    statistics of both heads after their two updates (context, then detail)."""
    model, modules, pipelines, images, text = pair
    box = (8, 24)
    their_box = (box[0], box[0] + DETAIL, box[1], box[1] + DETAIL)  # (y1, y2, x1, x2)
    set_torch_mode(modules, train=True)
    with torch.no_grad():
        theirs = {n: p.forward_with_aux(to_nchw(images), their_box) for n, p in pipelines.items()}
    ours = our_train_forward(model, images, jnp.asarray(box, jnp.int32), text)
    compare(ours, theirs)
    assert [f.shape[1:3] for f in ours["features"]] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    checked = 0
    for prefix, module in modules.items():
        for name, bn in module.named_modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                ours_bn = model
                for part in f"{prefix}.{name}".split("."):
                    ours_bn = ours_bn[int(part)] if part.isdigit() else getattr(ours_bn, part)
                assert rel_err(ours_bn.mean[...], bn.running_mean.numpy()) <= TOL, (prefix, name)
                assert rel_err(ours_bn.var[...], bn.running_var.numpy()) <= TOL, (prefix, name)
                checked += 1
    assert checked == 2 * 8 + 2  # two separable-ASPP heads, two 1x1-fusion attention heads


def test_slide_inference_matches_hrda(pair):
    """Context pass on the whole image, detail logits from 9 overlapping windows in one
    batch of 9B (window-major), averaged, fused with the attention everywhere. BatchNorm
    with batch statistics, as the teacher's pseudo-labels use it: the windows share one
    batch (evaluation mode differs only inside BatchNorm, tested with the heads)."""
    model, modules, pipelines, images, text = pair
    set_torch_mode(modules, train=True)
    with torch.no_grad():
        theirs = {name: p.encode_decode(to_nchw(images)) for name, p in pipelines.items()}
    ours = our_teacher_inference(model, images, text)
    compare(ours, theirs)
    assert ours["decode"][0].shape == (B, HR // 4, HR // 4, NUM_CLASSES)


def test_multires_forward_rejects_bad_sizes_and_heads():
    model = abstract_model(model_config(), attention_heads=("decode",))
    images = jnp.zeros((B, HR, HR, 3))
    with pytest.raises(ValueError, match="no scale-attention head"):
        model.forward_train(images, jnp.zeros(2, jnp.int32), heads=("lcmsm",))
    with pytest.raises(ValueError, match="multiples of 8"):
        model.forward_train(jnp.zeros((B, 60, 64, 3)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="larger than the image"):
        model.forward_inference(jnp.zeros((B, 24, 64, 3)), windows=[(0, 0)])
    with pytest.raises(ValueError, match="multiples of 8"):
        abstract_model(model_config(), detail_size=(30, 32))
    with pytest.raises(ValueError, match="unknown heads"):
        abstract_model(model_config(), attention_heads=("aux",))


# ----------------------------------------------------------------------------- upstream layouts


def upstream_uda_state_dict(cfg, seed: int) -> tuple[dict, dict]:
    """A MIC(HRDA)-style UDA checkpoint: each head wrapped in HRDA's `HRDAHead` (upstream's
    attribute names: `head`, `scale_attention`), under `model.` (student), `ema_model.`
    (teacher: other values) and `imnet_model.` (skipped); the backbone's mmseg names come
    from test_convert's writer. Returns (state_dict, the same tensors under our names)."""
    from test_convert import torch_style_state_dict

    modules, ours = torch_modules(cfg, seed)
    segmentor = torch.nn.Module()
    segmentor.decode_head = ref.HRDAHead(
        modules["decode_head"], modules["attention_head.decode"], NUM_CLASSES
    )
    segmentor.vlc_head = ref.HRDAHead(
        modules["vlc_head"], modules["attention_head.lcmsm"], NUM_CLASSES
    )
    heads = {k: v.numpy().copy() for k, v in segmentor.state_dict().items()}
    assert any(k.startswith("decode_head.head.") for k in heads)
    assert any(k.startswith("vlc_head.scale_attention.") for k in heads)
    backbone = {k: v for k, v in torch_style_state_dict(build_model(cfg, seed=seed + 2)).items()
                if k.startswith("backbone.")}  # fmt: skip
    student = backbone | heads
    state = {f"model.{k}": v for k, v in student.items()}
    state |= {f"ema_model.{k}": v * 0.5 for k, v in student.items()}
    state |= {f"imnet_model.{k}": v for k, v in backbone.items()}
    state |= {k: v for k, v in ours.items() if k.startswith("text_embed_net.")}
    ours = backbone | ours
    return state, ours


@pytest.mark.parametrize("weights", ["student", "teacher"])
def test_upstream_hrda_uda_checkpoint_loads_strictly(weights):
    """Every tensor of an HRDA-wrapped UDA checkpoint lands where the hand-renamed one does
    (whose logits equal upstream HRDA's in the tests above): strict, nothing unmatched."""
    cfg = model_config()
    state, ours = upstream_uda_state_dict(cfg, seed=3)
    model = build_model(cfg)
    report = convert.load_torch_state_dict(model, state, weights=weights, strict=True)
    assert report.unmatched == [] and report.missing == []
    expected = build_model(cfg)
    scale = 1.0 if weights == "student" else 0.5
    convert.load_torch_state_dict(
        expected,
        {k: v * scale if not k.startswith("text_embed_net.") and np.issubdtype(v.dtype, np.floating)
         else v for k, v in ours.items()},
    )  # fmt: skip
    mine, theirs = models.per_block_arrays(model), models.per_block_arrays(expected)
    assert mine.keys() == theirs.keys()
    for path in mine:
        np.testing.assert_array_equal(mine[path], theirs[path], err_msg=str(path))


def test_an_unknown_head_layout_is_refused_naming_the_head_and_prefixes():
    """Heads under names the converter does not map are not a silent random head."""
    cfg = model_config()
    state, _ = upstream_uda_state_dict(cfg, seed=3)
    state = {k.replace("decode_head.head.", "decode_head.wrapped."): v for k, v in state.items()}
    report = convert.load_torch_state_dict(build_model(cfg), state)
    convert.check_filled(report, "mic_hrda.pth")  # the backbone alone fills enough overall
    with pytest.raises(
        convert.PartialConversionError,
        match=r"mic_hrda\.pth: decode_head: 0 of \d+ variables filled; closest unmatched "
        r"source prefixes: decode_head\.wrapped\.\* \(\d+ tensors\)",
    ):
        convert.check_parts(report, "mic_hrda.pth")
