"""`lcmsm-train` end to end on synthetic data: logs, pictures, checkpoints, exact resume."""

import json
from pathlib import Path

import numpy as np
import pytest

from lcmsm_jax import train

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
def test_train_resume_continues_exactly(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3",
              "--config.train.image_every=2", "--config.train.eval_every=4"]  # fmt: skip
    assert run(straight, 4, *common) == 0
    printed = capsys.readouterr().out
    assert "text embeddings random:0" in printed and "step 4/4" in printed and "img/s" in printed
    train_records = [r for r in records(straight) if "train/loss/total" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    for r in train_records:
        for term in ("source", "masked_source", "feature_distance", "mix", "masked_mix", "total"):
            assert np.isfinite(r[f"train/loss/{term}"])
        assert {"train/lr", "train/grad_norm", "train/pseudo_label_quality"} <= set(r)
    assert any("eval/mIoU" in r for r in records(straight))
    assert sorted(p.name for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"
    ]  # fmt: skip
    assert (straight / "images" / "step_0000002.png").is_file()
    assert list((straight / "tensorboard").iterdir())
    assert json.loads((straight / "config.json").read_text())["train"]["steps"] == 4

    # Stop after 2 of 4 steps, then resume: steps 3 and 4 must repeat the straight run.
    assert run(resumed, 4, *common, "--config.train.stop_at=2") == 0
    assert [r["step"] for r in records(resumed) if "train/loss/total" in r] == [1, 2]
    assert run(resumed, 4, *common) == 0
    assert "resumed from" in capsys.readouterr().out
    first = {r["step"]: r for r in train_records}
    again = {r["step"]: r for r in records(resumed) if "train/loss/total" in r}
    for step in (3, 4):
        for key, value in first[step].items():
            if key.startswith("train/"):
                np.testing.assert_allclose(again[step][key], value, rtol=1e-5, err_msg=key)


def test_unknown_override_is_an_error_naming_it(tmp_path, capsys):
    assert run(tmp_path, 1, "--config.uda.no_such_switch=1") == 2
    assert "no_such_switch" in capsys.readouterr().out
