"""TFDS ArrayRecord datasets as random-access sources (`config.data.<domain>.format = "tfds"`).

`tools/prepare_tfds.py` builds GTA5 and SYNTHIA as "lcmsm_gta5" / "lcmsm_synthia" (the
original image PNGs, trainId label PNGs and per-image class pixel counts, in the file
source's order) and TFDS' own "cityscapes/semantic_segmentation" builder builds Cityscapes.
`TfdsSource` reads them with `tfds.data_source`, without TensorFlow, and decodes the PNGs
like the file sources do, so both formats give identical arrays.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np

from lcmsm_jax.data import labels as label_tables
from lcmsm_jax.data import pngio, rcs

FORMATS = ("files", "tfds")  # config.data.<domain>.format


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """How one dataset is stored in TFDS."""

    name: str  # default TFDS name
    image_key: str
    label_key: str
    id_table: dict[int, int] | None  # label ids -> trainIds; None: stored as trainIds
    splits: dict[str, str]  # the dataset's split name (config.data.<domain>.split) -> TFDS's
    build: str  # the command that builds it


_TOOL = "python tools/prepare_tfds.py"
TFDS_DATASETS: dict[str, TfdsDataset] = {
    "gta5": TfdsDataset("lcmsm_gta5", "image", "label", None, {"all": "train"},
                        f"{_TOOL} --dataset gta5 --root /data/gta5 --data-dir DIR"),
    "synthia": TfdsDataset("lcmsm_synthia", "image", "label", None, {"all": "train"},
                           f"{_TOOL} --dataset synthia --root /data/synthia --data-dir DIR"),
    "cityscapes": TfdsDataset(
        "cityscapes/semantic_segmentation", "image_left", "segmentation_label",
        label_tables.CITYSCAPES_ID_TO_TRAIN_ID,
        {"train": "train", "val": "validation", "test": "test"},
        f"{_TOOL} --dataset cityscapes --manual-dir /data/zips --data-dir DIR",
    ),
}  # fmt: skip


def tfds_dataset(dataset: str) -> TfdsDataset:
    """The TFDS storage of `dataset`; ValueError naming the ones that have one."""
    if dataset not in TFDS_DATASETS:
        raise ValueError(
            f"{dataset!r} has no TFDS build (those with one: {', '.join(TFDS_DATASETS)}); "
            "read it with format 'files'"
        )
    return TFDS_DATASETS[dataset]


def open_tfds(
    dataset: str, split: str, *, name: str = "", data_dir: str = "", labels: bool = True
) -> TfdsSource:
    """A TfdsSource for `dataset`'s `split` (its own split names, e.g. "all", "val").

    `name`: the TFDS name ("" = the dataset's default); `data_dir`: the TFDS data folder
    ("" = TFDS' default, $TFDS_DATA_DIR or ~/tensorflow_datasets). `labels=False` gives an
    image-only source.
    """
    entry = tfds_dataset(dataset)
    if split not in entry.splits:
        raise ValueError(
            f"{dataset} split {split!r} has no TFDS counterpart (have {', '.join(entry.splits)})"
        )
    return TfdsSource(
        name or entry.name,
        entry.splits[split],
        data_dir=data_dir or None,
        image_key=entry.image_key,
        label_key=entry.label_key if labels else None,
        id_table=entry.id_table,
    )


class TfdsSource:
    """An ArrayRecord TFDS dataset read with `tfds.data_source` (no TensorFlow needed).

    Works with the datasets `tools/prepare_tfds.py` builds ("lcmsm_gta5", "lcmsm_synthia":
    keys "image" and "label", labels already trainIds) and with TFDS' own
    "cityscapes/semantic_segmentation" (image_key="image_left",
    label_key="segmentation_label", id_table=CITYSCAPES_ID_TO_TRAIN_ID). PNG bytes are
    decoded here, like the file sources, so both kinds of source give identical arrays.
    `label_key=None` gives an image-only source.
    """

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: str | None = None,
        image_key: str = "image",
        label_key: str | None = "label",
        id_table: dict[int, int] | None = None,
    ):
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key
        table = id_table if id_table is not None else label_tables.TRAIN_ID_TO_TRAIN_ID
        self._lut = label_tables.lookup_table(table)
        self._records = None  # opened lazily, so that worker processes open their own

    def _open(self):
        if self._records is None:
            try:
                import tensorflow_datasets as tfds
            except ImportError as e:
                raise ImportError(
                    "TfdsSource needs tensorflow-datasets and array-record: "
                    "pip install tensorflow-datasets array-record"
                ) from e
            keys = [self.image_key] + ([self.label_key] if self.label_key else [])
            try:
                # download=False: a missing build is an error here, never a download.
                self._records = tfds.data_source(
                    self.name,
                    split=self.split,
                    data_dir=self.data_dir,
                    download=False,
                    decoders={k: tfds.decode.SkipDecoding() for k in keys},
                )
            except (tfds.core.DatasetNotFoundError, AssertionError, NotImplementedError) as e:
                where = self.data_dir or os.environ.get("TFDS_DATA_DIR", "TFDS' default folder")
                raise FileNotFoundError(
                    f"{self!r}: no ArrayRecord build of {self.name} in {where}; build it "
                    "with tools/prepare_tfds.py (docs/data.md) or set the data folder"
                ) from e
        return self._records

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_records": None}

    @property
    def has_labels(self) -> bool:
        return self.label_key is not None

    def __len__(self) -> int:
        return len(self._open())

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, data_dir={self.data_dir!r})"

    def _label(self, record) -> np.ndarray:
        ids = pngio.read_index_label(io.BytesIO(record[self.label_key]))
        ids = ids[..., 0] if ids.ndim == 3 else ids
        return self._lut[ids]

    def read_label(self, index: int) -> np.ndarray:
        """uint8 trainIds `[H, W]`."""
        return self._label(self._open()[int(index)])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._open()[int(index)]
        try:
            example = {"image": pngio.read_rgb(io.BytesIO(record[self.image_key]))}
            if self.label_key:
                example["label"] = self._label(record)
        except (pngio.LabelFormatError, pngio.ImageFormatError) as err:
            raise type(err)(f"{self!r} record {index}: {err}") from err
        except pngio.DECODE_ERRORS as err:
            raise pngio.UnreadableImageError(
                f"{self!r} record {index} cannot be decoded ({type(err).__name__}: {err}); "
                "build the dataset again (tools/prepare_tfds.py)"
            ) from err
        return example

    def class_counts(self) -> np.ndarray:
        """`[N, 19]` class pixel counts: the stored "class_pixels" feature when the dataset
        has one (reads every record once), else counted from the labels (decodes them all)."""
        records = self._open()
        if "class_pixels" in records.dataset_info.features:
            return np.stack([np.asarray(records[i]["class_pixels"]) for i in range(len(self))])
        return rcs.compute_class_counts(self)
