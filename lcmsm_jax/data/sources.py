"""Random-access sources (grain `RandomAccessDataSource` protocol) for the on-disk datasets.

A source maps an index to `{"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W] trainIds}`
("label" only when the split has labels), at native resolution. Ids are converted to trainIds
(255 = ignore) with the tables of `labels.py` when read.

Layouts, exactly as the archives unpack (ROOT is what `--root` / `root` points at):

  gta5        ROOT/images/00001.png            ROOT/labels/00001.png (palette, index = id)
  synthia     ROOT/RGB/0000000.png             ROOT/GT/LABELS/0000000.png (16-bit, id in ch. 0)
  cityscapes  ROOT/leftImg8bit/{split}/{city}/X_leftImg8bit.png
              ROOT/gtFine/{split}/{city}/X_gtFine_labelIds.png (or _labelTrainIds.png)
  acdc        ROOT/rgb_anon/{condition}/{split}/{seq}/X_rgb_anon.png
              ROOT/gt/{condition}/{split}/{seq}/X_gt_labelIds.png (or _gt_labelTrainIds.png)
  darkzurich  ROOT/rgb_anon/{split}/night/{seq}/X_rgb_anon.png
              ROOT/gt/{split}/night/{seq}/X_gt_labelIds.png (val only; train is unlabelled)

The same examples can also be read from TFDS ArrayRecord files (`tfds_source.py`).
"""

import dataclasses
import os

import numpy as np

from lcmsm_jax.data import labels as label_tables
from lcmsm_jax.data import manifest as manifest_lib
from lcmsm_jax.data import pngio


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one dataset keeps its files; folder patterns may use {split} and {condition}."""

    title: str
    image_dir: str
    image_suffix: str
    label_dir: str
    label_suffixes: dict[str, str]  # label kind ("ids" | "trainids") -> file suffix
    id_tables: dict[str, dict[int, int]]  # label kind -> id -> trainId
    label_reader: str  # "index" (palette / grey ids) | "channel0" (SYNTHIA 16-bit colour)
    labelled_splits: tuple[str, ...]
    unlabelled_splits: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ("",)
    example: str = ""


_CS = label_tables.CITYSCAPES_ID_TO_TRAIN_ID
_TRAIN = label_tables.TRAIN_ID_TO_TRAIN_ID

LAYOUTS: dict[str, Layout] = {
    "gta5": Layout(
        "GTA5", "images", ".png", "labels", {"ids": ".png"},
        {"ids": label_tables.GTA5_ID_TO_TRAIN_ID}, "index", ("all",),
        example="ROOT/images/00001.png and ROOT/labels/00001.png",
    ),
    "synthia": Layout(
        "SYNTHIA-RAND-CITYSCAPES", "RGB", ".png", "GT/LABELS", {"ids": ".png"},
        {"ids": label_tables.SYNTHIA_ID_TO_TRAIN_ID}, "channel0", ("all",),
        example="ROOT/RGB/0000000.png and ROOT/GT/LABELS/0000000.png",
    ),
    "cityscapes": Layout(
        "Cityscapes", "leftImg8bit/{split}", "_leftImg8bit.png", "gtFine/{split}",
        {"ids": "_gtFine_labelIds.png", "trainids": "_gtFine_labelTrainIds.png"},
        {"ids": _CS, "trainids": _TRAIN}, "index", ("train", "val"),
        example="ROOT/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png and "
        "ROOT/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
    ),
    "acdc": Layout(
        "ACDC", "rgb_anon/{condition}/{split}", "_rgb_anon.png", "gt/{condition}/{split}",
        {"ids": "_gt_labelIds.png", "trainids": "_gt_labelTrainIds.png"},
        {"ids": label_tables.ACDC_ID_TO_TRAIN_ID, "trainids": _TRAIN}, "index",
        ("train", "val"), conditions=("fog", "night", "rain", "snow"),
        example="ROOT/rgb_anon/fog/train/GOPR0475/GOPR0475_frame_000041_rgb_anon.png and "
        "ROOT/gt/fog/train/GOPR0475/GOPR0475_frame_000041_gt_labelIds.png",
    ),
    "darkzurich": Layout(
        "Dark Zurich", "rgb_anon/{split}/{condition}", "_rgb_anon.png", "gt/{split}/{condition}",
        {"ids": "_gt_labelIds.png", "trainids": "_gt_labelTrainIds.png"},
        {"ids": label_tables.DARK_ZURICH_ID_TO_TRAIN_ID, "trainids": _TRAIN}, "index",
        ("val",), unlabelled_splits=("train",), conditions=("night",),
        example="ROOT/rgb_anon/val/night/GOPR0356/GOPR0356_frame_000321_rgb_anon.png and "
        "ROOT/gt/val/night/GOPR0356/GOPR0356_frame_000321_gt_labelIds.png",
    ),
}  # fmt: skip


class LayoutError(ValueError):
    """The root folder does not hold the dataset in its distributed layout."""


@dataclasses.dataclass
class Pairs:
    """Files of one split, relative to the root; `labels[i]` belongs to `images[i]`."""

    images: list[str]
    labels: list[str] | None
    unpaired_images: list[str]  # images whose label file is missing
    unpaired_labels: list[str]  # label files whose image is missing


def layout(dataset: str) -> Layout:
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[dataset]


def known_ids(dataset: str, label_kind: str = "ids") -> frozenset[int]:
    """Every id a label file of this dataset may contain."""
    return frozenset(layout(dataset).id_tables[label_kind])


def _files_with_suffix(folder: str, suffix: str) -> list[str]:
    """Paths relative to `folder` of all files ending in `suffix`, sorted, recursively."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = os.path.relpath(dirpath, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in filenames if f.endswith(suffix)]
    return sorted(found)


def _suggest_root(root: str, first_dir: str) -> str:
    """A hint when `first_dir` is not under `root` but under a neighbour of it."""
    head = first_dir.split("/")[0]
    candidates = [os.path.dirname(os.path.abspath(root))]
    if os.path.isdir(root):
        candidates += [os.path.join(root, d) for d in sorted(os.listdir(root))]
    for cand in candidates:
        if os.path.isdir(os.path.join(cand, head)):
            return f" Found {os.path.join(cand, head)}: did you mean --root {cand}?"
    if os.path.isdir(root) and any(f.endswith(".png") for f in os.listdir(root)):
        return f" {root} holds PNG files directly; --root must be the folder above {head}/."
    return ""


def _conditions(lay: Layout, conditions: tuple[str, ...] | None, root: str, split: str):
    if conditions is not None:
        return tuple(conditions)
    if lay.conditions == ("",) or len(lay.conditions) == 1:
        return lay.conditions
    # ACDC: use the weather conditions that were downloaded.
    present = tuple(
        c
        for c in lay.conditions
        if os.path.isdir(os.path.join(root, lay.image_dir.format(split=split, condition=c)))
    )
    return present or lay.conditions


def find_pairs(
    dataset: str,
    root: str,
    split: str,
    *,
    label_kind: str = "ids",
    labels: bool = True,
    conditions: tuple[str, ...] | None = None,
) -> Pairs:
    """Scan the distributed layout and pair every image with its label file.

    Raises LayoutError, naming the folder and the expected layout, when the root is wrong
    or an image folder is missing or empty. Unpaired files are returned, not raised, so that
    `lcmsm-prepare` can report all of them at once.
    """
    lay = layout(dataset)
    if not os.path.isdir(root):
        raise LayoutError(f"{root}: no such folder. Expected the {lay.title} root ({lay.example}).")
    images, label_files, unpaired_images, unpaired_labels = [], [], [], []
    for cond in _conditions(lay, conditions, root, split):
        image_dir = lay.image_dir.format(split=split, condition=cond)
        abs_image_dir = os.path.join(root, image_dir)
        if not os.path.isdir(abs_image_dir):
            raise LayoutError(
                f"{abs_image_dir} is missing, so {root} is not a {lay.title} root (expected "
                f"{lay.example}).{_suggest_root(root, image_dir)}"
            )
        found = _files_with_suffix(abs_image_dir, lay.image_suffix)
        if not found:
            raise LayoutError(
                f"{abs_image_dir} holds no *{lay.image_suffix} files; unpack the {lay.title} "
                f"images there (expected {lay.example})."
            )
        images += [os.path.join(image_dir, f) for f in found]
        if not labels:
            continue
        label_dir = lay.label_dir.format(split=split, condition=cond)
        suffix = lay.label_suffixes[label_kind]
        abs_label_dir = os.path.join(root, label_dir)
        if not os.path.isdir(abs_label_dir):
            raise LayoutError(
                f"{abs_label_dir} is missing: the {lay.title} labels are not unpacked under "
                f"{root} (expected {lay.example})."
            )
        on_disk = set(_files_with_suffix(abs_label_dir, suffix))
        wanted = {}
        for f in found:
            wanted[f[: -len(lay.image_suffix)] + suffix] = os.path.join(image_dir, f)
        for rel_label, rel_image in wanted.items():
            if rel_label in on_disk:
                label_files.append(os.path.join(label_dir, rel_label))
            else:
                unpaired_images.append(rel_image)
        unpaired_labels += [os.path.join(label_dir, f) for f in sorted(on_disk - set(wanted))]
    if labels:
        paired = set(unpaired_images)
        images = [f for f in images if f not in paired]
    return Pairs(images, label_files if labels else None, unpaired_images, unpaired_labels)


class PngSource:
    """Image (and label) PNGs under `root`; `source[i]` decodes pair i at native resolution.

    Picklable (paths only), so grain worker processes can open files themselves.
    """

    def __init__(
        self,
        root: str,
        images: list[str],
        labels: list[str] | None = None,
        *,
        id_table: dict[int, int] | None = None,
        label_reader: str = "index",
        name: str = "",
    ):
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels under {root}")
        self.root = root
        self.images = list(images)
        self.labels = None if labels is None else list(labels)
        self.label_reader = label_reader
        self.name = name or os.path.basename(os.path.normpath(root))
        table = id_table if id_table is not None else label_tables.TRAIN_ID_TO_TRAIN_ID
        self._lut = label_tables.lookup_table(table)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"PngSource({self.name!r}, {len(self)} images, root={self.root!r})"

    def describe_item(self, index: int) -> str:
        """The files of item `index`, for error messages."""
        files = os.path.join(self.root, self.images[index])
        if self.labels is not None:
            files += f" and its label {os.path.join(self.root, self.labels[index])}"
        return files

    def _prepare_hint(self) -> str:
        dataset = self.name.split("/")[0]
        command = (
            f"lcmsm-prepare --dataset {dataset} --root {self.root}"
            if dataset in LAYOUTS
            else "lcmsm-prepare"
        )
        return (
            f"Run `{command}` to check every file (--skip-bad leaves the bad ones out), or "
            "restore or remove this file."
        )

    def _read(self, read, rel: str, **kwargs) -> np.ndarray:
        """`read(path)`, with decoder errors turned into one that names the file."""
        path = os.path.join(self.root, rel)
        try:
            return read(path, **kwargs)
        except (pngio.LabelFormatError, pngio.ImageFormatError):
            raise  # already names the file and the fix
        except pngio.DECODE_ERRORS as err:
            raise pngio.UnreadableImageError(
                f"{path} cannot be read ({type(err).__name__}: {err}); it is missing, "
                f"truncated or corrupt. {self._prepare_hint()}"
            ) from err

    def read_image(self, index: int) -> np.ndarray:
        """uint8 RGB `[H, W, 3]`."""
        return self._read(pngio.read_rgb, self.images[index])

    def read_label_ids(self, index: int, exact: bool = False) -> np.ndarray:
        """The dataset's own ids `[H, W]` as stored in the label file."""
        if self.labels is None:
            raise ValueError(f"{self!r} has no labels")
        if self.label_reader == "channel0":
            return self._read(pngio.read_channel0_label, self.labels[index], exact=exact)
        return self._read(pngio.read_index_label, self.labels[index])

    def read_label(self, index: int) -> np.ndarray:
        """uint8 trainIds `[H, W]`, 255 = ignore (unknown ids are ignored too)."""
        ids = self.read_label_ids(index)
        if ids.dtype != np.uint8:
            ids = np.where((ids >= 0) & (ids < 256), ids, 255).astype(np.uint8)
        return self._lut[ids]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        example = {"image": self.read_image(index)}
        if self.labels is not None:
            example["label"] = self.read_label(index)
        return example


def _manifest_pairs(root, dataset, split, label_kind, conditions):
    """(images, labels) for the split from `lcmsm_manifest.json`, or None if not applicable."""
    found = manifest_lib.load_manifest(root)
    if found is None or found.get("dataset") != dataset or split not in found["splits"]:
        return None
    if found.get("label_kind") != label_kind:
        raise manifest_lib.ManifestError(
            f"{os.path.join(root, manifest_lib.MANIFEST_NAME)} was prepared with --labels "
            f"{found.get('label_kind')}, not {label_kind}; run lcmsm-prepare again with "
            f"--labels {label_kind}, or pass use_manifest=False"
        )
    if conditions is not None and tuple(found.get("conditions", ())) != tuple(conditions):
        return None
    entry = found["splits"][split]
    return entry["images"], entry.get("labels")


def open_source(
    dataset: str,
    root: str,
    split: str | None = None,
    *,
    labels: bool = True,
    label_kind: str = "ids",
    conditions: tuple[str, ...] | None = None,
    use_manifest: bool = True,
    manifest_dir: str | None = None,
) -> PngSource:
    """A PngSource for `dataset` ("gta5" | "synthia" | "cityscapes" | "acdc" | "darkzurich").

    `split` defaults to the first labelled split ("all" for GTA5/SYNTHIA, "train" for
    Cityscapes/ACDC, "val" for Dark Zurich). When `lcmsm-prepare` wrote a manifest into
    `root`, its validated file list is used (files it was told to skip stay out); otherwise
    the folders are scanned (`manifest_dir`: where it was written with --out, default
    `root`). `labels=False` gives an image-only source (e.g. for targets).
    """
    lay = layout(dataset)
    split = split or lay.labelled_splits[0]
    if labels and split not in lay.labelled_splits:
        raise ValueError(
            f"{lay.title} split {split!r} has no labels (labelled: {lay.labelled_splits}); "
            "pass labels=False"
        )
    listed = None
    if use_manifest:
        listed = _manifest_pairs(manifest_dir or root, dataset, split, label_kind, conditions)
    if listed is not None:
        images, label_files = listed
    else:
        pairs = find_pairs(
            dataset, root, split, label_kind=label_kind, labels=labels, conditions=conditions
        )
        if pairs.unpaired_images:
            shown = "\n  ".join(pairs.unpaired_images[:10])
            more = len(pairs.unpaired_images) - 10
            raise LayoutError(
                f"{len(pairs.unpaired_images)} {lay.title} images under {root} have no label "
                f"file:\n  {shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + f"\nRun `lcmsm-prepare --dataset {dataset} --root {root}` for a full report."
            )
        images, label_files = pairs.images, pairs.labels
    return PngSource(
        root,
        images,
        label_files if labels else None,
        id_table=lay.id_tables[label_kind],
        label_reader=lay.label_reader,
        name=f"{dataset}/{split}",
    )
