"""`torch_export` (and `lcmsm-convert --export`): our parameters out to the official PyTorch
layouts. References: the converter reading them back (bit for bit), the transcriptions of
the official heads (`official_heads.py`) and of HRDA's head wrapper (`hrda_reference.py`)
loading them with `strict=True` and computing the same logits.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="needs the test extra (torch)")

from lcmsm_jax import convert, models, torch_export  # noqa: E402
from lcmsm_jax.models import hrda  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import hrda_reference as ref  # noqa: E402
import test_heads_official as heads_test  # noqa: E402
from test_convert import CONFIG_FILE, TINY_OVERRIDES, tiny_config  # noqa: E402

pytestmark = pytest.mark.torch


def numpy_model(cfg, seed: int, *, multires: bool = False) -> nnx.Module:
    """The model of `cfg` filled with numpy draws (no compiled initialisers): every value
    distinct, BatchNorm variances positive."""
    if multires:
        build = lambda: hrda.MultiResSegmentor(cfg, rngs=nnx.Rngs(0), detail_size=(32, 32),  # noqa: E731
                                               attention_embed_dim=8)  # fmt: skip
    else:
        build = lambda: models.Segmentor(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    flat = []
    for path, variable in nnx.to_flat_state(state):
        value = rng.standard_normal(variable.get_value().shape).astype(np.float32)
        if path[-1] == "var":
            value = 0.5 + np.abs(value)
        flat.append((path, variable.replace(jnp.asarray(value))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def assert_same_arrays(a: nnx.Module, b: nnx.Module) -> None:
    mine, theirs = models.per_block_arrays(a), models.per_block_arrays(b)
    assert mine.keys() == theirs.keys()
    for path, value in mine.items():
        np.testing.assert_array_equal(value, theirs[path], err_msg=str(path))


# MiT-B0 (the narrow one), B1 (B2-B5's widths, depth 2) and B5 (the deepest): the names
# and layouts depend on the widths and the depth only, which these cover.
@pytest.mark.parametrize("backbone", ["mit_b0", "mit_b1", "mit_b5"])
def test_export_then_import_is_the_identity(backbone):
    cfg = tiny_config()
    cfg.backbone = backbone
    source = numpy_model(cfg, seed=1)
    state_dict = torch_export.to_torch_state_dict(source)
    assert f"backbone.block3.{models.MIT_VARIANTS[backbone].depths[2] - 1}.attn.q.weight" in (
        state_dict
    )
    graphdef, state = nnx.split(source)
    target = nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, state))
    report = convert.load_torch_state_dict(target, state_dict, strict=True)
    assert report.unmatched == [] and report.missing == []
    assert_same_arrays(target, source)


def test_multires_export_is_hrdas_layout_and_round_trips():
    cfg = tiny_config()
    source = numpy_model(cfg, seed=3, multires=True)
    state_dict = torch_export.to_torch_state_dict(source)
    heads = {k.split(".")[0] + "." + k.split(".")[1] for k in state_dict if "_head." in k}
    assert heads == {"decode_head.head", "decode_head.scale_attention", "vlc_head.head",
                     "vlc_head.scale_attention"}  # fmt: skip
    target = numpy_model(cfg, seed=4, multires=True)
    convert.load_torch_state_dict(target, state_dict, strict=True)
    assert_same_arrays(target, source)


def test_exported_heads_load_strictly_into_the_official_heads_with_equal_logits():
    """Ours -> export -> the official DACSTigDA modules (strict for every head tensor) ->
    eval-mode logits of both heads equal ours."""
    cfg = heads_test.our_config()
    ours = heads_test.build_segmentor(cfg, seed=7)
    exported = torch_export.to_torch_state_dict(ours)
    official = heads_test.official_model(cfg, seed=8)  # other values, overwritten below
    wanted = official.state_dict()
    given = {("" if k.startswith("text_embed_net.") else "model.") + k: torch.tensor(v)
             for k, v in exported.items() if not k.startswith("backbone.")}  # fmt: skip
    assert set(given) == set(wanted)
    official.load_state_dict(given, strict=True)
    feats, text = heads_test.random_inputs(seed=9)
    decode, vlc = heads_test.torch_heads(official, feats, text, train=False)
    jfeats = [jnp.asarray(f) for f in feats]
    assert heads_test.rel_err(heads_test.decode_logits(ours, jfeats, train=False), decode) <= 1e-5
    assert heads_test.rel_err(heads_test.vlc_logits(ours, jfeats, text, train=False), vlc) <= 1e-5


def test_exported_multires_heads_load_strictly_into_hrdas_head_wrapper():
    """The HRDA layout is upstream's module tree: `HRDAHead(head, scale_attention)` per head
    accepts the exported tensors with strict=True, and holds our values."""
    import test_hrda

    cfg = test_hrda.model_config()
    ours = test_hrda.build_model(cfg, seed=5)
    modules, _ = test_hrda.torch_modules(cfg, seed=6)
    segmentor = torch.nn.Module()
    segmentor.decode_head = ref.HRDAHead(
        modules["decode_head"], modules["attention_head.decode"], test_hrda.NUM_CLASSES
    )
    segmentor.vlc_head = ref.HRDAHead(
        modules["vlc_head"], modules["attention_head.lcmsm"], test_hrda.NUM_CLASSES
    )
    exported = torch_export.to_torch_state_dict(ours)
    heads = {k: torch.tensor(v) for k, v in exported.items()
             if k.startswith(("decode_head.", "vlc_head."))}  # fmt: skip
    segmentor.load_state_dict(heads, strict=True)
    back = test_hrda.build_model(cfg, seed=11)
    convert.load_torch_state_dict(
        back, {k: v.numpy() for k, v in segmentor.state_dict().items()} | exported, strict=True
    )
    assert_same_arrays(back, ours)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_command_writes_a_run_for_pytorch(tmp_path, capsys, suffix):
    """`lcmsm-convert --export` on a run directory (here: a converted checkpoint) writes the
    weights and the evaluation settings; reading the file back gives the same tensors."""
    cfg = tiny_config()
    source = numpy_model(cfg, seed=12)
    pth = tmp_path / "source.npz"
    np.savez(pth, **torch_export.to_torch_state_dict(source))
    flags = ["--config", str(CONFIG_FILE), *TINY_OVERRIDES]
    assert convert.main([*flags, "--torch-checkpoint", str(pth), "--workdir",
                         str(tmp_path / "run"), "--strict"]) == 0  # fmt: skip
    out = tmp_path / f"exported{suffix}"
    assert convert.main([*flags, "--workdir", str(tmp_path / "run"), "--export", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    back = convert.read_state_dict(out)
    expected = torch_export.to_torch_state_dict(source)
    assert back.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    settings = json.loads(out.with_suffix(suffix + ".json").read_text())
    assert settings["num_classes"] == 19 and settings["test_cfg"]["mode"] == "slide"
    assert settings["backbone"] == cfg.backbone and settings["weights"] == "student"
    # Never overwritten, refused before reading anything.
    with pytest.raises(FileExistsError, match="already exists"):
        convert.main([*flags, "--workdir", str(tmp_path / "run"), "--export", str(out)])
