"""Optional: build GTA5 / SYNTHIA as TFDS ArrayRecord datasets (or TFDS' own Cityscapes).

Needs `pip install tensorflow-datasets array-record` (the `tfds` extra). GTA5 and SYNTHIA are
built without TensorFlow: the original image PNGs are stored as they are and labels are
stored as trainId PNGs, so training reads them with `sources.TfdsSource` and no id table.
Run `lcmsm-prepare` on the folder first; the build uses its validated file list.

  python tools/prepare_tfds.py --dataset gta5 --root /data/gta5 --data-dir /data/tfds
  python tools/prepare_tfds.py --dataset synthia --root /data/synthia --data-dir /data/tfds
  # TFDS' Cityscapes builder (its own code needs TensorFlow): the official zips
  # leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip in MANUAL_DIR.
  python tools/prepare_tfds.py --dataset cityscapes --manual-dir /data/zips --data-dir /data/tfds

Read back:
  TfdsSource("lcmsm_gta5", "train", data_dir="/data/tfds")
  TfdsSource("cityscapes/semantic_segmentation", "train", data_dir="/data/tfds",
             image_key="image_left", label_key="segmentation_label",
             id_table=labels.CITYSCAPES_ID_TO_TRAIN_ID)
"""

import argparse
import io
import sys

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lcmsm_jax.data import rcs, sources


def _png(array: np.ndarray) -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(array, "L").save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


class _PngPairBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Examples: image (original PNG), label (trainIds, PNG), file_name, class_pixels [19]."""

    VERSION = tfds.core.Version("1.0.0")
    DATASET = ""  # key of sources.LAYOUTS
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the unpacked dataset folder as --root."

    def __init__(self, *, root: str | None = None, **kwargs):
        self._root = root  # only needed to build; reading uses the data_dir alone
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.Image(shape=(None, None, 1)),
                "file_name": tfds.features.Text(),
                "class_pixels": tfds.features.Tensor(shape=(19,), dtype=np.int64),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        source = sources.open_source(self.DATASET, self._root)
        for i, image in enumerate(source.images):
            label = source.read_label(i)
            yield (
                image,
                {
                    "image": f"{self._root}/{image}",
                    "label": _png(label),
                    "file_name": image,
                    "class_pixels": rcs.class_pixel_counts(label),
                },
            )


class LcmsmGta5(_PngPairBuilder):
    DATASET = "gta5"


class LcmsmSynthia(_PngPairBuilder):
    DATASET = "synthia"


BUILDERS = {"gta5": LcmsmGta5, "synthia": LcmsmSynthia}


def build(dataset: str, data_dir: str, root: str | None = None, manual_dir: str | None = None):
    """Build one dataset into `data_dir` as ArrayRecord; returns the TFDS name to read."""
    if dataset == "cityscapes":
        builder = tfds.builder(
            "cityscapes/semantic_segmentation", data_dir=data_dir, file_format="array_record"
        )
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        builder.download_and_prepare(download_config=config)
        return "cityscapes/semantic_segmentation"
    builder = BUILDERS[dataset](root=root, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=["gta5", "synthia", "cityscapes"])
    parser.add_argument("--data-dir", required=True, help="TFDS data directory to write")
    parser.add_argument("--root", help="gta5/synthia: the unpacked dataset folder")
    parser.add_argument("--manual-dir", help="cityscapes: folder with the official zips")
    args = parser.parse_args(argv)
    if args.dataset == "cityscapes" and not args.manual_dir:
        parser.error("--manual-dir is required for cityscapes")
    if args.dataset != "cityscapes" and not args.root:
        parser.error(f"--root is required for {args.dataset}")
    name = build(args.dataset, args.data_dir, root=args.root, manual_dir=args.manual_dir)
    print(f"built {name} in {args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
