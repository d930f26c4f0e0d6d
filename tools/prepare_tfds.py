"""Optional: build GTA5 / SYNTHIA as TFDS ArrayRecord datasets (or TFDS' own Cityscapes).

Needs `pip install tensorflow-datasets array-record` (the `tfds` extra). GTA5 and SYNTHIA are
built without TensorFlow: the original image PNGs are stored as they are and labels are
stored as trainId PNGs, in the order of the file source, so training reads them with
`config.data.<domain>.format = "tfds"` (`lcmsm_jax/data/tfds_source.py`) and gets the same
batches as from the files. Run `lcmsm-prepare` on the folder first; the build uses its
validated file list.

  python tools/prepare_tfds.py --dataset gta5 --root /data/gta5 --data-dir /data/tfds
  python tools/prepare_tfds.py --dataset synthia --root /data/synthia --data-dir /data/tfds
  # TFDS' Cityscapes builder (its own code needs TensorFlow): the official zips
  # leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip in MANUAL_DIR.
  python tools/prepare_tfds.py --dataset cityscapes --manual-dir /data/zips --data-dir /data/tfds

Read back: --config.data.source.format=tfds --config.data.source.tfds_data_dir=/data/tfds
(docs/data.md), or `tfds_source.open_tfds("gta5", "all", data_dir="/data/tfds")`.
"""

import io
import sys

import numpy as np
from absl import flags
from PIL import Image

from lcmsm_jax import config_cli
from lcmsm_jax.data import rcs, sources
from lcmsm_jax.progress import say

PROG = "tools/prepare_tfds.py"
try:
    import tensorflow_datasets as tfds
except ImportError as e:  # the builders below subclass a TFDS class
    sys.exit(f"{PROG}: needs tensorflow-datasets and array-record ({e}): pip install -e '.[tfds]'")


def _png(array: np.ndarray) -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(array, "L").save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


class _PngPairBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Examples: image (original PNG), label (trainIds, PNG), file_name, class_pixels [19]."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "Records in the file source's order.", "1.0.0": "Shuffled."}
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
        # Unshuffled: record i is the file source's image i, so both formats train alike.
        return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

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


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("dataset", None, ["gta5", "synthia", "cityscapes"], "Dataset to build.",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_string("data_dir", None, "TFDS data directory to write.", flag_values=fv)
    flags.DEFINE_string("root", None, "gta5/synthia: the unpacked dataset folder.", flag_values=fv)
    flags.DEFINE_string("manual_dir", None, "cityscapes: folder with the official zips.",
                        flag_values=fv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Build the dataset the flags name; usage errors: message and exit 2."""
    try:
        fv = config_cli.parse(
            PROG, argv, _define, required=("dataset", "data_dir"), takes_config=False,
            description=__doc__.split("\n")[0],
            examples=[
                f"python {PROG} --dataset gta5 --root /data/gta5 --data-dir /data/tfds",
                f"python {PROG} --dataset cityscapes --manual-dir /data/zips --data-dir /data/tfds",
            ],
        )  # fmt: skip
        if fv.dataset == "cityscapes" and not fv.manual_dir:
            raise config_cli.UsageError(f"{PROG}: --manual-dir is required for cityscapes")
        if fv.dataset != "cityscapes" and not fv.root:
            raise config_cli.UsageError(f"{PROG}: --root is required for {fv.dataset}")
    except config_cli.UsageError as err:
        return config_cli.report_usage(PROG, err)
    name = build(fv.dataset, fv.data_dir, root=fv.root, manual_dir=fv.manual_dir)
    say(f"built {name} in {fv.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(config_cli.run_main(PROG, sys.argv[1:], main))
