"""Methods side by side on one benchmark: train each, tabulate target mIoU, draw it.

The demo uses it to put the adapted model next to a source-only one (`compare`);
`tools/ladder.py` runs the whole ladder (`lcmsm_jax.methods`) over several seeds
(`run_method` per cell, then `summarize`, `markdown`, `bar_chart`). Every cell is an
ordinary `lcmsm-train` run directory, so an interrupted ladder resumes and a finished cell
is read back from its `eval_<steps>.json` instead of being trained again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from lcmsm_jax import atomic, methods, train, visualize
from lcmsm_jax.data import labels
from lcmsm_jax.progress import say

BASELINE, ORACLE = "source_only", "oracle"


def method_config(
    config: ml_collections.ConfigDict, method: str, seed: int
) -> ml_collections.ConfigDict:
    """`config` turned into `method` with `seed`; it trains no comparison runs of its own."""
    config = methods.with_method(config, method)
    config.seed = int(seed)
    config.train.compare_with = ()
    return config


def run_method(
    config: ml_collections.ConfigDict,
    method: str,
    seed: int,
    workdir: str | os.PathLike,
) -> dict:
    """Train `method` with `seed` in `workdir` (or read the finished run); final eval results."""
    config = method_config(config, method, seed)
    final = final_results_path(config, workdir)
    if final.is_file():
        say(f"{methods.LABELS[method]}, seed {seed}: finished earlier, reading {final}")
        return json.loads(final.read_text())
    say(f"{methods.LABELS[method]}, seed {seed}: training in {workdir}")
    results = train.train(config, workdir)["eval"]
    if not results:
        raise RuntimeError(
            f"{workdir}: training ended without a final evaluation "
            "(config.train.eval_every must be >= 0 and config.train.stop_at 0)"
        )
    return results


def final_results_path(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Where a run's final evaluation lands (`SplitEvaluator.run` at config.train.steps)."""
    from lcmsm_jax import evaluate

    tag = evaluate.results_tag(config.train.steps, config.eval.weights, config.eval.head)
    return Path(workdir) / f"eval_{tag}.json"


def summarize(miou: dict[str, dict[int, float]]) -> dict:
    """Per method: per-seed target mIoU, mean, std and gap closure.

    gap closure = (method - source_only) / (oracle - source_only), from the means (and per
    seed in "gap_closure_per_seed"); None without both ends of the gap.

    Args:
      miou: {method: {seed: mIoU}}, methods in table order.
    """
    out: dict = {"methods": {}, "seeds": sorted({s for row in miou.values() for s in row})}
    means = {m: float(np.mean(list(row.values()))) for m, row in miou.items()}
    has_gap = BASELINE in miou and ORACLE in miou
    for method, row in miou.items():
        values = np.array(list(row.values()), np.float64)
        entry = {
            "label": methods.LABELS.get(method, method),
            "per_seed": {str(s): float(v) for s, v in row.items()},
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "gap_closure": None,
            "gap_closure_per_seed": None,
        }
        if has_gap:
            entry["gap_closure"] = _closure(means[method], means[BASELINE], means[ORACLE])
            entry["gap_closure_per_seed"] = {
                str(s): _closure(v, miou[BASELINE].get(s), miou[ORACLE].get(s))
                for s, v in row.items()
            }
        out["methods"][method] = entry
    return out


def _closure(value: float, low: float | None, high: float | None) -> float | None:
    if low is None or high is None or math.isclose(high, low):
        return None
    return float((value - low) / (high - low))


def markdown(summary: dict) -> str:
    """The summary as a Markdown table: mean ± std, one column per seed, gap closure."""
    seeds = summary["seeds"]
    head = ["method", "target mIoU (mean ± std)", *[f"seed {s}" for s in seeds], "gap closure"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in summary["methods"].values():
        closure = entry["gap_closure"]
        cells = [
            entry["label"],
            f"{entry['mean']:.1f} ± {entry['std']:.1f}",
            *[_cell(entry["per_seed"].get(str(s))) for s in seeds],
            "n/a" if closure is None else f"{100 * closure:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def write_table(summary: dict, out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write `<name>.md` and `<name>.json` atomically; returns their paths."""
    md = atomic.write_text(Path(out_dir) / f"{name}.md", markdown(summary))
    return md, atomic.write_text(Path(out_dir) / f"{name}.json", json.dumps(summary, indent=2))


def bar_chart(summary: dict, title: str = "") -> np.ndarray:
    """Mean target mIoU per method as bars, each seed as a dot, the source-only and oracle
    means as dashed lines. Returns uint8 RGB [H, W, 3]."""
    entries = list(summary["methods"].values())
    top = max(max(e["per_seed"].values()) for e in entries)
    top = max(10.0, 10.0 * math.ceil(top / 10.0))
    bar_w, gap, left, bottom, plot_h = 90, 30, 50, 50, 300
    width = left + len(entries) * (bar_w + gap) + gap
    height = plot_h + bottom + 40
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y_of = lambda v: 30 + plot_h * (1 - v / top)  # noqa: E731
    draw.text((left, 8), title or "target mIoU (%)", fill="black")
    for tick in np.arange(0, top + 1e-6, 10.0):
        y = y_of(tick)
        draw.line((left - 4, y, width - 10, y), fill=(225, 225, 225))
        draw.text((8, y - 6), f"{tick:.0f}", fill="black")
    for method, colour in ((BASELINE, (150, 150, 150)), (ORACLE, (60, 60, 60))):
        if method in summary["methods"]:
            y = y_of(summary["methods"][method]["mean"])
            for x in range(left, width - 10, 12):
                draw.line((x, y, x + 6, y), fill=colour, width=1)
    palette = [(120, 144, 156), (66, 133, 244), (52, 168, 83), (251, 188, 5), (234, 67, 53),
               (90, 60, 130)]  # fmt: skip
    for i, entry in enumerate(entries):
        x0 = left + gap + i * (bar_w + gap)
        draw.rectangle((x0, y_of(entry["mean"]), x0 + bar_w, y_of(0)), fill=palette[i % 6])
        for value in entry["per_seed"].values():
            cx, cy = x0 + bar_w / 2, y_of(value)
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), outline="black", fill="white")
        draw.text((x0 + 4, y_of(entry["mean"]) - 14), f"{entry['mean']:.1f}", fill="black")
        draw.text((x0, y_of(0) + 6), entry["label"].split(" (")[0], fill="black")
        if entry["gap_closure"] is not None:
            draw.text((x0, y_of(0) + 20), f"gap {100 * entry['gap_closure']:.0f}%", fill="black")
    return np.asarray(canvas)


def prediction_pictures(
    config: ml_collections.ConfigDict,
    runs: dict[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    num_images: int = 4,
) -> list[Path]:
    """One PNG per evaluation image: image | ground truth | each run's prediction.

    Args:
      config: the experiment config (model, eval data, inference mode).
      runs: {caption: run directory}, each restored at its latest step (student weights,
        the evaluation head of config.eval.head).
    """
    from lcmsm_jax import evaluate, restore, sharding
    from lcmsm_jax.data import eval_source, pipeline

    source = eval_source.open_eval_source(config)
    count = min(num_images, len(source))
    # Exactly what evaluation feeds the network (keep-ratio resize, normalisation).
    prepare = pipeline.EvalExample(source, config.data.eval.scale, 0, 1)
    examples = [source[i] for i in range(count)]
    images = np.stack([prepare(i)["image"] for i in range(count)])
    mesh = sharding.make_mesh(1)  # a handful of images: one device, no padding needed
    predictions, evaluator = {}, None
    for caption, workdir in runs.items():
        run = restore.load_for_inference(config, workdir, weights="student")
        # The methods share the model, so one evaluator (one compilation) serves every run.
        evaluator = evaluator or evaluate.make_evaluator(config, run.graphdef, mesh)
        predictions[caption] = evaluator.predict(
            run.params, run.batch_stats, run.text_features, images, examples[0]["label"].shape
        )
    paths = []
    for i, example in enumerate(examples):
        tiles = [
            ("target image", example["image"]),
            ("ground truth", labels.colorize(example["label"])),
        ]
        tiles += [(caption, labels.colorize(pred[i])) for caption, pred in predictions.items()]
        path = Path(out_dir) / f"prediction_{i:02d}.png"
        visualize.save_png(path, visualize.tile_grid([tiles], legend=True))
        paths.append(path)
    return paths


def compare(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    adapted: dict | None = None,
) -> dict:
    """The demo's table: the run in `workdir` (the config's own method, final results
    `adapted`, read from its eval JSON when None) next to each of config.train.compare_with,
    trained with the same seed in `workdir/baselines/<method>`. Writes
    comparison.{md,json} and predictions/*.png."""
    workdir = Path(workdir)
    if adapted is None:
        path = final_results_path(config, workdir)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run has no final evaluation to compare")
        adapted = json.loads(path.read_text())
    miou = {"lcmsm": {config.seed: adapted["mIoU"]}}
    runs = {}
    for method in config.train.compare_with:
        run_dir = workdir / "baselines" / method
        results = run_method(config, method, config.seed, run_dir)
        miou[method] = {config.seed: results["mIoU"]}
        runs[methods.LABELS[method]] = run_dir
    runs[methods.LABELS["lcmsm"]] = workdir
    ordered = {m: miou[m] for m in [*config.train.compare_with, "lcmsm"]}
    summary = summarize(ordered)
    summary["step"] = int(config.train.steps)
    md, js = write_table(summary, workdir, "comparison")
    pictures = prediction_pictures(config, runs, workdir / "predictions")
    say("\n" + markdown(summary))
    say(f"wrote {md}, {js} and {len(pictures)} prediction pictures in {pictures[0].parent}")
    return summary


def seeds_from(text: str) -> Sequence[int]:
    """Comma-separated seeds -> a tuple: "0,1,2" -> (0, 1, 2)."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def run_ladder(
    config: ml_collections.ConfigDict,
    out_dir: str | os.PathLike,
    seeds: Sequence[int],
    method_names: Sequence[str] = tuple(methods.METHODS),
) -> dict:
    """Every method x seed in `out_dir/<method>/seed_<s>`; writes ladder.{md,json,png}."""
    out_dir = Path(out_dir)
    miou: dict[str, dict[int, float]] = {m: {} for m in method_names}
    cells = [(m, s) for s in seeds for m in method_names]
    for n, (method, seed) in enumerate(cells, 1):
        say(f"[ladder {n}/{len(cells)}] {methods.LABELS[method]}, seed {seed}")
        results = run_method(config, method, seed, out_dir / method / f"seed_{seed}")
        miou[method][seed] = results["mIoU"]
    summary = summarize(miou)
    summary["step"] = int(config.train.steps)
    md, js = write_table(summary, out_dir, "ladder")
    title = f"target mIoU (%) after {config.train.steps} steps, seeds {', '.join(map(str, seeds))}"
    visualize.save_png(out_dir / "ladder.png", bar_chart(summary, title))
    say("\n" + markdown(summary))
    say(f"wrote {md}, {js} and {out_dir / 'ladder.png'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python tools/ladder.py --config configs/demo.py --out runs/ladder --seeds 0,1
    [--methods source_only,...] [--config.a.b=v ...]`."""
    from absl import flags

    from lcmsm_jax import config_cli

    def define(fv: flags.FlagValues) -> None:
        flags.DEFINE_string("out", None, "Directory for the runs and the tables.", flag_values=fv)
        flags.DEFINE_string("seeds", "0,1", "Comma-separated seeds.", flag_values=fv)
        flags.DEFINE_string("methods", ",".join(methods.METHODS),
                            "Comma-separated methods, in table order (also lcmsm_hrda: "
                            "LC-MSM on the config's multires version).",
                            flag_values=fv)  # fmt: skip

    try:
        fv = config_cli.parse(
            "ladder", argv, define, required=("out",),
            description="Train every method of the ladder with every seed on one benchmark; "
            "tabulate and chart the target mIoU. Finished cells are read back, not retrained.",
            examples=[
                "python tools/ladder.py --config configs/demo.py --out runs/ladder --seeds 0,1",
                "python tools/ladder.py --config configs/gta2cs_lcmsm.py --out runs/gta2cs_ladder "
                "--seeds 0,1,2 --methods source_only,daformer,lcmsm",
                "python tools/ladder.py --config configs/demo_hr.py --out runs/hr_ladder "
                "--seeds 0,1 --methods lcmsm,lcmsm_hrda",
            ],
        )  # fmt: skip
        seeds = seeds_from(fv.seeds)
        names = tuple(m.strip() for m in fv.methods.split(",") if m.strip())
        unknown = [m for m in names if m not in methods.ALL]
        if unknown or not names:
            raise config_cli.UsageError(
                f"ladder: --methods: unknown {unknown}; expected some of {', '.join(methods.ALL)}"
            )
        for name in names:  # before any cell trains: lcmsm_hrda needs config.multires
            methods.with_method(fv.config, name)
    except KeyError as err:
        say(f"ladder: --methods: {err.args[0]}")
        return 2
    except (config_cli.UsageError, ValueError) as err:
        say(str(err))
        return 2
    try:
        atomic.check_output_folder(fv.out, "--out")  # before the first cell trains
    except atomic.OutputPathError as err:
        say(f"ladder: {err}")
        return 1
    run_ladder(fv.config, fv.out, seeds, names)
    return 0
