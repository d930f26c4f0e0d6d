"""Converter bookkeeping, file formats, and the lcmsm-convert command."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from lcmsm_jax import checkpoint, convert, models

sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402

CONFIG_FILE = Path(__file__).parents[1] / "configs" / "base.py"
TINY_OVERRIDES = [
    "--config.model.backbone=mit_b0",
    "--config.model.decode_head.embed_dim=16",
    "--config.model.decode_head.channels=16",
    "--config.model.lcmsm_head.embed_dim=16",
    "--config.model.lcmsm_head.channels=16",
    "--config.model.text_dim=12",
]


def tiny_config():
    cfg = base.model_config()
    cfg.backbone = "mit_b0"
    for head in (cfg.decode_head, cfg.lcmsm_head):
        head.embed_dim = 16
        head.channels = 16
    cfg.text_dim = 12
    return cfg


def torch_style_state_dict(model: nnx.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """Our variables written back out under mmseg names and torch layouts."""
    out = {}
    for path, value in models.per_block_arrays(model).items():
        *module, leaf = [str(p) for p in path]
        name = ".".join(module)
        name = name.replace(".mlp.dwconv", ".mlp.dwconv.dwconv").replace(
            "vlc_head.spatial_block", "vlc_head.spatial_block.depthwise.depthwise"
        )
        kind = {"kernel": "weight", "scale": "weight", "bias": "bias",
                "mean": "running_mean", "var": "running_var"}[leaf]  # fmt: skip
        if value.ndim == 2:
            value = value.T
        elif value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        out[f"{prefix}{name}.{kind}"] = value
        if leaf == "mean":
            out[f"{prefix}{name}.num_batches_tracked"] = np.array(7)
    return out


@pytest.fixture(scope="module")
def source_model():
    return models.Segmentor(tiny_config(), rngs=nnx.Rngs(42))


def assert_same_variables(a: nnx.Module, b: nnx.Module):
    for (pa, va), (pb, vb) in zip(
        nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b)), strict=True
    ):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]), err_msg=str(pa))


def test_round_trip_through_official_names_fills_everything(source_model):
    state = torch_style_state_dict(source_model)
    target = models.Segmentor(tiny_config(), rngs=nnx.Rngs(0))
    report = convert.load_torch_state_dict(target, state, strict=True)
    assert report.missing == [] and report.unmatched == []
    n_counters = sum(k.endswith("num_batches_tracked") for k in state)
    assert len(report.loaded) + len(report.skipped) == len(state)
    assert len(report.skipped) == n_counters
    assert_same_variables(source_model, target)


def test_shape_mismatch_names_both_tensors(source_model):
    state = torch_style_state_dict(source_model)
    state["decode_head.conv_seg.weight"] = np.zeros((18, 16, 1, 1), np.float32)
    target = models.Segmentor(tiny_config(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as err:
        convert.load_torch_state_dict(target, state)
    message = str(err.value)
    assert "'decode_head.conv_seg.weight' (18, 16, 1, 1)" in message
    assert "'decode_head.conv_seg.kernel' expects (1, 1, 16, 19)" in message


def test_unmatched_and_missing_are_reported_and_strict_raises(source_model):
    state = torch_style_state_dict(source_model)
    del state["vlc_head.conv_seg.bias"]
    state["decode_head.extra_layer.weight"] = np.zeros((3,), np.float32)
    target = models.Segmentor(tiny_config(), rngs=nnx.Rngs(0))
    before = np.asarray(target.vlc_head.conv_seg.bias[...])
    report = convert.load_torch_state_dict(target, state)
    assert report.unmatched == ["decode_head.extra_layer.weight"]
    assert report.missing == ["vlc_head.conv_seg.bias"]
    np.testing.assert_array_equal(target.vlc_head.conv_seg.bias[...], before)
    assert "unmatched source tensor: decode_head.extra_layer.weight" in report.summary()
    with pytest.raises(ValueError, match="strict conversion failed"):
        convert.load_torch_state_dict(models.Segmentor(tiny_config(), rngs=nnx.Rngs(0)), state,
                                      strict=True)  # fmt: skip


def test_uda_prefixes_pick_student_or_teacher(source_model):
    teacher_model = models.Segmentor(tiny_config(), rngs=nnx.Rngs(7))
    student = torch_style_state_dict(source_model)
    teacher = torch_style_state_dict(teacher_model)
    text = {k: v for k, v in student.items() if k.startswith("text_embed_net.")}
    state = {f"module.model.{k}": v for k, v in student.items() if not k.startswith("text_")}
    state |= {f"module.ema_model.{k}": v for k, v in teacher.items() if not k.startswith("text_")}
    state |= {f"module.{k}": v for k, v in text.items()}
    for weights, want in (("student", source_model), ("teacher", teacher_model)):
        target = models.Segmentor(tiny_config(), rngs=nnx.Rngs(0))
        report = convert.load_torch_state_dict(target, state, weights=weights, strict=True)
        assert report.missing == []
        np.testing.assert_array_equal(
            target.decode_head.conv_seg.kernel[...], want.decode_head.conv_seg.kernel[...]
        )
        # The text projection has no EMA copy: both choices load the wrapper's one.
        np.testing.assert_array_equal(
            target.text_embed_net.kernel[...], source_model.text_embed_net.kernel[...]
        )
    with pytest.raises(ValueError, match="weights must be 'student' or 'teacher'"):
        convert.load_torch_state_dict(target, state, weights="ema")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
def test_file_formats(tmp_path, source_model, suffix):
    state = torch_style_state_dict(source_model)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".npz":
        np.savez(path, **state)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    else:
        torch = pytest.importorskip("torch")
        # mmcv-style wrapper {"state_dict": ..., "meta": ...}
        torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                    "meta": {"iter": 40000}}, path)  # fmt: skip
    read = convert.read_state_dict(path)
    assert set(read) == set(state)
    for k in state:
        np.testing.assert_array_equal(read[k], state[k])


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert.read_state_dict(tmp_path / "missing.pth")
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"weights.h5: unknown checkpoint type '.h5'"):
        convert.read_state_dict(bad)


def test_convert_command_writes_a_restorable_checkpoint(tmp_path, source_model, capsys):
    source = tmp_path / "official.npz"
    np.savez(source, **{f"model.{k}": v for k, v in torch_style_state_dict(source_model).items()})
    argv = ["--config", str(CONFIG_FILE), *TINY_OVERRIDES,
            "--torch-checkpoint", str(source), "--workdir", str(tmp_path / "run")]  # fmt: skip
    assert convert.main(argv) == 0
    printed = capsys.readouterr().out
    assert "unmatched 0; model variables not filled 0" in printed
    restored = models.Segmentor(tiny_config(), rngs=nnx.Rngs(0))
    metadata = checkpoint.restore_model(tmp_path / "run" / "converted", restored)
    assert_same_variables(source_model, restored)
    assert metadata["weights"] == "student"
    assert metadata["config"]["model"]["backbone"] == "mit_b0"
    assert metadata["report"]["missing"] == []
    json.dumps(metadata)
    # Never overwrites an existing conversion.
    with pytest.raises(FileExistsError, match="already exists"):
        convert.main(argv)


def test_convert_command_usage_errors(tmp_path, capsys):
    assert convert.main(["--config", str(CONFIG_FILE)]) == 2
    assert "--workdir is required" in capsys.readouterr().out
    assert convert.main(["--config", str(CONFIG_FILE), "--workdir", str(tmp_path)]) == 2
    assert "--torch-checkpoint is required (or --export" in capsys.readouterr().out
    argv = ["--config", str(CONFIG_FILE), "--config.model.no_such_field=1",
            "--torch-checkpoint", "x.npz", "--workdir", str(tmp_path)]  # fmt: skip
    assert convert.main(argv) == 2
    assert "no_such_field" in capsys.readouterr().out


def test_restore_into_a_different_model_names_the_checkpoint(tmp_path, source_model):
    checkpoint.save_model(tmp_path / "ckpt", source_model, metadata={})
    other = tiny_config()
    other.decode_head.channels = 8
    with pytest.raises(
        ValueError,
        match=r"does not fit this model.*decode_head.conv_seg.kernel has shape "
        r"\(1, 1, 16, 19\) there, the model expects \(1, 1, 8, 19\)",
    ):
        checkpoint.restore_model(tmp_path / "ckpt", models.Segmentor(other, rngs=nnx.Rngs(0)))
    jax.clear_caches()


def test_restore_of_per_block_mit_weights_says_the_layout_changed(tmp_path, source_model):
    """A checkpoint that stores MiT blocks one by one (`block1.0.*`, the layout before a
    stage's blocks were stored stacked) is refused with a line that says so."""
    import orbax.checkpoint as ocp

    params, batch_stats = nnx.state(source_model, nnx.Param, nnx.BatchStat)
    params = params.to_pure_dict()
    for stage in range(1, 5):
        stacked = params["backbone"][f"block{stage}"]
        depth = len(jax.tree.leaves(stacked)[0])
        params["backbone"][f"block{stage}"] = {
            str(i): jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(depth)
        }
    checkpoint._checkpointer().save(
        tmp_path / "old",
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            batch_stats=ocp.args.StandardSave(batch_stats.to_pure_dict()),
            metadata=ocp.args.JsonSave({}),
        ),
    )
    with pytest.raises(ValueError, match=r"stores MiT blocks one by one \(block3\.17\.\*\)"):
        checkpoint.restore_model(tmp_path / "old", models.Segmentor(tiny_config(),
                                                                    rngs=nnx.Rngs(0)))
