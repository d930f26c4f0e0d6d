"""`lcmsm-predict`: segment any images with a run's checkpoint (or an `lcmsm-convert` result).

Each image goes through the evaluation preprocessing (keep-ratio resize to
config.data.eval.scale, normalisation) and the evaluation inference (config.eval: slide or
whole, head; HRDA's multi-resolution inference in each window for a multi-resolution model,
docs/method.md §8.7); the prediction is at the image's own resolution. Per image `<stem>` the
output folder gets `<stem>_trainIds.png` (grey, trainIds 0..18), `<stem>_color.png`
(Cityscapes palette) and `<stem>_overlay.png` (image and colours blended half and half).
Consecutive images of one size are batched; each size compiles once.

An image that cannot be read (not an image, truncated, corrupt) is skipped with a warning
naming it, and the skipped ones are counted at the end. The command exits 0 when at least
one image was predicted (check the count) and 1 when none was.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from lcmsm_jax import compile_cache, evaluate, export, restore, sharding
from lcmsm_jax.data import pngio
from lcmsm_jax.data import transforms as T
from lcmsm_jax.evaluator import global_batch_size
from lcmsm_jax.progress import Progress, say

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_images(spec: str) -> list[Path]:
    """A folder (its image files, not recursive) or a glob (`**` recurses), sorted.

    Raises FileNotFoundError naming `spec` when nothing matches, and ValueError when two
    images share a file stem (their outputs would collide).
    """
    if os.path.isdir(spec):
        paths = [p for p in sorted(Path(spec).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        paths = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if os.path.isfile(p)]
    if not paths:
        raise FileNotFoundError(f"--images {spec!r}: no image files found")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise ValueError(f"--images {spec!r}: {stems[path.stem]} and {path} share a name")
        stems[path.stem] = path
    return paths


@dataclasses.dataclass
class Outcome:
    """What `predict_images` did: images predicted and (image, reason) of those skipped."""

    predicted: int = 0
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    def skip(self, path: Path, err: BaseException) -> None:
        reason = f"{type(err).__name__}: {err}"
        self.skipped.append((path, reason))
        say(f"lcmsm-predict: warning: skipping {path}: cannot be read ({reason})")

    def summary(self) -> str:
        line = f"predicted {self.predicted} images"
        if self.skipped:
            names = ", ".join(str(p) for p, _ in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            line += f"; skipped {len(self.skipped)} unreadable: {names}{more}"
        return line


def _readable(paths: Sequence[Path], outcome: Outcome) -> tuple[list[Path], list[tuple[int, int]]]:
    """The images whose header can be read and their (height, width); skips the others."""
    kept, sizes = _read_each(paths, pngio.image_size, outcome)
    if not kept:
        first, reason = outcome.skipped[0]
        raise ValueError(
            f"none of the {len(paths)} --images files can be read as an image (e.g. {first}: "
            f"{reason}); pass image files (png, jpg, ...)"
        )
    return kept, sizes


def _batches(
    paths: Sequence[Path], sizes: Sequence[tuple[int, int]], batch_size: int
) -> Iterator[tuple[tuple[int, int], list]]:
    """Consecutive runs of images with the same (height, width), cut into batches."""
    for size, group in itertools.groupby(range(len(paths)), key=lambda i: sizes[i]):
        group = list(group)
        for i in range(0, len(group), batch_size):
            yield size, [paths[j] for j in group[i : i + batch_size]]


def _read_each(
    paths: Sequence[Path], read: Callable[[str], object], outcome: Outcome
) -> tuple[list[Path], list]:
    """(paths that `read` could read, what it returned); the others go to `outcome.skip`."""
    kept, values = [], []
    for path in paths:
        try:
            values.append(read(str(path)))
        except pngio.DECODE_ERRORS as err:
            outcome.skip(path, err)
            continue
        kept.append(path)
    return kept, values


def predict_images(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    paths: Sequence[Path],
    out_dir: str | os.PathLike,
    *,
    step: int | None = None,
    weights: str | None = None,
    head: str | None = None,
    batch_size: int = 0,
) -> Outcome:
    """Predict `paths` and write three PNGs per image to `out_dir`.

    Unreadable images are skipped with a warning; raises ValueError when none can be read.
    """
    compile_cache.enable(config.get("compile_cache_dir", ""))
    outcome = Outcome()
    paths, sizes = _readable(paths, outcome)  # before loading weights: fails fast
    run = restore.load_for_inference(config, workdir, step=step, weights=weights, head=head)
    mesh = sharding.make_mesh(config.mesh.data)
    evaluator = evaluate.make_evaluator(config, run.graphdef, mesh, head=run.head)
    batch = global_batch_size(batch_size or config.data.eval.batch_size, mesh)
    params, batch_stats, features = evaluator.put_weights(
        run.params, run.batch_stats, run.text_features
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"predicting {len(paths)} images ({run.weights} weights, {run.head} head) into {out_dir}")
    # The first batch's time includes compilation: the rate leaves it out.
    progress = Progress("predict", len(paths), skip_first=True, tenths=False)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = []
        for size, group in _batches(paths, sizes, batch):
            kept, images = _read_each(group, pngio.read_rgb, outcome)  # unreadable: skipped
            if images:
                net_size = T.keep_ratio_size(*size, tuple(config.data.eval.scale))
                inputs = np.zeros((batch, *net_size, 3), np.float32)  # padded to the full batch
                for i, image in enumerate(images):
                    inputs[i] = T.normalize(T.resize_image(image, net_size))
                preds = evaluator.predict(params, batch_stats, features, inputs, size)
                for path, image, pred in zip(kept, images, preds, strict=False):
                    pending.append(pool.submit(export.write_prediction, out_dir, path, image, pred))
                outcome.predicted += len(images)
            for future in pending[:-32]:
                future.result()
            pending = pending[-32:]
            progress.update(len(group))
        for future in pending:
            future.result()
    progress.finish()
    if not outcome.predicted:
        raise ValueError(f"no image could be predicted: {outcome.summary()}")
    return outcome


def _define_flags(fv) -> None:
    from absl import flags

    evaluate.define_weight_flags(fv)
    flags.DEFINE_string("images", None, "An image folder, or a glob such as 'dir/*.png'.",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_string("out", None, "Output folder for the trainId, colour and overlay PNGs.",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("batch_size", 0,
                         "Images per batch (default: config.data.eval.batch_size).",
                         flag_values=fv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`lcmsm-predict --config C.py --workdir DIR --images 'dir/*.png' --out DIR [...]`.

    Exit status 0 when at least one image was predicted (the last line counts the skipped
    ones), 1 when none was or the weights cannot be loaded, 2 for a bad command line.
    """
    from lcmsm_jax import config_checks, config_cli

    try:
        fv = config_cli.parse(
            "lcmsm-predict", argv, _define_flags, required=("workdir", "images", "out"),
            description="Segment images with a run's weights. Unreadable images are skipped "
            "with a warning and counted: exit 0 when at least one image was predicted.",
            examples=[
                "lcmsm-predict --config configs/gta2cs_lcmsm.py --workdir runs/gta2cs "
                "--images 'photos/*.jpg' --out predictions",
                "lcmsm-predict --config configs/gta2cs_lcmsm.py --workdir runs/gta2cs "
                "--images photos/ --out predictions --weights teacher --head lcmsm",
            ],
        )  # fmt: skip
        config_checks.check_eval_config(fv.config, reads_dataset=False)
        if fv.batch_size < 0:
            raise config_cli.UsageError(f"--batch-size {fv.batch_size}: expected 0 or more")
    except config_cli.UsageError as err:
        return config_cli.report_usage("lcmsm-predict", err)
    try:
        paths = find_images(fv.images)
        outcome = predict_images(
            fv.config,
            fv.workdir,
            paths,
            fv.out,
            step=fv.step,
            weights=fv.weights,
            head=fv.head,
            batch_size=fv.batch_size,
        )
    except (FileNotFoundError, ValueError) as err:
        # Missing images or checkpoints, a config value out of range: the message names it.
        return config_cli.report_failure("lcmsm-predict", err)
    say(f"lcmsm-predict: {outcome.summary()}")
    return 0
