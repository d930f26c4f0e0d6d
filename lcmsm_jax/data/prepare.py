"""`lcmsm-prepare`: validate a dataset as unpacked and write its manifest + class statistics.

  lcmsm-prepare --dataset gta5 --root /data/gta5

Checks every split's layout (image/label pairing), that every image is a complete PNG,
that every label decodes, has its image's size and holds only known ids; reports every
problem with its file and what to do, and then writes nothing. On success it computes the
per-image class pixel counts (native resolution, after id -> trainId) that rare-class
sampling needs and writes `lcmsm_class_stats.json` and `lcmsm_manifest.json` atomically.
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import multiprocessing
import os
import sys
import time

import numpy as np

from lcmsm_jax.data import labels as label_tables
from lcmsm_jax.data import manifest as manifest_lib
from lcmsm_jax.data import pngio, rcs, sources

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


class Progress:
    """One status line on a terminal (rewritten in place), or a line per 10% otherwise."""

    def __init__(self, total: int, title: str, stream=None, quiet: bool = False):
        stream = stream or sys.stderr  # looked up now, so redirections made later apply
        self.total, self.title, self.stream, self.quiet = total, title, stream, quiet
        self.done, self.start, self.last = 0, time.monotonic(), 0.0
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.next_decile = 1

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        finished = self.done == self.total
        if self.quiet:
            return
        if self.tty and (now - self.last > 0.25 or finished):
            self.last = now
            self.stream.write(f"\r{self._line(now)}" + ("\n" if finished else ""))
            self.stream.flush()
        elif not self.tty and (finished or self.done * 10 >= self.next_decile * self.total):
            self.next_decile = self.done * 10 // max(self.total, 1) + 1
            self.stream.write(self._line(now) + "\n")

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        return (
            f"{self.title}: {self.done}/{self.total} checked "
            f"({100 * self.done / max(self.total, 1):.0f}%), {rate:.1f}/s, "
            f"about {eta:.0f}s left"
        )


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
        print(
            f"note: in {name} no image has more than {min_pixels} pixels of {names}; rare-class "
            "sampling with that threshold will not start on this split",
            file=sys.stderr,
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lcmsm-prepare",
        description="Validate a dataset as unpacked from its archives and write the manifest "
        "and class statistics (for rare-class sampling) that training reads.",
    )
    p.add_argument(
        "--dataset", required=True, choices=sorted(sources.LAYOUTS), help="which dataset ROOT holds"
    )
    p.add_argument("--root", required=True, help="the dataset folder (see README for layouts)")
    p.add_argument(
        "--splits",
        default=None,
        help="comma-separated splits to check (default: all the dataset has)",
    )
    p.add_argument(
        "--labels",
        default="ids",
        choices=("ids", "trainids"),
        help="Cityscapes/ACDC/Dark Zurich: read *_labelIds.png (default) or *_labelTrainIds.png",
    )
    p.add_argument(
        "--conditions",
        default=None,
        help="ACDC: comma-separated conditions (default: those present of fog,night,rain,snow)",
    )
    p.add_argument("--out", default=None, help="where to write the files (default: ROOT)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes used to check files (default: min(8, CPUs))",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave problem pairs out of the manifest instead of failing",
    )
    p.add_argument(
        "--allow-unknown-ids",
        action="store_true",
        help="read ids missing from the table as ignore (255) instead of failing",
    )
    p.add_argument(
        "--max-listed", type=int, default=20, help="files listed per kind of problem (0 = all)"
    )
    p.add_argument(
        "--min-pixels", type=int, default=3000, help="RCS candidate threshold shown in the summary"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


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
    progress = Progress(len(pairs), f"{args.dataset}/{split}", quiet=args.quiet)
    results = check_pairs(
        pairs,
        args.workers,
        progress,
        root=args.root,
        label_reader=lay.label_reader,
        id_table=lay.id_tables[args.labels],
        allow_unknown=args.allow_unknown_ids,
    )
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


def main(argv: list[str] | None = None) -> int:
    """Run `lcmsm-prepare` with command-line `argv`; returns the exit status (0 = written)."""
    args = _parser().parse_args(argv)
    lay = sources.layout(args.dataset)
    splits = (
        args.splits.split(",") if args.splits else list(lay.labelled_splits + lay.unlabelled_splits)
    )
    conditions = tuple(args.conditions.split(",")) if args.conditions else None
    out = args.out or args.root
    entries, stats, all_problems, skipped = {}, {}, [], {}
    try:
        for split in splits:
            if split not in lay.labelled_splits + lay.unlabelled_splits:
                print(f"lcmsm-prepare: {lay.title} has no split {split!r}", file=sys.stderr)
                return 1
            labelled = split in lay.labelled_splits
            kept, problems, bad = _check_split(args, lay, split, labelled, conditions)
            all_problems += problems
            skipped[split] = bad
            entries[split], split_stats = _split_entries(kept, labelled)
            if split_stats is not None:
                stats[split] = split_stats
    except sources.LayoutError as e:
        hint = " To check only some splits pass --splits." if len(splits) > 1 else ""
        print(f"lcmsm-prepare: {e}{hint}\nNothing was written.", file=sys.stderr)
        return 1
    if all_problems:
        print(format_problems(all_problems, args.root, lay.title, args.max_listed), file=sys.stderr)
        if not args.skip_bad:
            print("\nNothing was written.", file=sys.stderr)
            return 1
        print(
            f"\n--skip-bad: leaving {sum(map(len, skipped.values()))} file(s) out.", file=sys.stderr
        )
    if not any(e["num_images"] for e in entries.values()):
        print("lcmsm-prepare: no usable images left; nothing was written.", file=sys.stderr)
        return 1
    if not os.access(out, os.W_OK):
        print(f"lcmsm-prepare: cannot write into {out}; pass --out DIR", file=sys.stderr)
        return 1
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
    print(f"wrote {stats_path}\nwrote {manifest_path}")
    return 0


def _print_summary(args, entries: dict, stats: dict) -> None:
    for split, entry in entries.items():
        print(f"{args.dataset}/{split}: {entry['num_images']} images")
        if split in stats and stats[split]["class_pixels"]:
            counts = np.asarray(stats[split]["class_pixels"], np.int64)
            print(class_table(counts, 0.01, args.min_pixels))
            _warn_empty_candidates(counts, args.min_pixels, f"{args.dataset}/{split}")
