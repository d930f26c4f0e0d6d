"""Per-process training and evaluation input pipelines on grain, and host-local -> global arrays.

Training streams are infinite sequences of *draws* k = 0, 1, 2, ...; draw k is a pure function
of (seed, stream name, k): its own numpy Generator picks the image (RCS class + image, or the
k-th entry of a per-epoch permutation), the crop and the flip. Global batch b holds draws
b*B .. (b+1)*B - 1 in order, and process p of P reads the p-th block of B/P of them
(`BlockDraws`): joined in process order, the processes' shares are exactly the
single-process batch, row for row, so a row's augmentation in the step does not depend on P.
Source and target are separate streams (different names), hence independent.

Batches are dicts of numpy arrays:
  train: image [B, h, w, 3] float32 normalised, label [B, h, w] int32 (255 = ignore; only if
         the source has labels), index [B] int32 (image index in the source), target_valid
         [B, h, w] uint8 (1 where pseudo-labels count; only with non-zero pseudo_margins)
  eval:  image [B, h, w, 3] float32 (keep-ratio resized), label [B, H, W] int32 at native
         resolution, valid [B] bool (False on padding), index [B] int32 (-1 on padding);
         a batch whose images differ in size is {"parts": [batch, ...]}, one full batch per
         size with the other rows padding (`stack_by_size`)

Iterators are grain `DatasetIterator`s: `get_state()` / `set_state()` resume at the next batch,
and orbax saves them with `grain.checkpoint.CheckpointSave(iterator)` in a Composite
checkpoint (restore with `CheckpointRestore(iterator)`).
"""

import functools
import os
import sys
import zlib

import grain
import jax
import numpy as np
from absl import flags

from lcmsm_jax.data import rcs
from lcmsm_jax.data import transforms as T


def _stream_key(stream: str) -> int:
    # A stable (process- and run-independent) integer per stream name.
    return zlib.crc32(stream.encode())


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, stream_key: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, stream_key, 1, epoch]).permutation(n)


def train_view(
    image: np.ndarray,
    label: np.ndarray | None,
    rng: np.random.Generator,
    *,
    scale: tuple[int, int],
    crop_size: tuple[int, int],
    cat_max_ratio: float,
    flip_prob: float,
    rare_class: int | None = None,
    min_class_pixels: float = 0.0,
    max_retries: int = 10,
    pseudo_margins: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> dict[str, np.ndarray]:
    """Resize, crop (cat_max_ratio), flip, normalise and pad one image `[H, W, 3]` uint8.

    With `rare_class`, the crop + flip is re-drawn up to `max_retries` times until the crop
    holds more than `min_class_pixels` pixels of it (counted in the resized crop); the last
    draw is kept regardless.
    Returns image `[h, w, 3]` float32 and label `[h, w]` int32 (h, w = crop_size). Non-zero
    `pseudo_margins` (top, bottom, left, right) add target_valid `[h, w]` uint8: the margin
    mask made at the image's own size, resized (nearest), cropped and flipped with the image
    and padded with 0 (docs/method.md §5.7).
    """
    size = T.keep_ratio_size(*image.shape[:2], scale)
    full_label = None if label is None else T.resize_label(label, size)
    for attempt in range(max_retries + 1):
        if full_label is None:
            box = T.random_box(*size, crop_size, rng)
        else:
            box = T.crop_box_with_cat_max_ratio(full_label, crop_size, cat_max_ratio, rng)
        flip = rng.random() < flip_prob
        if rare_class is None or attempt == max_retries:
            break
        if np.count_nonzero(full_label[box.slices()] == rare_class) > min_class_pixels:
            break
    # Only the accepted window of the image is ever resampled.
    crop_image = T.resize_image(image, size, box)
    crop_label = None if full_label is None else full_label[box.slices()]
    crop_valid = None
    if any(pseudo_margins):  # draws nothing: the crops and flips stay those of no margins
        valid = T.valid_margin_mask(*image.shape[:2], pseudo_margins)
        crop_valid = T.resize_label(valid, size, box)
    if flip:
        crop_image = crop_image[:, ::-1]
        crop_label = None if crop_label is None else crop_label[:, ::-1]
        crop_valid = None if crop_valid is None else crop_valid[:, ::-1]
    crop_image, crop_label = T.pad(crop_image, crop_label, crop_size)
    view = {"image": T.normalize(crop_image)}
    if crop_label is not None:
        view["label"] = crop_label.astype(np.int32)
    if crop_valid is not None:
        view["target_valid"] = np.ascontiguousarray(T.pad_mask(crop_valid, crop_size))
    return view


def _describe(source, index: int) -> str:
    """The files of item `index` when the source knows them, else the source and index."""
    describe = getattr(source, "describe_item", None)
    return describe(index) if describe is not None else f"{source!r} item {index}"


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]} (width x height)"


class BlockDraws:
    """Position m of process p's stream -> global draw index: global batch b holds draws
    [b*B, (b+1)*B) and process p reads rows [p*B/P, (p+1)*B/P) of it. A picklable callable
    for `MapDataset.map`."""

    def __init__(self, process_index: int, process_count: int, per_process: int):
        self.process_index, self.process_count = process_index, process_count
        self.per_process = per_process

    def __call__(self, m: int) -> int:
        batch, row = divmod(int(m), self.per_process)
        return (batch * self.process_count + self.process_index) * self.per_process + row


class TrainExample:
    """Draw index k -> one training example; a picklable callable for `MapDataset.map`."""

    def __init__(self, source, *, seed, stream, sampler, sampling, view_kwargs, min_class_pixels):
        self.source = source
        self.seed = seed
        self.stream_key = _stream_key(stream)
        self.sampler = sampler
        self.sampling = sampling
        self.view_kwargs = view_kwargs
        self.min_class_pixels = min_class_pixels

    def _pick(self, k: int, rng: np.random.Generator) -> tuple[int, int | None]:
        if self.sampler is not None:
            rare_class, index = self.sampler.draw(rng)
            return index, rare_class
        n = len(self.source)
        if self.sampling == "uniform":
            return int(rng.integers(n)), None
        return int(_epoch_permutation(n, self.seed, self.stream_key, k // n)[k % n]), None

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.stream_key, 0, int(k)])
        index, rare_class = self._pick(int(k), rng)
        example = self.source[index]
        label = example.get("label")
        if label is not None and label.shape != example["image"].shape[:2]:
            raise ValueError(
                f"{_describe(self.source, index)}: the image is {_hw(example['image'].shape)} "
                f"but the label is {_hw(label.shape)}; run lcmsm-prepare on the dataset (it "
                "finds every such pair; --skip-bad leaves them out) or remove the pair"
            )
        view = train_view(
            example["image"],
            label,
            rng,
            rare_class=rare_class,
            min_class_pixels=self.min_class_pixels,
            **self.view_kwargs,
        )
        view["index"] = np.int32(index)
        return view


# `worker_count(-1)`: cores kept for the training process itself (JAX's dispatch and, on
# CPU, XLA's own threads), and the most workers one iterator gets.
RESERVED_CORES = 2
MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(requested: int, *, iterators: int = 1, cores: int | None = None) -> int:
    """Grain worker processes per iterator: `requested` if >= 0; for -1 (automatic), the
    cores this process may use (its CPU affinity, which respects job schedulers) less
    RESERVED_CORES, shared by `iterators` iterators, at most MAX_AUTO_WORKERS each.

    0 reads in-process: a 2-core machine gets 0, a 16-core GPU host 7 per domain for
    training (one GTA5-size worker decodes ~20 images/s; a fast step eats ~70).
    """
    if requested >= 0:
        return requested
    cores = available_cores() if cores is None else cores
    return min(MAX_AUTO_WORKERS, max(0, (cores - RESERVED_CORES) // iterators))


def _to_iter(ds, num_threads: int, prefetch_batches: int, worker_count: int, worker_buffer: int):
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
    )
    if worker_count > 0:
        # grain's worker processes read absl flags; outside an absl app (tests, notebooks,
        # plain scripts) nothing parsed them, so settle for the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=worker_buffer
            )
        )
    return it


def train_dataset(
    source,
    *,
    batch_size: int,
    seed: int,
    stream: str,
    process_index: int = 0,
    process_count: int = 1,
    scale: tuple[int, int] = (1280, 720),
    crop_size: tuple[int, int] = (512, 512),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    class_counts: np.ndarray | None = None,
    rcs_temperature: float = 0.01,
    rcs_min_pixels: int = 3000,
    rcs_min_crop_ratio: float = 0.5,
    sampling: str = "epoch",
    pseudo_margins: tuple[int, int, int, int] = (0, 0, 0, 0),
    num_threads: int = 2,
    prefetch_batches: int = 4,
    worker_count: int = 0,
    worker_buffer: int = 2,
) -> grain.IterDataset:
    """Infinite per-process training batches of `batch_size` (this process's share).

    source: a source (`source[i]` -> {"image", "label"?}) such as `sources.open_source(...)`.
    stream: name of the stream ("source" / "target"); different names are independent.
    class_counts: `[len(source), 19]` pixel counts; given, draws use rare-class sampling
      (T = rcs_temperature, candidates > rcs_min_pixels, crop re-drawn until it holds
      > rcs_min_pixels * rcs_min_crop_ratio pixels of the class).
    sampling: without RCS, "epoch" (a fresh permutation per pass) or "uniform" (with
      replacement, as the reference draws its target images).
    cat_max_ratio: 0.75 for the source, 1.0 (no check) for the target.
    pseudo_margins: (top, bottom, left, right) rows / columns of each loaded image whose
      pseudo-labels do not count (HRDA: (30, 240, 30, 30)); non-zero adds "target_valid".
    num_threads / worker_count: reader threads per process / grain worker processes (0 = none).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if sampling not in ("epoch", "uniform"):
        raise ValueError(f"sampling must be 'epoch' or 'uniform', got {sampling!r}")
    if len(pseudo_margins) != 4 or min(pseudo_margins) < 0:
        raise ValueError(f"pseudo_margins must be 4 numbers >= 0, got {pseudo_margins!r}")
    sampler = None
    if class_counts is not None:
        if len(class_counts) != len(source):
            raise ValueError(f"class_counts has {len(class_counts)} rows for {len(source)} images")
        sampler = rcs.make_sampler(class_counts, rcs_temperature, rcs_min_pixels)
    view_kwargs = dict(
        scale=tuple(scale),
        crop_size=tuple(crop_size),
        cat_max_ratio=cat_max_ratio,
        flip_prob=flip_prob,
        pseudo_margins=tuple(int(m) for m in pseudo_margins),
    )
    example = TrainExample(
        source,
        seed=seed,
        stream=stream,
        sampler=sampler,
        sampling=sampling,
        view_kwargs=view_kwargs,
        min_class_pixels=rcs_min_pixels * rcs_min_crop_ratio,
    )
    positions = sys.maxsize // (batch_size * process_count)  # endless in practice
    ds = grain.MapDataset.range(0, positions).map(
        BlockDraws(process_index, process_count, batch_size)
    )
    ds = ds.map(example).batch(batch_size, drop_remainder=True)
    return _to_iter(ds, num_threads, prefetch_batches, worker_count, worker_buffer)


class EvalExample:
    """Position m of this process's shard -> one evaluation example (padding past the end)."""

    def __init__(self, source, scale, process_index, process_count):
        self.source = source
        self.scale = tuple(scale)
        self.process_index = process_index
        self.process_count = process_count

    def __call__(self, m: int) -> dict[str, np.ndarray]:
        n = len(self.source)
        k = self.process_index + int(m) * self.process_count
        valid = k < n
        # Padding loads a real image (for its shape) and blanks it out: the shard's last
        # image, or image 0 when this process has none.
        own = range(self.process_index, n, self.process_count)
        index = k if valid else (own[-1] if own else 0)
        example = self.source[index]
        size = T.keep_ratio_size(*example["image"].shape[:2], self.scale)
        out = {"image": T.normalize(T.resize_image(example["image"], size))}
        if "label" in example:
            out["label"] = example["label"].astype(np.int32)
        if not valid:
            out["image"][:] = 0.0
            if "label" in out:
                out["label"][:] = 255
        out["valid"] = np.bool_(valid)
        out["index"] = np.int32(k if valid else -1)
        return out


def eval_dataset(
    source,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    scale: tuple[int, int] = (1024, 512),
    num_threads: int = 2,
    prefetch_batches: int = 2,
    worker_count: int = 0,
    worker_buffer: int = 2,
) -> grain.IterDataset:
    """One pass over this process's shard (items p, p + P, ...) in batches of `batch_size`.

    Every process gets the same number of batches, ceil(ceil(N / P) / B); the last ones are
    padded with `valid = False`, label 255 and index -1 so that all processes step together.
    A batch of images of several sizes comes as same-size parts (`stack_by_size`).
    """
    per_process = -(-len(source) // process_count)
    padded = -(-per_process // batch_size) * batch_size
    ds = grain.MapDataset.range(padded).map(
        EvalExample(source, scale, process_index, process_count)
    )
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=stack_by_size)
    return _to_iter(ds, num_threads, prefetch_batches, worker_count, worker_buffer)


def size_key(example: dict[str, np.ndarray]) -> tuple[int, int, int, int]:
    """(image h, w, label H, W) of an eval example (label size 0 x 0 when unlabelled)."""
    label = example["label"].shape[-2:] if "label" in example else (0, 0)
    return (*example["image"].shape[-3:-1], *label)


def padding_like(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A padding row of `example`'s sizes: zero image, label 255, not valid, index -1."""
    out = {"image": np.zeros_like(example["image"]), "valid": np.bool_(False),
           "index": np.int32(-1)}  # fmt: skip
    if "label" in example:
        out["label"] = np.full_like(example["label"], 255)
    return out


def _stack(examples) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def stack_by_size(examples) -> dict:
    """grain batch function: one batch of same-size examples, or, when an evaluation split
    holds images of several sizes, {"parts": [...]}: per size (in order of appearance) a
    full batch with that size's examples in their rows and padding in the others, so every
    part has the batch's length and the model sees each image at its own size."""
    sizes = list(dict.fromkeys(size_key(e) for e in examples))
    if len(sizes) == 1:
        return _stack(examples)
    parts = []
    for size in sizes:
        first = next(e for e in examples if size_key(e) == size)
        parts.append(_stack([e if size_key(e) == size else padding_like(first)
                             for e in examples]))  # fmt: skip
    return {"parts": parts}


def to_global(batch: dict[str, np.ndarray], sharding) -> dict:
    """Host-local batch (leading axis = this process's share) -> global `jax.Array`s.

    `sharding` is e.g. `NamedSharding(mesh, PartitionSpec("data"))`; the global leading axis is
    the concatenation of all processes' local batches in process order.
    """
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
