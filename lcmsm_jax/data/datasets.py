"""From `config.data` to sources and per-process iterators (training and evaluation)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from lcmsm_jax.data import labels, pipeline, rcs, sources, tfds_source

# Synthetic splits are disjoint seed ranges of the same generator.
_SYNTHETIC_SPLIT_SEEDS = {"all": 0, "train": 0, "val": 1_000_003}


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The class names the model predicts (trainId order)."""
    if config.model.num_classes != len(labels.CITYSCAPES_CLASSES):
        raise ValueError(
            f"config.model.num_classes = {config.model.num_classes}; every supported dataset "
            f"uses the {len(labels.CITYSCAPES_CLASSES)} Cityscapes classes"
        )
    return labels.CITYSCAPES_CLASSES


def open_domain(
    domain: ml_collections.ConfigDict,
    data: ml_collections.ConfigDict,
    *,
    labels_wanted: bool,
    seed: int,
    synthetic_domain: str,
):
    """A random-access source for one `config.data.{source,target,eval}` entry: the
    dataset's files under `root`, or its TFDS build with `format = "tfds"`."""
    if domain.dataset == "synthetic":
        from lcmsm_jax.data import synthetic

        return synthetic.SyntheticSource(
            synthetic_domain,
            data.synthetic.num_images,
            size=tuple(data.synthetic.size),
            seed=seed + _SYNTHETIC_SPLIT_SEEDS.get(domain.split, 0),
            labels=labels_wanted,
            variant=data.synthetic.get("variant", "default"),
        )
    if domain.get("format", "files") == "tfds":
        return tfds_source.open_tfds(
            domain.dataset, domain.split, name=domain.tfds_name,
            data_dir=domain.tfds_data_dir, labels=labels_wanted,
        )  # fmt: skip
    if not domain.root:
        raise ValueError(
            f"config.data: dataset {domain.dataset!r} needs a root directory "
            "(set e.g. --config.data.source.root=/data/gta5)"
        )
    return sources.open_source(domain.dataset, domain.root, domain.split, labels=labels_wanted)


def _class_counts(domain: ml_collections.ConfigDict, source) -> np.ndarray | None:
    if not domain.rcs:
        return None
    if domain.dataset == "synthetic":
        return rcs.compute_class_counts(source)
    if isinstance(source, tfds_source.TfdsSource):  # stored in lcmsm_* builds, else counted
        return source.class_counts()
    return rcs.load_class_counts(domain.root, domain.split, source)


def train_iterators(
    config: ml_collections.ConfigDict,
    *,
    target_labels: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """(source iterator, target iterator) of this process's share of each global batch.

    `target_labels` loads target labels too (only the target-supervised oracle uses them).
    Target batches carry "target_valid" when config.data.target.pseudo_margins is non-zero.
    The global batch (its images, their order and crops) is the same for any process count
    (`pipeline.BlockDraws`); process_index / process_count default to this process's (tests
    name others).
    """
    data = config.data
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if data.batch_size % count:
        raise ValueError(
            f"config.data.batch_size = {data.batch_size} is not divisible by the {count} "
            "processes of this run"
        )
    shard = dict(process_index=index, process_count=count)
    common = dict(
        batch_size=data.batch_size // count,
        seed=config.seed,
        crop_size=tuple(data.crop_size),
        num_threads=data.num_threads,
        worker_count=pipeline.worker_count(data.worker_count, iterators=2),
        **shard,
    )
    source = open_domain(
        data.source, data, labels_wanted=True, seed=config.seed, synthetic_domain="source"
    )
    target = open_domain(
        data.target, data, labels_wanted=target_labels, seed=config.seed,
        synthetic_domain="target",
    )  # fmt: skip
    source_ds = pipeline.train_dataset(
        source,
        stream="source",
        scale=tuple(data.source.scale),
        cat_max_ratio=data.source.cat_max_ratio,
        class_counts=_class_counts(data.source, source),
        rcs_temperature=data.source.rcs_temperature,
        rcs_min_pixels=data.source.rcs_min_pixels,
        rcs_min_crop_ratio=data.source.rcs_min_crop_ratio,
        **common,
    )
    target_ds = pipeline.train_dataset(
        target,
        stream="target",
        scale=tuple(data.target.scale),
        cat_max_ratio=1.0,
        sampling=data.target.sampling,
        pseudo_margins=tuple(data.target.get("pseudo_margins", (0, 0, 0, 0))),
        **common,
    )
    return iter(source_ds), iter(target_ds)
