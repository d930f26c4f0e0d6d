"""`lcmsm-prepare`: validate a dataset as unpacked and write its manifest + class statistics.

  lcmsm-prepare --dataset gta5 --root /data/gta5

Checks every split's layout (image/label pairing), that every image is a complete PNG,
that every label decodes, has its image's size and holds only known ids; reports every
problem with its file and what to do, and then writes nothing. On success it computes the
per-image class pixel counts (native resolution, after id -> trainId) that rare-class
sampling needs and writes `lcmsm_class_stats.json` and `lcmsm_manifest.json` atomically.
"""

import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import multiprocessing
import os
import sys

import numpy as np
from absl import flags

from lcmsm_jax import atomic, config_cli
from lcmsm_jax.data import labels as label_tables
from lcmsm_jax.data import manifest as manifest_lib
from lcmsm_jax.data import pngio, rcs, sources
from lcmsm_jax.progress import Progress, say

PROG = "lcmsm-prepare"

_SKIP = "or re-run with --skip-bad to leave the pair out"
ADVICE = {
    "missing label": f"restore the label file from the dataset archive, {_SKIP}",
    "missing image": "restore the image from the dataset archive, or delete the stray label file",
    "unreadable image": f"the file is truncated or corrupt; extract it again, {_SKIP}",
    "unreadable label": f"the file is truncated or corrupt; extract it again, {_SKIP}",
    "wrong image format": f"images must be RGB photos; check the image folder, {_SKIP}",
    "wrong label format": "label folders must hold id maps, not colour renderings; unpack the "
    f"dataset's id label files, {_SKIP}",
    "size mismatch": f"an image and its label must have the same size; extract both again, {_SKIP}",
    "unknown ids": "check that the label folder holds this dataset's id maps (not trainId or "
    "colour images; for trainId files pass --labels trainids), or pass --allow-unknown-ids "
    "to read unknown ids as ignore (255)",
}


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # a key of ADVICE
    file: str  # relative to the root
    detail: str = ""


@dataclasses.dataclass
class PairResult:
    problems: list[Problem]
    counts: np.ndarray | None  # [19] trainId pixel counts
    size: tuple[int, int] | None  # image (height, width)


class PreparationError(ValueError):
    """The dataset has problems (listed before); nothing was written."""


def _id_list(ids) -> str:
    ids = sorted(int(i) for i in ids)
    shown = ", ".join(map(str, ids[:8]))
    return shown + (f", ... ({len(ids)} ids)" if len(ids) > 8 else "")


def check_pair(
    pair: tuple[str, str | None],
    *,
    root: str,
    label_reader: str,
    id_table: dict[int, int],
    allow_unknown: bool,
) -> PairResult:
    """Validate one (image, label) pair and count trainId pixels of the label."""
    image_rel, label_rel = pair
    problems, size = [], None
    try:
        size, mode = pngio.verify_png(os.path.join(root, image_rel))
        if mode not in ("RGB", "RGBA"):
            problems.append(Problem("wrong image format", image_rel, f"mode {mode}, not RGB"))
    except Exception as e:  # any decoder error means the same to the user
        problems.append(Problem("unreadable image", image_rel, f"{type(e).__name__}: {e}"))
    if label_rel is None:
        return PairResult(problems, None, size)
    path = os.path.join(root, label_rel)
    try:
        if label_reader == "channel0":
            ids = pngio.read_channel0_label(path, exact=True)
        else:
            ids = pngio.read_index_label(path)
    except pngio.LabelFormatError as e:
        problems.append(Problem("wrong label format", label_rel, str(e).split(": ", 1)[-1]))
        return PairResult(problems, None, size)
    except Exception as e:
        problems.append(Problem("unreadable label", label_rel, f"{type(e).__name__}: {e}"))
        return PairResult(problems, None, size)
    if size is not None and ids.shape != size:
        problems.append(
            Problem(
                "size mismatch",
                label_rel,
                f"label is {ids.shape[1]}x{ids.shape[0]} but {image_rel} is {size[1]}x{size[0]}",
            )
        )
    hist = np.bincount(ids.ravel(), minlength=256)
    unknown = [i for i in np.flatnonzero(hist) if int(i) not in id_table]
    if unknown and not allow_unknown:
        problems.append(
            Problem(
                "unknown ids",
                label_rel,
                f"ids {_id_list(unknown)} ({int(hist[unknown].sum())} pixels) are not in the "
                f"id table (known: {min(id_table)}..{max(id_table)})",
            )
        )
    lut = np.full(len(hist), label_tables.IGNORE_INDEX, np.int64)
    for dataset_id, train_id in id_table.items():
        if dataset_id < len(lut):
            lut[dataset_id] = train_id
    counts = np.bincount(lut, weights=hist, minlength=256)[: label_tables.NUM_CLASSES]
    return PairResult(problems, counts.astype(np.int64), size)


def check_pairs(pairs, workers: int, progress: Progress, **kwargs) -> list[PairResult]:
    """`check_pair` over all pairs, in `workers` processes (1 = in this process)."""
    fn = functools.partial(check_pair, **kwargs)
    results = []
    if workers <= 1:
        for pair in pairs:
            results.append(fn(pair))
            progress.update()
        return results
    # "spawn": forking a process that runs threads (JAX, grain) can deadlock the children.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for result in pool.map(fn, pairs, chunksize=8):
            results.append(result)
            progress.update()
    return results


def format_problems(problems: list[Problem], root: str, title: str, max_listed: int) -> str:
    """A report grouped by kind: every file (up to `max_listed` per kind) and the advice."""
    by_kind = collections.defaultdict(list)
    for p in problems:
        by_kind[p.kind].append(p)
    lines = [f"Found {len(problems)} problem(s) in the {title} dataset under {root}:"]
    for kind, items in by_kind.items():
        lines.append(f"\n{kind} ({len(items)}): {ADVICE[kind]}")
        shown = items if max_listed <= 0 else items[:max_listed]
        lines += [f"  {p.file}" + (f": {p.detail}" if p.detail else "") for p in shown]
        if len(shown) < len(items):
            lines.append(f"  ... and {len(items) - len(shown)} more (--max-listed 0 lists all)")
    return "\n".join(lines)


def class_table(counts: np.ndarray, temperature: float, min_pixels: int) -> str:
    """Per-class pixel share, candidate images and RCS probability, as text."""
    totals = counts.sum(axis=0)
    classes, probs = rcs.class_probabilities(counts, temperature)
    prob = dict(zip(classes.tolist(), probs.tolist(), strict=True))
    lines = [f"  {'class':<14}{'pixels %':>9}{f'imgs>{min_pixels}px':>14}{'RCS P(c)':>10}"]
    for c, name in enumerate(label_tables.CITYSCAPES_CLASSES):
        share = 100 * totals[c] / max(totals.sum(), 1)
        cands = int((counts[:, c] > min_pixels).sum())
        p = f"{prob[c]:.4f}" if c in prob else "-"
        lines.append(f"  {name:<14}{share:>9.3f}{cands:>14d}{p:>10}")
    return "\n".join(lines)


def _warn_empty_candidates(counts: np.ndarray, min_pixels: int, name: str) -> None:
    """Rare-class sampling refuses classes that occur but have no candidate image; say so now."""
    occurring = np.flatnonzero(counts.sum(axis=0) > 0)
    empty = [c for c in occurring if not (counts[:, c] > min_pixels).any()]
    if empty:
        names = ", ".join(label_tables.CITYSCAPES_CLASSES[c] for c in empty)
        say(
            f"note: in {name} no image has more than {min_pixels} pixels of {names}; rare-class "
            "sampling with that threshold will not start on this split",
            stream=sys.stderr,
        )


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("dataset", None, sorted(sources.LAYOUTS), "Which dataset ROOT holds.",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_string("root", None, "The dataset folder (layouts: docs/data.md).",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_string("splits", None,
                        "Comma-separated splits to check (default: all the dataset has).",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_enum("labels", "ids", ["ids", "trainids"],
                      "Cityscapes/ACDC/Dark Zurich: read *_labelIds.png (ids) or "
                      "*_labelTrainIds.png (trainids).", flag_values=fv)  # fmt: skip
    flags.DEFINE_string("conditions", None, "ACDC: comma-separated conditions (default: those "
                        "present of fog,night,rain,snow).", flag_values=fv)  # fmt: skip
    flags.DEFINE_string("out", None, "Where to write the files (default: ROOT).", flag_values=fv)
    flags.DEFINE_integer("workers", min(8, os.cpu_count() or 1),
                         "Processes that check files (1: this one); default min(8, CPUs).",
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("skip_bad", False,
                      "Leave problem pairs out of the manifest instead of failing.",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("allow_unknown_ids", False,
                      "Read ids missing from the table as ignore (255) instead of failing.",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("max_listed", 20, "Files listed per kind of problem (0 = all).",
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("min_pixels", 3000, "RCS candidate threshold shown in the summary.",
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("quiet", False, "No progress lines.", flag_values=fv)


def _parse(argv: list[str] | None):
    """The flags, with --splits checked against the dataset (UsageError)."""
    args = config_cli.parse(
        PROG, argv, _define, required=("dataset", "root"), takes_config=False,
        description="Validate a dataset as unpacked from its archives and write the manifest "
        "and class statistics (for rare-class sampling) that training reads.",
        examples=[
            f"{PROG} --dataset gta5 --root /data/gta5",
            f"{PROG} --dataset cityscapes --root /data/cityscapes --splits train,val",
            f"{PROG} --dataset acdc --root /data/acdc --conditions night --out /data/acdc_night",
        ],
    )  # fmt: skip
    lay = sources.layout(args.dataset)
    for split in args.splits.split(",") if args.splits else ():
        if split not in lay.labelled_splits + lay.unlabelled_splits:
            known = ", ".join(lay.labelled_splits + lay.unlabelled_splits)
            raise config_cli.UsageError(
                f"{PROG}: --splits {args.splits}: {lay.title} has no split {split!r} ({known})"
            )
    return args


def _check_split(args, lay, split: str, labelled: bool, conditions):
    """Scan and check one split -> ([(pair, result)] without problems, problems, bad files)."""
    found = sources.find_pairs(
        args.dataset,
        args.root,
        split,
        label_kind=args.labels,
        labels=labelled,
        conditions=conditions,
    )
    problems = [Problem("missing label", f) for f in found.unpaired_images]
    problems += [Problem("missing image", f) for f in found.unpaired_labels]
    label_files = found.labels if labelled else [None] * len(found.images)
    pairs = list(zip(found.images, label_files, strict=True))
    progress = Progress(f"{args.dataset}/{split}", len(pairs), unit="pairs",
                        stream=None if args.quiet else "stdout")  # fmt: skip
    results = check_pairs(
        pairs,
        args.workers,
        progress,
        root=args.root,
        label_reader=lay.label_reader,
        id_table=lay.id_tables[args.labels],
        allow_unknown=args.allow_unknown_ids,
    )
    progress.finish()
    kept = [(pair, r) for pair, r in zip(pairs, results, strict=True) if not r.problems]
    for r in results:
        problems += r.problems
    skipped = sorted({p.file for p in problems})
    return kept, problems, skipped


def _split_entries(kept, labelled: bool):
    sizes = collections.Counter(f"{w}x{h}" for _, r in kept for h, w in [r.size])
    entry = {
        "num_images": len(kept),
        "images": [pair[0] for pair, _ in kept],
        "image_sizes": dict(sizes),
    }
    stats = None
    if labelled:
        entry["labels"] = [pair[1] for pair, _ in kept]
        stats = {"labels": entry["labels"], "class_pixels": [r.counts.tolist() for _, r in kept]}
    return entry, stats


def _check_out(args: flags.FlagValues) -> None:
    """Refuse (OSError naming the flag) a folder the manifest cannot be written to: --out,
    or by default --root."""
    if args.out:
        atomic.check_output_folder(args.out, "--out")
    elif os.path.isdir(args.root) and not os.access(args.root, os.W_OK | os.X_OK):
        raise PermissionError(
            f"--root {args.root} is not writable, and the manifest and class statistics are "
            "written there unless --out is given; pass --out DIR, a folder you can write to"
        )


def main(argv: list[str] | None = None) -> int:
    """Run `lcmsm-prepare` with command-line `argv`; returns the exit status (0 = written).

    Usage errors: message and 2. A dataset that does not pass raises (LayoutError,
    PreparationError, OSError; `lcmsm_jax.cli` reports them in one line, exit 1) after the
    problems were listed on stderr, and nothing is written.
    """
    try:
        args = _parse(argv)
    except config_cli.UsageError as err:
        return config_cli.report_usage(PROG, err)
    lay = sources.layout(args.dataset)
    splits = (
        args.splits.split(",") if args.splits else list(lay.labelled_splits + lay.unlabelled_splits)
    )
    conditions = tuple(args.conditions.split(",")) if args.conditions else None
    out = args.out or args.root
    _check_out(args)  # before the scan, which takes long on a full dataset
    entries, stats, all_problems, skipped = {}, {}, [], {}
    try:
        for split in splits:
            labelled = split in lay.labelled_splits
            kept, problems, bad = _check_split(args, lay, split, labelled, conditions)
            all_problems += problems
            skipped[split] = bad
            entries[split], split_stats = _split_entries(kept, labelled)
            if split_stats is not None:
                stats[split] = split_stats
    except sources.LayoutError as e:
        hint = " To check only some splits pass --splits." if len(splits) > 1 else ""
        raise sources.LayoutError(f"{e}{hint}\nNothing was written.") from e
    if all_problems:
        say(format_problems(all_problems, args.root, lay.title, args.max_listed), sys.stderr)
        if not args.skip_bad:
            raise PreparationError(
                f"{len(all_problems)} problem(s) in {args.root} (listed above). Nothing was "
                "written."
            )
        say(f"\n--skip-bad: leaving {sum(map(len, skipped.values()))} file(s) out.", sys.stderr)
    if not any(e["num_images"] for e in entries.values()):
        raise PreparationError("no usable images left; nothing was written.")
    manifest = {
        "dataset": args.dataset,
        "label_kind": args.labels,
        "conditions": list(conditions) if conditions else [],
        "root": os.path.abspath(args.root),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "splits": entries,
        "skipped": skipped,
    }
    stats_doc = {
        "dataset": args.dataset,
        "classes": list(label_tables.CITYSCAPES_CLASSES),
        "splits": stats,
    }
    manifest_path, stats_path = manifest_lib.write_prepared(out, manifest, stats_doc)
    _print_summary(args, entries, stats)
    say(f"wrote {stats_path}\nwrote {manifest_path}")
    return 0


def _print_summary(args, entries: dict, stats: dict) -> None:
    for split, entry in entries.items():
        say(f"{args.dataset}/{split}: {entry['num_images']} images")
        if split in stats and stats[split]["class_pixels"]:
            counts = np.asarray(stats[split]["class_pixels"], np.int64)
            say(class_table(counts, 0.01, args.min_pixels))
            _warn_empty_candidates(counts, args.min_pixels, f"{args.dataset}/{split}")
