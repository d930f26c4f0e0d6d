"""`lcmsm-predict`: segment any images with a run's checkpoint (or an `lcmsm-convert` result).

Each image goes through the evaluation preprocessing (keep-ratio resize to
config.data.eval.scale, normalisation) and the evaluation inference (config.eval: slide or
whole, head; HRDA's multi-resolution inference in each window for a multi-resolution model,
docs/method.md §8.7); the prediction is at the image's own resolution. Per image `<stem>` the
output folder gets `<stem>_trainIds.png` (grey, trainIds 0..18), `<stem>_color.png`
(Cityscapes palette) and `<stem>_overlay.png` (image and colours blended half and half);
`legend.png` names the class of each colour.
Consecutive images of one size are batched; each size compiles once.

`--images` is a folder, searched with its subfolders (Cityscapes' leftImg8bit/val/<city>/),
or a glob; images are taken in sorted path order. `--out` must not be that folder (the
outputs would be mixed with the images); a subfolder of it is fine and is never searched.
Images of any size are predicted, down to one pixel on a side.

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

from lcmsm_jax import compile_cache, evaluate, export, restore, sharding, visualize
from lcmsm_jax.data import pngio
from lcmsm_jax.data import transforms as T
from lcmsm_jax.evaluator import global_batch_size
from lcmsm_jax.progress import Progress, say

LEGEND, LEGEND_WIDTH = "legend.png", 640  # the colours' class names, written with the outputs
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_images(spec: str, exclude: str | os.PathLike | None = None) -> list[Path]:
    """A folder (its image files, subfolders included) or a glob (`**` recurses), sorted.

    Files under `exclude` (the output folder), when it lies below the searched folder, are
    left out, so earlier predictions there are never read as images. Raises
    FileNotFoundError naming `spec` when nothing matches, and ValueError when two images
    share a file stem (their outputs would collide).
    """
    skip = os.path.realpath(exclude) if exclude is not None else None
    if os.path.isdir(spec):
        paths, left_out = _folder_images(spec, skip)
    else:
        paths, left_out = _glob_images(spec, skip)
    if not paths:
        raise FileNotFoundError(_nothing_found(spec, exclude if left_out else None))
    _check_unique_stems(spec, paths)
    return paths


def _folder_images(folder: str, skip: str | None) -> tuple[list[Path], bool]:
    """(image files in `folder` and its subfolders, sorted; whether `skip` was pruned).

    Symlinked subfolders are followed, each real folder once (a link loop ends).
    """
    paths, seen, pruned = [], set(), False
    for root, dirs, files in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(root))
        kept = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(root, name))
            pruned |= real == skip
            if real != skip and real not in seen:
                seen.add(real)
                kept.append(name)
        dirs[:] = kept  # os.walk descends only into these
        for name in files:
            path = Path(root, name)
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                paths.append(path)
    return sorted(paths), pruned


def _glob_images(spec: str, skip: str | None) -> tuple[list[Path], bool]:
    """(files matching the glob `spec`, sorted; whether some under `skip` were left out).

    Only an output folder below the searched one is left out: images under a parent of it
    (--images 'out/photos/*.png' --out out) are the inputs, not earlier predictions, and
    the searched folder itself as --out is refused by `check_out_folder`.
    """
    matched = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if os.path.isfile(p)]
    base = os.path.realpath(images_folder(spec))
    if skip is None or skip == base or not _within(skip, base):
        return matched, False
    paths = [p for p in matched if not _within(os.path.realpath(p.parent), skip)]
    return paths, len(paths) < len(matched)


def _within(path: str, folder: str) -> bool:
    """Whether the real path `path` is the real folder `folder` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _nothing_found(spec: str, excluded: str | os.PathLike | None) -> str:
    """The one-line message for an `--images` that names no image file."""
    note = f" (files under --out {str(excluded)!r} are never searched)" if excluded else ""
    if os.path.isdir(spec):
        accepted = ", ".join(IMAGE_SUFFIXES)
        return (
            f"--images {spec!r}: no image files found in the folder or its subfolders{note}; "
            f"accepted extensions (any case): {accepted}"
        )
    what = "the pattern matches no file" if _has_wildcard(spec) else "no such folder or file"
    return (
        f"--images {spec!r}: no image files found: {what}{note}; pass an image folder or a "
        "glob such as 'photos/**/*.jpg'"
    )


def _check_unique_stems(spec: str, paths: Sequence[Path]) -> None:
    """Raise ValueError naming two images with the same stem: outputs are `<stem>_*.png`."""
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise ValueError(
                f"--images {spec!r}: {stems[path.stem]} and {path} share the name "
                f"{path.stem!r}, so their predictions would overwrite each other; rename one "
                "or pass a folder or glob that holds only one of them"
            )
        stems[path.stem] = path


def images_folder(spec: str) -> str:
    """The folder an `--images` value searches: the folder itself, or a glob's folder
    before its first wildcard ('photos/**/*.jpg' -> 'photos', '*.png' -> '.')."""
    if os.path.isdir(spec):
        return spec
    fixed = itertools.takewhile(lambda part: not _has_wildcard(part), Path(spec).parts[:-1])
    return str(Path(*fixed))  # Path() is "."


def _has_wildcard(part: str) -> bool:
    return any(c in part for c in "*?[")


def check_out_folder(images: str, out: str) -> None:
    """Refuse an `--out` that is the `--images` folder: the predictions would be mixed with
    the images, and a pattern could match them on the next run. A subfolder of it is fine:
    `find_images` leaves it out.

    Raises config_cli.UsageError (exit status 2) naming both flags.
    """
    from lcmsm_jax import config_cli

    folder = images_folder(images)
    if os.path.realpath(out) == os.path.realpath(folder):
        raise config_cli.UsageError(
            f"--out {out!r} is the --images folder {folder!r}: the predictions would be mixed "
            "with the images; choose an --out outside it, or a new subfolder of it (never "
            "searched for images)"
        )


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
    # What the colours of the *_color.png and *_overlay.png files mean.
    visualize.save_png(out_dir / LEGEND, visualize.legend_image(LEGEND_WIDTH))
    return outcome


def _define_flags(fv) -> None:
    from absl import flags

    evaluate.define_weight_flags(fv)
    flags.DEFINE_string("images", None,
                        "An image folder (searched with its subfolders), or a glob such as "
                        "'dir/*.png' ('**' recurses).", flag_values=fv)  # fmt: skip
    flags.DEFINE_string("out", None,
                        "Output folder for the trainId, colour and overlay PNGs; not the "
                        "--images folder (a subfolder of it is never searched).",
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
        paths = find_images(fv.images, exclude=fv.out)
        # After the search, so that a pattern matching nothing says that first; before any
        # weights are loaded or files written.
        check_out_folder(fv.images, fv.out)
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
    except config_cli.UsageError as err:
        return config_cli.report_usage("lcmsm-predict", err)
    except (FileNotFoundError, ValueError) as err:
        # Missing images or checkpoints, a config value out of range: the message names it.
        return config_cli.report_failure("lcmsm-predict", err)
    say(f"lcmsm-predict: {outcome.summary()}")
    return 0
