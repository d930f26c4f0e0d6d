"""The ladder's methods, tables and chart, and a CI-sized run of the demo with its comparison."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcmsm_jax import demo, ladder, methods, visualize

CONFIGS = Path(__file__).parents[1] / "configs"
sys.path.insert(0, str(CONFIGS))

from demo import get_config as demo_config  # noqa: E402


def test_methods_switch_only_their_terms_and_leave_the_config_alone():
    config = demo_config()
    before = config.to_json()
    source_only = methods.with_method(config, "source_only")
    assert not source_only.uda.enabled and not source_only.data.source.rcs
    assert source_only.uda.pseudo_label_head == "decode"
    dacs = methods.with_method(config, "dacs")
    assert dacs.uda.enabled and not dacs.uda.masked_source and not dacs.uda.masked_mix
    assert not dacs.data.source.rcs
    daformer = methods.with_method(config, "daformer")
    assert daformer.data.source.rcs and not daformer.uda.masked_target
    mic = methods.with_method(config, "mic")
    assert mic.uda.masked_target and mic.uda.mask_ratio == 0.7 and not mic.uda.masked_mix
    lcmsm = methods.with_method(config, "lcmsm")
    assert lcmsm.to_json() == before
    oracle = methods.with_method(config, "oracle")
    assert oracle.uda.target_supervised and oracle.uda.masked_mix
    # Everything outside the method's overrides is shared by all rungs.
    for name in methods.METHODS:
        other = methods.with_method(config, name)
        assert other.model.to_json() == config.model.to_json()
        assert other.optim.to_json() == config.optim.to_json()
        assert other.train.steps == config.train.steps
    assert config.to_json() == before
    with pytest.raises(KeyError, match="unknown method 'fda'.*source_only"):
        methods.with_method(config, "fda")


def test_lcmsm_hrda_lays_the_multires_overlay_over_lcmsm():
    import demo_hr

    config = demo_hr.get_config()
    before = config.to_json()
    hrda = methods.with_method(config, "lcmsm_hrda")
    assert config.to_json() == before and not config.model.hrda.enabled
    assert hrda.model.hrda.enabled and tuple(hrda.model.hrda.detail_size) == (256, 256)
    # Every value of the overlay replaces the config's, everything else is LC-MSM's.
    assert tuple(hrda.data.crop_size) == (512, 512) and hrda.uda.mask_block_size == 32
    assert tuple(hrda.data.eval.scale) == (1024, 512) and hrda.eval.mode == "slide"
    assert hrda.data.source.rcs_min_crop_ratio == 2.0
    assert hrda.data.source.rcs_min_pixels == config.data.source.rcs_min_pixels
    assert hrda.uda.to_json() == config.uda.to_json().replace(
        '"mask_block_size": 16', '"mask_block_size": 32'
    )
    assert hrda.optim.to_json() == config.optim.to_json() and hrda.seed == config.seed
    assert demo_hr.get_config("lcmsm_hrda").to_json() == hrda.to_json()
    # The same images and labels: only their resize and the crops differ.
    assert hrda.data.synthetic.to_json() == config.data.synthetic.to_json()
    with pytest.raises(KeyError, match="needs config.multires"):
        methods.with_method(demo_config(), "lcmsm_hrda")
    config.multires.uda.mask_size = 3
    with pytest.raises(KeyError, match="config.multires.uda.mask_size: the config has no"):
        methods.with_method(config, "lcmsm_hrda")


def test_summary_means_and_gap_closure_by_hand():
    miou = {
        "source_only": {0: 10.0, 1: 20.0},
        "lcmsm": {0: 25.0, 1: 32.0},
        "oracle": {0: 30.0, 1: 40.0},
    }
    summary = ladder.summarize(miou)
    assert summary["seeds"] == [0, 1]
    lc = summary["methods"]["lcmsm"]
    assert lc["mean"] == pytest.approx(28.5)
    assert lc["std"] == pytest.approx(np.std([25.0, 32.0], ddof=1))
    # (28.5 - 15) / (35 - 15); per seed (25 - 10) / 20 and (32 - 20) / 20.
    assert lc["gap_closure"] == pytest.approx(0.675)
    assert lc["gap_closure_per_seed"] == pytest.approx({"0": 0.75, "1": 0.6})
    assert summary["methods"]["source_only"]["gap_closure"] == 0.0
    assert summary["methods"]["oracle"]["gap_closure"] == 1.0
    table = ladder.markdown(summary)
    assert "| LC-MSM | 28.5 ± 4.9 | 25.0 | 32.0 | 68% |" in table
    assert table.splitlines()[0].startswith("| method | target mIoU")
    # Without an oracle there is no gap to close.
    partial = ladder.summarize({"source_only": {0: 10.0}, "lcmsm": {0: 12.0}})
    assert partial["methods"]["lcmsm"]["gap_closure"] is None
    assert "n/a" in ladder.markdown(partial)


def test_bar_chart_draws_one_bar_per_method():
    summary = ladder.summarize({"source_only": {0: 10.0}, "dacs": {0: 20.0}, "oracle": {0: 40.0}})
    chart = ladder.bar_chart(summary, "t")
    assert chart.dtype == np.uint8 and chart.ndim == 3 and chart.shape[2] == 3
    # Bar heights follow the values: more coloured pixels in a taller bar's column.
    columns = (np.abs(chart.astype(int) - 255).sum(-1) > 0).sum(0)
    bar_x = [50 + 30 + i * 120 + 45 for i in range(3)]
    assert columns[bar_x[0]] < columns[bar_x[1]] < columns[bar_x[2]]


def test_seeds_and_ladder_command_line_errors(capsys, tmp_path):
    assert ladder.seeds_from("0, 1,2") == (0, 1, 2)
    with pytest.raises(ValueError, match="comma-separated integers"):
        ladder.seeds_from("0;1")
    argv = ["--config", str(CONFIGS / "demo.py"), "--out", "x", "--methods", "dacs,fda"]
    assert ladder.main(argv) == 2
    assert "unknown ['fda']" in capsys.readouterr().out
    # Refused before the first cell trains, naming what is missing.
    argv = ["--config", str(CONFIGS / "demo.py"), "--out", str(tmp_path / "hr"), "--methods",
            "lcmsm,lcmsm_hrda"]  # fmt: skip
    assert ladder.main(argv) == 2
    assert "needs config.multires" in capsys.readouterr().out
    assert not (tmp_path / "hr").exists()


# The demo's own settings, shrunk to CI size: 30 steps, smaller scenes and crops.
DEMO_CI = [
    "--config.train.steps=30",
    "--config.train.log_every=10",
    "--config.data.synthetic.size=(64,128)",
    "--config.data.synthetic.num_images=32",
    "--config.data.source.scale=(128,64)",
    "--config.data.target.scale=(128,64)",
    "--config.data.eval.scale=(128,64)",
    "--config.data.crop_size=(64,64)",
    "--config.data.source.rcs_min_pixels=5",
    "--config.data.eval.max_images=8",
    "--config.optim.warmup_steps=5",
    "--config.mesh.data=2",
]


@pytest.mark.slow
def test_demo_ci_sized_writes_the_table_json_and_pictures(tmp_path, capsys):
    workdir = tmp_path / "demo"
    argv = ["--config", str(CONFIGS / "demo.py"), "--workdir", str(workdir), *DEMO_CI]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out

    summary = json.loads((workdir / "comparison.json").read_text())
    assert list(summary["methods"]) == ["source_only", "lcmsm"]
    adapted = json.loads((workdir / "eval_30.json").read_text())["mIoU"]
    baseline_dir = workdir / "baselines" / "source_only"
    baseline = json.loads((baseline_dir / "eval_30.json").read_text())["mIoU"]
    assert summary["methods"]["lcmsm"]["per_seed"] == {"0": pytest.approx(adapted)}
    assert summary["methods"]["source_only"]["per_seed"] == {"0": pytest.approx(baseline)}
    assert summary["step"] == 30
    # The baseline really is source-only: its metrics hold the source loss and nothing else.
    records = [json.loads(r) for r in (baseline_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "train/loss/total" in r][-1]
    assert {k for k in last if k.startswith("train/loss/")} == {
        "train/loss/source",
        "train/loss/total",
    }

    table = (workdir / "comparison.md").read_text()
    assert table in out  # printed as well as written
    assert f"| Source-only | {baseline:.1f} ± 0.0 | {baseline:.1f} |" in table
    assert f"| LC-MSM | {adapted:.1f} ± 0.0 | {adapted:.1f} |" in table

    pictures = sorted((workdir / "predictions").glob("prediction_*.png"))
    assert len(pictures) == 4
    with Image.open(pictures[0]) as picture:
        # image | ground truth | source-only | LC-MSM, each 128 wide, a one-line caption
        # above 64 rows, and the colour legend below.
        legend = visualize.legend_image(4 * 128)
        assert picture.size == (4 * 128, 64 + 14 + legend.shape[0])
        np.testing.assert_array_equal(np.asarray(picture)[64 + 14 :], legend)

    # Running the command again trains nothing new and rewrites the same table.
    assert demo.main(argv) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert json.loads((workdir / "comparison.json").read_text()) == summary
