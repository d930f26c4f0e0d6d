"""Input-pipeline throughput: images/s of one worker through decode, resize and (RCS) crop.

`benchmark()` writes a few GTA5-sized (1914x1052) and Cityscapes-sized (2048x1024) PNG pairs
with realistic file sizes to a temporary folder (or reads a prepared dataset root) and times
the exact per-example work of the training pipeline in this process:

  source: PNG decode (image + palette label) -> id->trainId -> keep-ratio resize to 1280x704
          -> RCS class/image draw, 512 crop with cat_max_ratio, re-crops -> flip -> normalise
  target: PNG decode (2048x1024) -> resize to 1024x512 -> 512 crop -> flip -> normalise

A training step consumes B source + B target images, so the images/s one step needs divided by
the per-worker figure is the number of worker processes (or cores) the host must give it.
"""

import os
import tempfile
import time

import numpy as np

from lcmsm_jax.data import layout_writer, pipeline, rcs, sources

GTA5_SIZE = (1052, 1914)
CITYSCAPES_SIZE = (1024, 2048)


def street_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic RGB `[H, W, 3]` uint8 and a Cityscapes labelId map `[H, W]` uint8.

    Smooth colour fields with sensor-like noise compress about as well as game frames
    (~3 MB per 1914x1052 PNG), so decoding costs what it costs on the real data.
    """
    h, w = size
    ids = np.full((h, w), 23, np.uint8)  # sky
    ids[h // 2 :] = 7  # road
    for label_id in (11, 21, 26, 24, 17, 33, 25, 28, 19, 20, 32, 31, 27, 12, 13, 22, 8):
        y, x = rng.integers(0, h - h // 8), rng.integers(0, w - w // 8)
        ids[y : y + rng.integers(h // 16, h // 4), x : x + rng.integers(w // 16, w // 4)] = label_id
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 180, yy / h * 200, (xx + yy) / (h + w) * 160], -1)
    base += ids[..., None].astype(np.float32) * np.array([3.0, 5.0, 7.0], np.float32)
    image = base + rng.normal(0.0, 6.0, base.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), ids


def write_synthetic(root: str, dataset: str, num_images: int, seed: int = 0) -> None:
    """`num_images` GTA5-layout (palette labels) or Cityscapes-layout (train split, city
    "bench") pairs under `root`, in the true formats (`layout_writer`)."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        if dataset == "gta5":
            layout_writer.write_gta5(root, i, *street_scene(rng, GTA5_SIZE))
        else:
            scene = street_scene(rng, CITYSCAPES_SIZE)
            layout_writer.write_cityscapes(root, "train", "bench", i, *scene)


def time_examples(example_fn, num_samples: int, warmup: int = 2) -> float:
    """Images/s of calling `example_fn(k)` for k = 0 .. num_samples - 1 in this process."""
    for k in range(warmup):
        example_fn(k)
    start = time.perf_counter()
    for k in range(warmup, warmup + num_samples):
        example_fn(k)
    return num_samples / (time.perf_counter() - start)


def time_batches(dataset, num_batches: int, warmup: int = 2) -> float:
    """Images/s delivered by a grain dataset of batches (e.g. `pipeline.train_dataset` with
    `worker_count` workers), after `warmup` batches so that worker start-up is excluded."""
    it = iter(dataset)
    try:
        for _ in range(warmup):
            next(it)
        start, images = time.perf_counter(), 0
        for _ in range(num_batches):
            images += len(next(it)["image"])
        return images / (time.perf_counter() - start)
    finally:
        if hasattr(it, "close"):
            it.close()


def _example_fn(source, stream, *, scale, crop_size, cat_max_ratio, class_counts, min_pixels):
    view_kwargs = dict(scale=scale, crop_size=crop_size, cat_max_ratio=cat_max_ratio, flip_prob=0.5)
    sampler = None if class_counts is None else rcs.make_sampler(class_counts, 0.01, min_pixels)
    return pipeline.TrainExample(
        source, seed=0, stream=stream, sampler=sampler, sampling="uniform",
        view_kwargs=view_kwargs, min_class_pixels=min_pixels * 0.5,
    )  # fmt: skip


def benchmark(
    gta5_root: str | None = None,
    cityscapes_root: str | None = None,
    *,
    num_images: int = 3,
    num_samples: int = 20,
    crop_size: tuple[int, int] = (512, 512),
) -> dict[str, float]:
    """Per-worker images/s for the source (GTA5, RCS) and target (Cityscapes) examples.

    Without roots, synthetic pairs of the true sizes are written to a temporary folder.
    Returns {"source_images_per_s", "target_images_per_s", "pair_images_per_s"} where the
    last is source + target images per second when one worker alternates between them.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if gta5_root is None:
            gta5_root = os.path.join(tmp, "gta5")
            write_synthetic(gta5_root, "gta5", num_images)
        if cityscapes_root is None:
            cityscapes_root = os.path.join(tmp, "cityscapes")
            write_synthetic(cityscapes_root, "cityscapes", num_images)
        source = sources.open_source("gta5", gta5_root)
        target = sources.open_source("cityscapes", cityscapes_root, "train", labels=False)
        counts = rcs.compute_class_counts(source)
        source_fn = _example_fn(
            source, "source", scale=(1280, 720), crop_size=crop_size, cat_max_ratio=0.75,
            class_counts=counts, min_pixels=3000,
        )  # fmt: skip
        target_fn = _example_fn(
            target, "target", scale=(1024, 512), crop_size=crop_size, cat_max_ratio=1.0,
            class_counts=None, min_pixels=3000,
        )  # fmt: skip
        src = time_examples(source_fn, num_samples)
        tgt = time_examples(target_fn, num_samples)
    return {
        "source_images_per_s": src,
        "target_images_per_s": tgt,
        "pair_images_per_s": 2.0 / (1.0 / src + 1.0 / tgt),
    }
