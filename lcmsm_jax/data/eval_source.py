"""The evaluation split of `config.data.eval`: its source and its per-process batches.

Images are resized keeping their aspect ratio (Cityscapes 2048x1024 -> 1024x512), labels
stay at full resolution (docs/method.md §5.6); `pipeline.eval_dataset` pads the last batches
so that every process steps together.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from lcmsm_jax.data import datasets, pipeline, sources


class EvalSource:
    """The first `limit` items of a source (0 = all). Items of an unlabelled source (a test
    split) get an all-ignore label at image size, so they run through the same pipeline and
    count nothing: their predictions can be exported, their metrics are empty."""

    def __init__(self, source, limit: int = 0):
        self.source = source
        self.count = len(source) if limit <= 0 else min(int(limit), len(source))
        self.labelled = getattr(source, "has_labels", True)
        images = getattr(source, "images", None)
        self.images = None if images is None else list(images)[: self.count]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """{image [H, W, 3] uint8, label [H, W] uint8 trainIds (255 = ignore), ...}."""
        if not 0 <= int(index) < self.count:
            raise IndexError(index)
        example = dict(self.source[int(index)])
        if "label" not in example:
            example["label"] = np.full(example["image"].shape[:2], 255, np.uint8)
        return example


def open_eval_source(config: ml_collections.ConfigDict) -> EvalSource:
    """config.data.eval -> EvalSource; splits without labels (e.g. Cityscapes test) open
    image-only."""
    data_eval = config.data.eval
    if data_eval.dataset == "synthetic":
        source = datasets.open_domain(
            data_eval, config.data, labels_wanted=True, seed=config.seed,
            synthetic_domain="target",
        )  # fmt: skip
        return EvalSource(source, data_eval.max_images)
    if not data_eval.root:
        raise ValueError(
            "config.data.eval.root is empty: set it to the dataset folder, e.g. "
            "--config.data.eval.root=/data/cityscapes"
        )
    labelled = data_eval.split in sources.layout(data_eval.dataset).labelled_splits
    source = sources.open_source(
        data_eval.dataset, data_eval.root, data_eval.split, labels=labelled
    )
    return EvalSource(source, data_eval.max_images)


def eval_batches(config: ml_collections.ConfigDict, source, global_batch: int):
    """This process's batches of `source` as config.data.eval reads them: {image [b, h, w,
    3], label [b, H, W], valid [b], index [b]} with b = global_batch / process count."""
    data = config.data
    return pipeline.eval_dataset(
        source,
        batch_size=global_batch // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        scale=tuple(data.eval.scale),
        num_threads=data.num_threads,
        worker_count=pipeline.worker_count(data.worker_count),
    )
