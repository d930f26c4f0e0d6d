"""The training input pipeline's speed: images/s per grain worker count, on synthetic PNGs
of GTA5's and Cityscapes' true sizes (decoding, resizing and cropping them is the work)."""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Sequence

import ml_collections


def benchmark_data(
    config: ml_collections.ConfigDict, *, workers: Sequence[int], num_batches: int, num_images: int
) -> dict:
    """Images/s of the training input pipeline (GTA5-size source with rare-class sampling,
    Cityscapes-size target) per grain worker count, on synthetic PNGs of the true sizes."""
    from lcmsm_jax.data import pipeline, rcs, sources, throughput

    batch, crop = config.data.batch_size, tuple(config.data.crop_size)
    result = {
        "what": "data",
        "machine": platform.platform(),
        "shapes": f"batch {batch}, crops {crop[0]}x{crop[1]}, GTA5 1914x1052 -> 1280x720, "
        f"Cityscapes 2048x1024 -> 1024x512",
        "per_worker_count": {},
        # What data.worker_count = -1 gives each of the two training iterators here.
        "automatic_worker_count": pipeline.worker_count(-1, iterators=2),
        "cores": pipeline.available_cores(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: f"{tmp}/{name}" for name in ("gta5", "cityscapes")}
        for name, root in roots.items():
            throughput.write_synthetic(root, name, num_images)
        source = sources.open_source("gta5", roots["gta5"])
        target = sources.open_source("cityscapes", roots["cityscapes"], "train", labels=False)
        counts = rcs.compute_class_counts(source)
        common = dict(batch_size=batch, seed=0, crop_size=crop, num_threads=config.data.num_threads)
        for count in workers:
            source_ds = pipeline.train_dataset(
                source, stream="source", scale=(1280, 720), class_counts=counts,
                worker_count=count, **common,
            )  # fmt: skip
            target_ds = pipeline.train_dataset(
                target, stream="target", scale=(1024, 512), cat_max_ratio=1.0,
                sampling="uniform", worker_count=count, **common,
            )  # fmt: skip
            src = throughput.time_batches(source_ds, num_batches)
            tgt = throughput.time_batches(target_ds, num_batches)
            result["per_worker_count"][str(count)] = {
                "source_images_per_s": src,
                "target_images_per_s": tgt,
                # One step takes B source and B target images.
                "pair_images_per_s": 2.0 / (1.0 / src + 1.0 / tgt),
            }
    return result


def describe_data(result: dict) -> list[str]:
    """The lines `lcmsm-benchmark --what data` prints: one per worker count, then what the
    automatic worker count is here."""
    lines = []
    for count, row in result["per_worker_count"].items():
        lines.append(
            f"[data] host CPU | {result['shapes']} | {count} grain workers: source "
            f"{row['source_images_per_s']:.2f}, target {row['target_images_per_s']:.2f}, "
            f"pair {row['pair_images_per_s']:.2f} images/s"
        )
    lines.append(
        f"[data] data.worker_count = -1 gives {result['automatic_worker_count']} workers per "
        f"domain on this host ({result['cores']} cores)"
    )
    return lines
