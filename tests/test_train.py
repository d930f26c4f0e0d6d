"""`lcmsm-train` end to end on synthetic data: logs, pictures, checkpoints, exact resume."""

import json
from pathlib import Path

import numpy as np
import pytest

from lcmsm_jax import guards, train

CONFIG = str(Path(__file__).parents[1] / "configs" / "base.py")
TINY = [
    "--config.model.backbone=mit_b0",
    "--config.model.decode_head.embed_dim=16",
    "--config.model.decode_head.channels=16",
    "--config.model.lcmsm_head.embed_dim=16",
    "--config.model.lcmsm_head.channels=16",
    "--config.model.text_dim=12",
    "--config.text.embeddings=random:0",
    "--config.data.source.dataset=synthetic",
    "--config.data.target.dataset=synthetic",
    "--config.data.eval.dataset=synthetic",
    "--config.data.synthetic.size=(64,128)",
    "--config.data.synthetic.num_images=16",
    "--config.data.source.scale=(128,64)",
    "--config.data.target.scale=(128,64)",
    "--config.data.eval.scale=(128,64)",
    "--config.data.eval.max_images=2",
    "--config.data.crop_size=(64,64)",
    "--config.data.batch_size=2",
    "--config.data.source.rcs_min_pixels=5",
    "--config.uda.mask_block_size=16",
    "--config.optim.warmup_steps=2",
    "--config.eval.mode=whole",
    "--config.train.log_every=1",
    "--config.mesh.data=2",
]


def run(workdir, steps, *extra):
    argv = ["--config", CONFIG, "--workdir", str(workdir), *TINY, f"--config.train.steps={steps}"]
    return train.main(argv + list(extra))


def records(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_train_resume_continues_exactly(tmp_path, capsys, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # Every run compiles its step once: saving, logging, evaluating and restoring keep the
    # state's shardings and dtypes (a changed one would recompile the step silently).
    steps_jitted = []
    jit_train_step = train._jit_train_step
    monkeypatch.setattr(
        train,
        "_jit_train_step",
        lambda *a: steps_jitted.append(jit_train_step(*a)) or steps_jitted[-1],
    )
    common = ["--config.train.checkpoint_every=10", "--config.train.keep_checkpoints=3",
              "--config.train.image_every=10", "--config.train.eval_every=20"]  # fmt: skip
    assert run(straight, 20, *common) == 0
    printed = capsys.readouterr().out
    assert "text embeddings random:0" in printed and "step 20/20" in printed and "img/s" in printed
    train_records = [r for r in records(straight) if "train/loss/total" in r]
    assert [r["step"] for r in train_records] == list(range(1, 21))
    for r in train_records:
        for term in ("source", "masked_source", "feature_distance", "mix", "masked_mix", "total"):
            assert np.isfinite(r[f"train/loss/{term}"])
        assert {"train/lr", "train/grad_norm", "train/pseudo_label_quality"} <= set(r)
    assert any("eval/mIoU" in r for r in records(straight))
    steps_saved = sorted(
        int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert steps_saved == [10, 20]
    assert (straight / "images" / "step_0000010.png").is_file()
    assert list((straight / "tensorboard").iterdir())
    assert json.loads((straight / "config.json").read_text())["train"]["steps"] == 20
    assert (straight / "eval_20.json").is_file()

    # Stop after 10 of 20 steps, then resume: steps 11..20 must repeat the straight run.
    assert run(resumed, 20, *common, "--config.train.stop_at=10") == 0
    assert [r["step"] for r in records(resumed) if "train/loss/total" in r] == list(range(1, 11))
    assert run(resumed, 20, *common) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [step._cache_size() for step in steps_jitted] == [1, 1, 1]
    first = {r["step"]: r for r in train_records}
    again = {r["step"]: r for r in records(resumed) if "train/loss/total" in r}
    for step in range(11, 21):
        for key, value in first[step].items():
            if key.startswith("train/"):
                np.testing.assert_allclose(again[step][key], value, rtol=1e-5, err_msg=key)

    # lcmsm-eval restores the run's latest checkpoint and reproduces the in-training result.
    from lcmsm_jax import evaluate

    in_training = json.loads((straight / "eval_20.json").read_text())
    (straight / "eval_20.json").unlink()
    assert evaluate.main(["--config", CONFIG, "--workdir", str(straight), *TINY]) == 0
    again = json.loads((straight / "eval_20.json").read_text())
    assert again["mIoU"] == in_training["mIoU"]


def test_unknown_override_is_an_error_naming_it(tmp_path, capsys):
    assert run(tmp_path, 1, "--config.uda.no_such_switch=1") == 2
    assert "no_such_switch" in capsys.readouterr().out


def test_train_starts_from_a_converted_checkpoint(tmp_path, capsys):
    """config.train.init: an lcmsm-convert workdir (here written by checkpoint.save_model)."""
    from flax import nnx

    from lcmsm_jax import checkpoint, config_cli, models

    fv = config_cli.parse("t", ["--config", CONFIG, *TINY], lambda fv: None)
    source = models.Segmentor(fv.config.model, rngs=nnx.Rngs(123))
    checkpoint.save_model(tmp_path / "official" / "converted", source, metadata={})
    run_dir = tmp_path / "run"
    argv = ["--config.train.init=" + str(tmp_path / "official"), "--config.train.eval_every=-1"]
    assert run(run_dir, 1, *argv) == 0
    assert f"initial weights: weights from {tmp_path / 'official' / 'converted'}" in (
        capsys.readouterr().out
    )
    restored = models.Segmentor(fv.config.model, rngs=nnx.Rngs(0))
    assert checkpoint.restore_weights(run_dir, restored) == 1
    # One step at warmup lr (6e-11 x 10 at most) leaves the converted weights in place.
    np.testing.assert_allclose(
        restored.decode_head.conv_seg.kernel[...], source.decode_head.conv_seg.kernel[...],
        atol=1e-6,
    )  # fmt: skip


def test_non_finite_loss_stops_without_saving(tmp_path):
    class Manager:
        def latest_step(self):
            return 40

    with pytest.raises(train.NonFiniteLossError, match=r"step 41.*last good checkpoint is step 40"):
        guards.check_finite({"loss/total": float("nan"), "loss/source": 1.0}, 41, Manager())
    guards.check_finite({"loss/total": 1.0, "lr": float("nan")}, 41, Manager())
