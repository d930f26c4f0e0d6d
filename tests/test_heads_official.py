"""Our DAFormer and LC-MSM heads against transcriptions of the official heads.

`official_heads.py` reproduces `mmseg/models/decode_heads/{daformer_head,lc_msm_head}.py`
of the official LC-MSM code (with the mmcv bricks they use). Its state_dict carries the
official names (`model.decode_head.*`, `model.vlc_head.*`, `text_embed_net.*`, the layout of
a `DACSTigDA` checkpoint); the tests load it through `convert.load_torch_state_dict` into a
`Segmentor` and compare logits in eval mode (running statistics) and train mode (batch
statistics and the running-statistics update), the text path (projection, L2
normalisations, 1/tau, spatial block), the Dropout2d placement, and `Segmentor.__call__`.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="needs the test extra (torch)")

from lcmsm_jax import convert, models  # noqa: E402
from lcmsm_jax.models import layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import gta2cs_lcmsm  # noqa: E402
import official_heads as official  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-5
NUM_CLASSES = 19
IN_CHANNELS = models.MIT_VARIANTS["mit_b0"].embed_dims  # (32, 64, 160, 256)
# Distinct widths everywhere, so a transposed or mis-routed tensor cannot go unnoticed.
DECODE_EMBED, DECODE_CHANNELS = 16, 24
VLC_EMBED, VLC_CHANNELS = 24, 32
TEXT_DIM = 40
# Strides 4..32 of a 96 x 112 input; the stride-4 map is large enough that the dilation 6
# and 12 taps reach inside it, and the odd sizes exercise the bilinear resize.
FEATURE_SIZES = ((24, 28), (12, 14), (6, 7), (3, 4))
ARCH_OPTIONS = {"bottleneck": 1, "depthwise": 2, "none": 0}


def rel_err(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def to_nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def to_nchw(x) -> "torch.Tensor":
    return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def our_config(fusion="sep_aspp", spatial_block="bottleneck", tau=0.07, impl="auto"):
    """The LC-MSM experiment config with small widths (structure unchanged)."""
    cfg = gta2cs_lcmsm.get_config().model
    cfg.backbone = "mit_b0"
    cfg.drop_path_rate = 0.0
    cfg.text_dim = TEXT_DIM
    cfg.depthwise_impl = impl
    cfg.decode_head.embed_dim, cfg.decode_head.channels = DECODE_EMBED, DECODE_CHANNELS
    cfg.lcmsm_head.embed_dim, cfg.lcmsm_head.channels = VLC_EMBED, VLC_CHANNELS
    cfg.decode_head.fusion = cfg.lcmsm_head.fusion = fusion
    cfg.lcmsm_head.spatial_block = spatial_block
    cfg.lcmsm_head.tau = tau
    return cfg


def official_model(cfg, seed: int) -> "official.DACSTigDA":
    """The official modules for our config `cfg`, with randomised weights and BN buffers."""
    assert tuple(cfg.decode_head.dilations) == tuple(cfg.lcmsm_head.dilations)
    assert cfg.decode_head.fusion == cfg.lcmsm_head.fusion
    assert cfg.decode_head.dropout == cfg.lcmsm_head.dropout
    model_cfg = official.lc_msm_model_cfg(
        models.MIT_VARIANTS[cfg.backbone].embed_dims,
        cfg.num_classes,
        decode_embed=cfg.decode_head.embed_dim,
        decode_channels=cfg.decode_head.channels,
        vlc_embed=cfg.lcmsm_head.embed_dim,
        vlc_channels=cfg.lcmsm_head.channels,
        fusion=cfg.decode_head.fusion,
        dilations=cfg.decode_head.dilations,
        dropout_ratio=cfg.decode_head.dropout,
        tau=cfg.lcmsm_head.tau,
        arch_option=ARCH_OPTIONS[cfg.lcmsm_head.spatial_block],
        block_depth=cfg.lcmsm_head.block_depth,
        activation=cfg.lcmsm_head.activation,
    )
    torch.manual_seed(seed)
    module = official.DACSTigDA(model_cfg, cfg.text_dim, cfg.lcmsm_head.channels)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(0.3 * noise)
            elif tensor.ndim == 1:  # BatchNorm scale
                tensor.copy_(1.0 + 0.3 * noise)
    return module.eval()


def build_segmentor(cfg, seed: int = 0) -> models.Segmentor:
    """A Segmentor for `cfg` with numpy-drawn values (kernels N(0, 1/fan_in), norm scales
    near 1, small biases): the same structure as `Segmentor(cfg, rngs=...)`, without
    compiling the initialisers, which dominates the runtime of these small tests on CPU."""
    abstract = nnx.eval_shape(lambda: models.Segmentor(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
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
        flat.append((path, variable.replace(jnp.asarray(value, jnp.float32))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def converted(cfg, torch_model, extra=None):
    """Our Segmentor filled from the official state_dict (+ `extra` tensors) by the converter."""
    model = build_segmentor(cfg)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()} | (extra or {})
    report = convert.load_torch_state_dict(model, state)
    assert report.unmatched == []
    assert all(m.startswith("backbone.") for m in report.missing), report.summary()
    return model, report


def random_inputs(seed: int, batch: int = 2):
    rng = np.random.default_rng(seed)
    feats = [
        rng.standard_normal((batch, h, w, c)).astype(np.float32)
        for c, (h, w) in zip(IN_CHANNELS, FEATURE_SIZES, strict=True)
    ]
    text = rng.standard_normal((NUM_CLASSES, TEXT_DIM)).astype(np.float32)
    return feats, text


def torch_heads(torch_model, feats, text, *, train: bool):
    """Official logits (NHWC); train mode uses batch statistics with Dropout2d off, as the
    official teacher forward does (`m.training = False` on every dropout module)."""
    torch_model.train(train)
    for head in (torch_model.model.decode_head, torch_model.model.vlc_head):
        if head.dropout is not None:
            head.dropout.eval()
    with torch.no_grad():
        decode, vlc = torch_model([to_nchw(f) for f in feats], torch.from_numpy(text))
    return to_nhwc(decode), to_nhwc(vlc)


# The heads run eagerly: across these tests the per-op compilations are shared (same
# shapes), which is cheaper on CPU than compiling one program per head and config. The
# segmentor, with its backbone, is one jitted program for both modes.
def decode_logits(model, feats, *, train, rng=None):
    return model.decode_head(feats, train=train, rng=rng)


def vlc_logits(model, feats, text, *, train, rng=None):
    """Raw text [K, D_text] -> projection (text_embed_net) -> LC-MSM head logits."""
    return model.vlc_head(feats, model.project_text(jnp.asarray(text)), train=train, rng=rng)


def correlate(model, fused, text):
    text_features = model.project_text(jnp.asarray(text))
    return text_features, model.vlc_head.correlate(jnp.asarray(fused), text_features)


@nnx.jit
def segmentor_eval_and_train(model, images, text):
    """`Segmentor.__call__` in eval mode, then in train mode (BN batch statistics)."""
    return tuple(
        model(images, text, train=train, heads=("decode", "lcmsm")) for train in (False, True)
    )


def module_at(root, dotted: str):
    """Our submodule at an official dotted module path (`decode_head.fuse_layer.aspp_modules.1`)."""
    for part in dotted.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


# ----------------------------------------------------------------------------- configuration


def test_our_lcmsm_config_is_the_official_configuration():
    """configs/gta2cs_lcmsm.py builds the heads of configs/_base_/models/lc_msm_sepaspp.py."""
    cfg = gta2cs_lcmsm.get_config().model
    ref = official.OFFICIAL_MODEL
    assert list(models.MIT_VARIANTS[cfg.backbone].embed_dims) == ref["in_channels"]
    assert cfg.num_classes == ref["num_classes"]
    assert cfg.text_dim == ref["text_dim"] and cfg.lcmsm_head.channels == ref["text_out"]
    assert cfg.lcmsm_head.tau == ref["tau"]
    for ours, theirs in ((cfg.decode_head, ref["decode_head"]), (cfg.lcmsm_head, ref["vlc_head"])):
        assert ours.embed_dim == theirs["embed_dims"]
        assert ours.channels == theirs["channels"]
        assert ours.dropout == theirs["dropout_ratio"]
        fusion = theirs["fusion"]
        assert fusion["type"] == "aspp" and not fusion["pool"]
        assert ours.fusion == ("sep_aspp" if fusion["sep"] else "aspp")
        assert tuple(ours.dilations) == fusion["dilations"]
    assert ARCH_OPTIONS[cfg.lcmsm_head.spatial_block] == ref["vlc_head"]["arch_option"]
    assert cfg.lcmsm_head.block_depth == ref["vlc_head"]["block_depth"]
    assert cfg.lcmsm_head.activation == ref["vlc_head"]["activation"]


def test_official_state_dict_fills_every_head_variable():
    cfg = our_config()
    torch_model = official_model(cfg, seed=0)
    # An official checkpoint also stores the frozen OpenCLIP tower (`clip_model.*`).
    clip = {
        "clip_model.positional_embedding": np.zeros((77, 8), np.float32),
        "clip_model.transformer.resblocks.0.attn.in_proj_weight": np.zeros((24, 8), np.float32),
    }
    model, report = converted(cfg, torch_model, extra=clip)
    names = set(torch_model.state_dict())
    assert {n for n, _ in report.loaded} == {
        n.removeprefix("model.") for n in names if not n.endswith("num_batches_tracked")
    }
    assert {r for _, r in report.skipped} == {
        "BatchNorm step counter (not used by inference or training)",
        "frozen OpenCLIP model (its text embeddings come from lcmsm-embed-text)",
    }
    assert {n for n, _ in report.skipped if n.startswith("clip_model.")} == set(clip)
    # Everything outside the backbone comes from the official tensors (strict would only
    # complain about the backbone, which these state_dicts do not carry).
    assert report.missing and all(m.startswith("backbone.") for m in report.missing)
    # logit_scale is a plain tensor attribute of the official head, not a state_dict entry.
    assert not any("logit_scale" in n for n in names)
    head = torch_model.model.vlc_head
    assert model.vlc_head.logit_scale == pytest.approx(head.logit_scale.item(), rel=1e-6)


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize(
    "fusion,spatial_block,impl",
    [
        ("sep_aspp", "bottleneck", "shifted_sum"),
        ("sep_aspp", "bottleneck", "conv"),
        ("aspp", "depthwise", "auto"),
    ],
)
def test_heads_eval_mode_match_official(fusion, spatial_block, impl):
    cfg = our_config(fusion, spatial_block, impl=impl)
    torch_model = official_model(cfg, seed=1)
    model, _ = converted(cfg, torch_model)
    feats, text = random_inputs(2)
    want_decode, want_vlc = torch_heads(torch_model, feats, text, train=False)
    decode = decode_logits(model, feats, train=False)
    vlc = vlc_logits(model, feats, text, train=False)
    assert rel_err(decode, want_decode) <= TOL
    assert rel_err(vlc, want_vlc) <= TOL


def test_conv_fusion_lcmsm_head_matches_official():
    """The 1x1-conv fusion (build_layer type `conv`) in the LC-MSM head; the spatial block off
    (an arch option outside 1 and 2)."""
    cfg = our_config("conv", "none")
    torch_model = official_model(cfg, seed=1)
    model, _ = converted(cfg, torch_model)
    feats, text = random_inputs(2)
    _, want_vlc = torch_heads(torch_model, feats, text, train=False)
    vlc = vlc_logits(model, feats, text, train=False)
    assert rel_err(vlc, want_vlc) <= TOL


def test_conv_fusion_daformer_head_checkpoint_matches_official():
    """The DAFormer head with 1x1 conv fusion concatenates c1..c4 (SegFormer: c4..c1): the
    converter must not reorder its fuse kernel as it does for SegFormer heads."""
    cfg = our_config("conv", "none")
    torch_model = official_model(cfg, seed=1)
    model, _ = converted(cfg, torch_model)
    feats, text = random_inputs(2)
    want_decode, _ = torch_heads(torch_model, feats, text, train=False)
    assert rel_err(decode_logits(model, feats, train=False), want_decode) <= TOL


def test_conv_fusion_daformer_head_math_matches_official():
    """The same head with the fuse kernel loaded in the official (c1..c4) block order: the
    head computes what the official one does; only the converter's reordering differs."""
    cfg = our_config("conv", "none")
    torch_model = official_model(cfg, seed=1)
    model, _ = converted(cfg, torch_model)
    weight = torch_model.model.decode_head.fuse_layer.conv.weight.detach().numpy()
    model.decode_head.fuse_layer.conv.kernel[...] = jnp.asarray(weight.transpose(2, 3, 1, 0))
    feats, text = random_inputs(2)
    want_decode, _ = torch_heads(torch_model, feats, text, train=False)
    assert rel_err(decode_logits(model, feats, train=False), want_decode) <= TOL


def test_heads_train_mode_match_official_and_update_running_stats():
    """Batch statistics in the forward; every BN's running mean and (unbiased) variance after
    one step with momentum 0.1; then eval mode with the updated statistics."""
    cfg = our_config()
    torch_model = official_model(cfg, seed=3)
    model, _ = converted(cfg, torch_model)
    feats, text = random_inputs(4)
    bns = [
        (n, m) for n, m in torch_model.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert len(bns) == 2 * (1 + 2 * 3 + 1)  # per head: 1x1 branch, 3 separable, bottleneck
    before = {n: (m.running_mean.numpy().copy(), m.running_var.numpy().copy()) for n, m in bns}
    want_decode, want_vlc = torch_heads(torch_model, feats, text, train=True)
    decode = decode_logits(model, feats, train=True)
    vlc = vlc_logits(model, feats, text, train=True)
    assert rel_err(decode, want_decode) <= TOL
    assert rel_err(vlc, want_vlc) <= TOL

    for name, bn in bns:
        ours = module_at(model, name)
        mean, var = bn.running_mean.numpy(), bn.running_var.numpy()
        assert rel_err(ours.mean[...], mean) <= TOL, name
        assert rel_err(ours.var[...], var) <= TOL, name
        # The update itself (momentum x batch statistic, unbiased variance), compared on its
        # own so that it is not hidden behind the shared 0.9 x old part.
        old_mean, old_var = before[name]
        assert rel_err(ours.mean[...] - old_mean, mean - old_mean) <= TOL, name
        assert rel_err(ours.var[...] - old_var, var - old_var) <= TOL, name

    feats2, _ = random_inputs(5)
    want_decode, want_vlc = torch_heads(torch_model, feats2, text, train=False)
    assert rel_err(decode_logits(model, feats2, train=False), want_decode) <= TOL
    assert rel_err(vlc_logits(model, feats2, text, train=False), want_vlc) <= TOL


@pytest.mark.parametrize(
    "spatial_block,tau", [("bottleneck", 0.07), ("bottleneck", 0.5), ("depthwise", 0.07)]
)
def test_text_correlation_matches_vision_language_connect(spatial_block, tau):
    """Text projection, L2 norms of pixels and text, the 1/tau scale and the spatial block
    applied block_depth times: our `correlate` against `LCMSMHead.vision_language_connect`."""
    cfg = our_config(spatial_block=spatial_block, tau=tau)
    torch_model = official_model(cfg, seed=6)
    model, _ = converted(cfg, torch_model)
    rng = np.random.default_rng(7)
    fused = (1.0 + rng.standard_normal((2, 24, 28, VLC_CHANNELS))).astype(np.float32)
    _, text = random_inputs(8)
    with torch.no_grad():
        text_features = torch_model.project_text(torch.from_numpy(text))
        want = to_nhwc(
            torch_model.model.vlc_head.vision_language_connect(to_nchw(fused), text_features)
        )
    ours_text, maps = correlate(model, fused, text)
    assert rel_err(ours_text, text_features.numpy()) <= TOL
    assert rel_err(maps, want[..., VLC_CHANNELS:]) <= TOL
    np.testing.assert_array_equal(fused, want[..., :VLC_CHANNELS])
    # The logits depend on the text: other class vectors give other logits on both sides.
    feats, _ = random_inputs(9)
    _, other_text = random_inputs(10)
    out = {}
    for key, t in (("a", text), ("b", other_text)):
        _, want_vlc = torch_heads(torch_model, feats, t, train=False)
        ours = vlc_logits(model, feats, t, train=False)
        assert rel_err(ours, want_vlc) <= TOL
        out[key] = np.asarray(ours)
    assert np.max(np.abs(out["a"] - out["b"])) > 1e-2


def test_dropout2d_sits_before_the_classifier():
    """With one Dropout2d channel mask shared by both sides (ours drawn by the library), the
    logits agree: the mask acts on conv_seg's input ([features, maps] for LC-MSM)."""
    cfg = our_config()
    torch_model = official_model(cfg, seed=11)
    model, _ = converted(cfg, torch_model)
    feats, text = random_inputs(12)
    rate = cfg.decode_head.dropout
    assert rate > 0

    class FixedChannelMask(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    for name, width in (
        ("decode_head", DECODE_CHANNELS),
        ("vlc_head", VLC_CHANNELS + NUM_CLASSES),
    ):
        key = jax.random.key(13)
        # layers.channel_dropout on ones gives the scaled per-sample, per-channel mask.
        scale = layers.channel_dropout(jnp.ones((2, 1, 1, width)), rate, key)
        assert 0 < int(jnp.sum(scale == 0)) < scale.size
        head = getattr(torch_model.model, name)
        original, head.dropout = head.dropout, FixedChannelMask(to_nchw(scale))
        try:
            want = torch_heads(torch_model, feats, text, train=False)
        finally:
            head.dropout = original
        if name == "decode_head":
            ours = decode_logits(model, feats, train=False, rng=key)
            want = want[0]
        else:
            ours = vlc_logits(model, feats, text, train=False, rng=key)
            want = want[1]
        assert rel_err(ours, want) <= TOL, name


def test_segmentor_call_heads_match_official():
    """`Segmentor.__call__(images, text_embeddings, heads=("decode", "lcmsm"))` in eval and
    train mode: the official heads on our backbone's features, with the official
    text_embed_net on the raw text."""
    cfg = our_config()
    torch_model = official_model(cfg, seed=14)
    model, _ = converted(cfg, torch_model)
    rng = np.random.default_rng(15)
    images = rng.standard_normal((2, 96, 112, 3)).astype(np.float32)
    _, text = random_inputs(16)
    outs = segmentor_eval_and_train(model, images, text)
    for train, out in zip((False, True), outs, strict=True):
        feats = [np.asarray(f) for f in out["features"]]
        assert [f.shape[1:3] for f in feats] == list(FEATURE_SIZES)
        want_decode, want_vlc = torch_heads(torch_model, feats, text, train=train)
        assert rel_err(out["decode"], want_decode) <= TOL, train
        assert rel_err(out["lcmsm"], want_vlc) <= TOL, train
