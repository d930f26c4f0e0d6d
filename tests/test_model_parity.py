"""Parity of our models + converter with PyTorch references: transformers' SegFormer
(`torch_reference.py` renames its MiT weights to NVlabs names) and, for UDA checkpoints, the
transcribed official LC-MSM heads (`official_heads.py`)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="parity tests need the test extra (torch)")
pytest.importorskip("transformers", reason="parity tests need the test extra (transformers)")

from transformers import SegformerForSemanticSegmentation, SegformerModel  # noqa: E402

from lcmsm_jax import convert, models  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402
import official_heads as official  # noqa: E402
import torch_reference as ref  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-5


def rel_err(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def nchw_to_nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def tiny_model_config(fusion="conv", embed=64):
    cfg = base.model_config()
    cfg.backbone = "mit_b0"
    cfg.drop_path_rate = 0.0
    cfg.decode_head.fusion = fusion
    cfg.decode_head.embed_dim = embed
    cfg.decode_head.channels = embed
    cfg.lcmsm_head.embed_dim = 16
    cfg.lcmsm_head.channels = 16
    cfg.text_dim = 24
    return cfg


@pytest.fixture(scope="module")
def hf_segformer():
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(ref.segformer_config()).eval()
    ref.match_nvlabs_epsilons_(model)
    ref.randomize_(model, torch.Generator().manual_seed(1))
    return model


@pytest.fixture(scope="module")
def converted_segformer(hf_segformer):
    model = models.Segmentor(tiny_model_config(), rngs=nnx.Rngs(0))
    state = {k: v.numpy() for k, v in hf_segformer.state_dict().items()}
    report = convert.load_torch_state_dict(model, state)
    return model, report


def test_hf_segformer_conversion_covers_everything(converted_segformer):
    _, report = converted_segformer
    assert report.unmatched == []
    # Only the LC-MSM head and text projection are absent from a SegFormer checkpoint.
    assert report.missing and all(
        m.startswith(("vlc_head.", "text_embed_net.")) for m in report.missing
    )
    assert {r for _, r in report.skipped} == {
        "BatchNorm step counter (not used by inference or training)"
    }


@pytest.mark.parametrize("height,width", [(64, 64), (64, 96), (72, 104)])
def test_features_and_logits_match_transformers(hf_segformer, converted_segformer, height, width):
    model, _ = converted_segformer
    rng = np.random.default_rng(height * width)
    images = rng.standard_normal((2, height, width, 3)).astype(np.float32)
    with torch.no_grad():
        out = hf_segformer(
            torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True
        )
    ours = jax.jit(lambda x: model(x, heads=("decode",)))(images)
    assert len(out.hidden_states) == 4
    for level, (a, b) in enumerate(zip(ours["features"], out.hidden_states, strict=True)):
        assert a.shape == nchw_to_nhwc(b).shape, level
        assert rel_err(a, nchw_to_nhwc(b)) <= TOL, f"level {level}"
    assert rel_err(ours["decode"], nchw_to_nhwc(out.logits)) <= TOL


def test_nvlabs_mit_checkpoint_names(hf_segformer):
    """An `mit_b0.pth`-style state_dict (NVlabs names + ImageNet classifier `head.*`)."""
    backbone_state = {
        k: v for k, v in hf_segformer.state_dict().items() if k.startswith("segformer.")
    }
    nvlabs = {k: v.numpy() for k, v in ref.hf_to_nvlabs_names(backbone_state).items()}
    nvlabs["head.weight"] = np.zeros((1000, 256), np.float32)
    nvlabs["head.bias"] = np.zeros((1000,), np.float32)
    model = models.Segmentor(tiny_model_config(), rngs=nnx.Rngs(3))
    report = convert.load_torch_state_dict(model, nvlabs)
    assert report.unmatched == []
    assert ("backbone.head.weight", "ImageNet classifier of the MiT checkpoint") in report.skipped
    assert not any(m.startswith("backbone.") for m in report.missing)
    images = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        hidden = hf_segformer.segformer(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                        output_hidden_states=True).hidden_states  # fmt: skip
    ours = model.backbone(jnp.asarray(images))
    for a, b in zip(ours, hidden, strict=True):
        assert rel_err(a, nchw_to_nhwc(b)) <= TOL


def test_transformers_4_names(hf_segformer):
    """The older transformers naming (`encoder.block.*`, `attention.self.query`, ...)."""
    renames = [
        ("segformer.stages.{s}.patch_embeddings.", "segformer.encoder.patch_embeddings.{s}."),
        ("segformer.stages.{s}.blocks.", "segformer.encoder.block.{s}."),
        ("segformer.stages.{s}.layer_norm.", "segformer.encoder.layer_norm.{s}."),
    ]
    inner = [
        ("layernorm_before", "layer_norm_1"), ("layernorm_after", "layer_norm_2"),
        ("attention.q_proj", "attention.self.query"), ("attention.k_proj", "attention.self.key"),
        ("attention.v_proj", "attention.self.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
        ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
        ("mlp.fc1", "mlp.dense1"), ("mlp.fc2", "mlp.dense2"),
        ("decode_head.linear_projections", "decode_head.linear_c"),
    ]  # fmt: skip
    old = {}
    for name, value in hf_segformer.state_dict().items():
        for s in range(4):
            for a, b in renames:
                name = name.replace(a.format(s=s), b.format(s=s))
        for a, b in inner:
            name = name.replace(a, b)
        old[name] = value.numpy()
    model = models.Segmentor(tiny_model_config(), rngs=nnx.Rngs(4))
    report = convert.load_torch_state_dict(model, old)
    assert report.unmatched == []
    images = np.random.default_rng(5).standard_normal((1, 64, 96, 3)).astype(np.float32)
    with torch.no_grad():
        logits = hf_segformer(torch.from_numpy(images.transpose(0, 3, 1, 2))).logits
    assert rel_err(model(images, heads=("decode",))["decode"], nchw_to_nhwc(logits)) <= TOL


# ----------------------------------------------------------------------------- full segmentor

IN_CHANNELS = (32, 64, 160, 256)


def lcmsm_model_config():
    cfg = tiny_model_config(fusion="sep_aspp", embed=32)
    cfg.lcmsm_head.embed_dim = 32
    cfg.lcmsm_head.channels = 32
    return cfg


def make_torch_copy(seed):
    """HF MiT-B0 backbone + the official heads (`TigDAEncoderDecoder`: `decode_head` and
    `vlc_head`, separable ASPP fusion, widths 32)."""
    torch.manual_seed(seed)
    backbone = SegformerModel(ref.segformer_config())
    ref.match_nvlabs_epsilons_(backbone)
    segmentor = official.TigDAEncoderDecoder(
        **official.lc_msm_model_cfg(
            IN_CHANNELS, 19, decode_embed=32, decode_channels=32, vlc_embed=32, vlc_channels=32
        )
    )
    gen = torch.Generator().manual_seed(seed + 100)
    for module in (backbone, segmentor):
        ref.randomize_(module, gen)
    return backbone.eval(), segmentor.eval()


def uda_state_dict(student, teacher, text_embed_net):
    """The layout of an official `DACSTigDA` checkpoint: segmentors `model.*` (student) and
    `ema_model.*` (teacher), `text_embed_net.*`, the frozen `imnet_model.*`, all under the
    `module.` prefix of a distributed wrapper."""
    state = {}
    for prefix, (backbone, segmentor) in (("model.", student), ("ema_model.", teacher)):
        for k, v in ref.hf_to_nvlabs_names(backbone.state_dict()).items():
            state[f"{prefix}backbone.{k}"] = v.numpy()
        for k, v in segmentor.state_dict().items():  # decode_head.*, vlc_head.*
            state[f"{prefix}{k}"] = v.numpy()
    for k, v in text_embed_net.state_dict().items():
        state[f"text_embed_net.{k}"] = v.numpy()
    state["imnet_model.backbone.patch_embed1.proj.weight"] = np.zeros((32, 3, 7, 7), np.float32)
    return {f"module.{k}": v for k, v in state.items()}


def torch_forward(copy_, text_embed_net, images, text, train=False):
    backbone, segmentor = copy_
    segmentor.train(train)
    for head in (segmentor.decode_head, segmentor.vlc_head):
        head.dropout.p = 0.0
    x = torch.from_numpy(images.transpose(0, 3, 1, 2))
    with torch.no_grad():
        feats = backbone(x, output_hidden_states=True).hidden_states
        t = text_embed_net(torch.from_numpy(text))
        return (
            nchw_to_nhwc(segmentor._decode_head_forward_test(feats)),
            nchw_to_nhwc(segmentor._vlc_head_forward_test(feats, t)),
        )


STUDENT_SEED, TEACHER_SEED = 10, 20


@pytest.fixture(scope="module")
def uda_checkpoint():
    student, teacher = make_torch_copy(STUDENT_SEED), make_torch_copy(TEACHER_SEED)
    torch.manual_seed(30)
    # `DACSTigDA.text_embed_net`: raw text features (width 24) -> the LC-MSM head width.
    text_embed_net = torch.nn.Linear(24, 32)
    return student, teacher, text_embed_net, uda_state_dict(student, teacher, text_embed_net)


@pytest.mark.parametrize("weights", ["student", "teacher"])
def test_uda_checkpoint_student_and_teacher(uda_checkpoint, weights):
    student, teacher, text_embed_net, state = uda_checkpoint
    model = models.Segmentor(lcmsm_model_config(), rngs=nnx.Rngs(0))
    report = convert.load_torch_state_dict(model, state, weights=weights, strict=True)
    assert report.missing == [] and report.unmatched == []
    reasons = {r for _, r in report.skipped}
    assert any(r.startswith("teacher" if weights == "student" else "student") for r in reasons)
    assert "frozen ImageNet model copy (rebuilt from the backbone)" in reasons
    rng = np.random.default_rng(7)
    images = rng.standard_normal((2, 64, 96, 3)).astype(np.float32)
    text = rng.standard_normal((19, 24)).astype(np.float32)
    want_decode, want_lcmsm = torch_forward(
        student if weights == "student" else teacher, text_embed_net, images, text
    )
    out = jax.jit(lambda x, t: model(x, t))(images, text)
    assert rel_err(out["decode"], want_decode) <= TOL
    assert rel_err(out["lcmsm"], want_lcmsm) <= TOL


def test_train_mode_batchnorm_matches_torch(uda_checkpoint):
    """Batch statistics in the forward and torch's running-stat update (unbiased variance)."""
    _, _, text_embed_net, state = uda_checkpoint
    model = models.Segmentor(lcmsm_model_config(), rngs=nnx.Rngs(0))
    convert.load_torch_state_dict(model, state)
    rng = np.random.default_rng(8)
    images = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    text = rng.standard_normal((19, 24)).astype(np.float32)
    # A fresh student (train mode updates its BN running statistics in place). Rebuilt, not
    # deep-copied: the LC-MSM head's `logit_scale` is a graph output, which deepcopy refuses.
    torch_copy = make_torch_copy(STUDENT_SEED)
    want_decode, want_lcmsm = torch_forward(torch_copy, text_embed_net, images, text, train=True)
    out = model(images, text, train=True)
    assert rel_err(out["decode"], want_decode) <= 1e-4
    assert rel_err(out["lcmsm"], want_lcmsm) <= 1e-4
    bn = torch_copy[1].decode_head.fuse_layer.aspp_modules[2].depthwise_conv.bn
    ours = model.decode_head.fuse_layer.aspp_modules[2].depthwise_conv.bn
    np.testing.assert_allclose(ours.mean[...], bn.running_mean.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.var[...], bn.running_var.numpy(), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- parameter counts

# Encoder parameter counts published with SegFormer (millions).
PUBLISHED_MIT_PARAMS_M = {
    "mit_b0": 3.4, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8, "mit_b5": 81.4,
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(PUBLISHED_MIT_PARAMS_M))
def test_mit_parameter_counts(variant):
    spec = models.MIT_VARIANTS[variant]
    cfg = ref.segformer_config(
        hidden_sizes=list(spec.embed_dims),
        depths=list(spec.depths),
        num_attention_heads=[1, 2, 5, 8],
    )
    with torch.device("meta"):
        theirs = sum(p.numel() for p in SegformerModel(cfg).parameters())
    abstract = nnx.eval_shape(lambda: models.MixVisionTransformer(variant, rngs=nnx.Rngs(0)))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert ours == theirs
    # The paper rounds to 0.1M; its B0 figure (3.4M) sits 0.08M above the exact 3.32M count.
    assert abs(ours / 1e6 - PUBLISHED_MIT_PARAMS_M[variant]) < 0.1
