"""Checks of config values before a command starts work (`lcmsm-train`, `-eval`, `-predict`,
`-convert`): each bad value is a `UsageError` naming the key, what was expected and an example
override; `check_train_config` also returns warnings for values that work but are likely
mistakes (a crop larger than the resized image on one side, warm-up longer than training).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

from ml_collections import config_dict

from lcmsm_jax import inference, methods, miou
from lcmsm_jax.config_cli import UsageError
from lcmsm_jax.data import sources, synthetic, tfds_source, transforms
from lcmsm_jax.models import heads, layers, mit, segmentor


def _lookup(config: config_dict.ConfigDict, key: str):
    """config["a.b.c"] for a dotted key; KeyError when any part is missing."""
    node = config
    for part in key.split("."):
        if not isinstance(node, config_dict.ConfigDict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _bad(key: str, value, expected: str, example: str) -> UsageError:
    return UsageError(
        f"config.{key} = {value!r}: expected {expected}; fix the config file or pass "
        f"--config.{key}={example}"
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ints(config, keys: Iterable[tuple[str, int, str]]) -> None:
    """Each (key, minimum, example): an integer >= minimum."""
    for key, minimum, example in keys:
        try:
            value = _lookup(config, key)
        except KeyError:
            continue  # a config without this field has no use for it
        if not _is_int(value) or value < minimum:
            wanted = {0: "an integer >= 0", 1: "a positive integer"}.get(
                minimum, f"an integer >= {minimum}"
            )
            raise _bad(key, value, wanted, example)


def _check_pairs(config, keys: Iterable[str]) -> None:
    """Each key: two positive integers, (height, width) or (long, short)."""
    for key in keys:
        try:
            value = _lookup(config, key)
        except KeyError:
            continue
        if (
            not isinstance(value, (tuple, list))
            or len(value) != 2
            or not all(_is_int(v) and v > 0 for v in value)
        ):
            raise _bad(key, value, "two positive integers", "'(512, 512)'")


def _check_fractions(config, keys: Iterable[str]) -> None:
    for key in keys:
        try:
            value = _lookup(config, key)
        except KeyError:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise _bad(key, value, "a number between 0 and 1", "0.5")


def _check_choices(config, choices: dict[str, Sequence[str]]) -> None:
    for key, allowed in choices.items():
        try:
            value = _lookup(config, key)
        except KeyError:
            continue
        many = key == "train.compare_with"  # a tuple of choices
        for item in value if many else (value,):
            if item not in allowed:
                example = f"\"('{allowed[0]}',)\"" if many else allowed[0]
                expected = "names from" if many else "one of"
                raise _bad(key, value, f"{expected} {', '.join(allowed)}", example)


def _model_choices() -> dict[str, Sequence[str]]:
    return {
        "model.backbone": tuple(mit.MIT_VARIANTS),
        "model.dtype": ("float32", "bfloat16", "float16", "float64"),
        "model.depthwise_impl": layers.DEPTHWISE_IMPLS,
        "model.remat": mit.REMAT_MODES,
        "model.decode_head.fusion": heads.FUSIONS,
        "model.lcmsm_head.fusion": heads.FUSIONS,
        "model.lcmsm_head.spatial_block": heads.SPATIAL_BLOCKS,
        "model.lcmsm_head.activation": tuple(heads.ACTIVATIONS),
    }


def _eval_choices() -> dict[str, Sequence[str]]:
    return {
        "data.eval.dataset": (*sources.LAYOUTS, "synthetic"),
        "data.synthetic.variant": synthetic.VARIANTS,
        "data.eval_classes": miou.EVAL_CLASSES,
        "eval.mode": inference.MODES,
        "eval.head": segmentor.HEAD_NAMES,
        "eval.weights": ("student", "teacher"),
    }


def _train_choices() -> dict[str, Sequence[str]]:
    return {
        "data.source.dataset": (*sources.LAYOUTS, "synthetic"),
        "data.target.dataset": (*sources.LAYOUTS, "synthetic"),
        "data.target.sampling": ("uniform", "epoch"),
        "data.source.format": tfds_source.FORMATS,
        "data.target.format": tfds_source.FORMATS,
        "uda.pseudo_label_head": segmentor.HEAD_NAMES,
        "train.compare_with": tuple(methods.METHODS),
        "train.on_eval_error": ("stop", "continue"),
        "train.backward": ("per_pass", "joint"),
    }


def check_model_config(config: config_dict.ConfigDict) -> None:
    """config.model: known choices and the 19 classes. Raises UsageError naming the key."""
    _check_choices(config, _model_choices())
    if config.model.num_classes != 19:
        raise _bad("model.num_classes", config.model.num_classes,
                   "19 (every supported dataset uses the Cityscapes classes)", "19")  # fmt: skip
    _check_hrda(config)


def _check_hrda(config) -> None:
    """config.model.hrda (docs/method.md §8): detail sides multiples of 8 (box offsets and
    the stride-4 logits line up), a detail loss weight in [0, 1], a positive width."""
    if "hrda" not in config.model:
        return
    enabled = config.model.hrda.get("enabled", False)
    if not isinstance(enabled, bool):
        raise _bad("model.hrda.enabled", enabled, "True or False", "False")
    _check_pairs(config, ("model.hrda.detail_size",))
    _check_fractions(config, ("model.hrda.detail_loss_weight",))
    _check_ints(config, [("model.hrda.attention_embed_dim", 1, "256")])
    detail = config.model.hrda.get("detail_size", ())
    if any(side % 8 for side in detail):
        raise _bad("model.hrda.detail_size", detail, "two multiples of 8 (height, width)",
                   "'(512, 512)'")  # fmt: skip


def _check_hrda_crop(config) -> None:
    """With the multi-resolution model the training crop is the HR image: its sides are
    multiples of 8 and the detail crop fits inside it."""
    if "hrda" not in config.model or not config.model.hrda.enabled:
        return
    crop, detail = tuple(config.data.crop_size), tuple(config.model.hrda.detail_size)
    if any(side % 8 for side in crop):
        expected = "two multiples of 8 with config.model.hrda.enabled"
        raise _bad("data.crop_size", crop, expected, "'(1024, 1024)'")
    if detail[0] > crop[0] or detail[1] > crop[1]:
        raise _bad("model.hrda.detail_size", detail,
                   f"a detail crop no larger than config.data.crop_size = {crop}",
                   f"'({crop[0] // 2}, {crop[1] // 2})'")  # fmt: skip


def check_eval_config(config: config_dict.ConfigDict, *, reads_dataset: bool = True) -> None:
    """What lcmsm-eval (`reads_dataset`) and lcmsm-predict read. Raises UsageError naming
    the key."""
    check_model_config(config)
    _check_choices(config, _eval_choices())
    _check_ints(config, [("data.eval.batch_size", 1, "1"), ("data.eval.max_images", 0, "0")])
    _check_pairs(config, ("data.eval.scale", "eval.crop", "eval.stride"))
    _check_mesh(config)
    root = config.data.eval.root
    if reads_dataset and config.data.eval.dataset != "synthetic" and root:
        if not os.path.isdir(root):
            raise UsageError(
                f"config.data.eval.root = {root!r}: no such folder; pass the folder that holds "
                f"the unpacked {config.data.eval.dataset} files"
            )


def _check_mesh(config) -> None:
    value = _lookup(config, "mesh.data") if "mesh" in config else -1
    if not _is_int(value) or (value != -1 and value < 1):
        raise _bad("mesh.data", value, "-1 (all devices) or a positive device count", "-1")


def check_train_config(config: config_dict.ConfigDict) -> list[str]:
    """Everything lcmsm-train reads, checked before any work starts.

    Raises UsageError naming the first bad key (what was expected, how to set it); returns
    one-line warnings for settings that run but are probably not meant.
    """
    check_eval_config(config, reads_dataset=False)  # roots: _check_files, when used
    _check_choices(config, _train_choices())
    _check_ints(
        config,
        [
            ("data.batch_size", 1, "2"),
            ("train.steps", 1, "1000"),
            ("train.keep_checkpoints", 1, "1"),
            ("data.synthetic.num_images", 1, "100"),
            ("data.num_threads", 0, "2"),
            ("data.worker_count", -1, "-1"),
            ("train.stop_at", 0, "0"),
            ("train.log_every", 0, "50"),
            ("train.checkpoint_every", 0, "1000"),
            ("train.image_every", 0, "0"),
            ("train.eval_every", -1, "-1"),
            ("optim.warmup_steps", 0, "0"),
        ],
    )
    _check_pairs(
        config, ("data.crop_size", "data.source.scale", "data.target.scale", "data.synthetic.size")
    )
    _check_fractions(
        config,
        (
            "uda.alpha", "uda.pseudo_threshold", "uda.mask_ratio",
            "uda.color_jitter_apply_probability", "data.source.cat_max_ratio",
        ),
    )  # fmt: skip
    _check_ints(config, [("seed", 0, "0")])
    _check_learning_rate(config)
    _check_batch_memory(config)
    _check_crop_ratio(config)
    _check_hrda_crop(config)
    _check_margins(config)
    _check_splits(config)
    _check_tfds(config)
    _check_files(config)
    warnings = _crop_warnings(config)
    warmup, steps = config.optim.warmup_steps, config.train.steps
    if warmup > steps:
        warnings.append(
            f"config.optim.warmup_steps = {warmup} is more than config.train.steps = {steps}: "
            "the learning rate never reaches config.optim.lr"
        )
    return warnings


# Host bytes per pixel of a training batch as the pipeline hands it over: a float32 RGB
# image and an int32 label. The network's activations come on top (several times more).
_INPUT_BYTES_PER_PIXEL = 3 * 4 + 4


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_batch_memory(config) -> None:
    """data.batch_size: one batch of source and target crops must fit in this machine's
    memory at least as input arrays (otherwise building it runs until the memory is gone)."""
    batch, (height, width) = config.data.batch_size, config.data.crop_size
    needed = 2 * batch * height * width * _INPUT_BYTES_PER_PIXEL  # source + target
    memory = _physical_memory()
    if needed > memory:
        raise UsageError(
            f"config.data.batch_size = {batch}: its source and target crops of {height}x{width} "
            f"alone take {needed / 1e9:.1f} GB as input arrays, more than this machine's "
            f"{memory / 1e9:.1f} GB of memory (the network's activations come on top); the "
            f"paper's is 2 per domain: pass e.g. --config.data.batch_size=2"
        )


def _check_learning_rate(config) -> None:
    """optim.lr: a finite number > 0 (a negative one climbs the loss, NaN stops the run
    only after the step has compiled)."""
    key = "optim.lr"
    try:
        value = _lookup(config, key)
    except KeyError:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _bad(key, value, "a finite number > 0 (the paper's is 6e-05)", "6e-05")


def _check_crop_ratio(config) -> None:
    key = "data.source.rcs_min_crop_ratio"
    try:
        value = _lookup(config, key)
    except KeyError:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _bad(key, value, "a number >= 0 (0.5 for 512 crops, 2.0 for HRDA's 1024 crops)",
                   "0.5")  # fmt: skip


def _check_margins(config) -> None:
    """data.target.pseudo_margins: four integers >= 0 (top, bottom, left, right) that leave
    part of the target images (at their native size, where it is known) valid."""
    key = "data.target.pseudo_margins"
    try:
        value = _lookup(config, key)
    except KeyError:
        return
    example = "'(30, 240, 30, 30)'"
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 4
        or not all(_is_int(v) and v >= 0 for v in value)
    ):
        expected = "four integers >= 0: top, bottom, left and right margins in pixels"
        raise _bad(key, value, expected, example)
    target = config.data.target
    native = _native_size(config, target)
    top, bottom, left, right = value
    if native is not None and (top + bottom >= native[0] or left + right >= native[1]):
        expected = (
            f"margins that leave part of the {target.dataset} images ({native[1]} x "
            f"{native[0]}, width x height, before resizing) valid"
        )
        raise _bad(key, value, expected, example)


def _domains(config) -> list[tuple[str, bool]]:
    """(config.data.<domain> key, whether it must have labels) of the domains training
    opens; an evaluation split without labels runs, with empty metrics."""
    domains = [("data.source", True), ("data.target", bool(config.uda.target_supervised))]
    if config.train.eval_every >= 0:
        domains.append(("data.eval", False))
    return domains


def _check_splits(config) -> None:
    """Domains read with labels use a split that has them (an image-only domain may use any
    split folder; a missing one is named when it is scanned)."""

    for key, labelled in _domains(config):
        domain = _lookup(config, key)
        if domain.dataset == "synthetic" or not labelled:
            continue
        lay = sources.layout(domain.dataset)
        if domain.split not in lay.labelled_splits:
            expected = f"a labelled split of {lay.title}: {', '.join(lay.labelled_splits)}"
            raise _bad(f"{key}.split", domain.split, expected, lay.labelled_splits[0])


def _check_tfds(config) -> None:
    """Domains read with format tfds: a dataset and split that have a TFDS build, and a
    data folder (when given) that holds it."""
    for key in ("data.source", "data.target"):
        domain = _lookup(config, key)
        if domain.get("format", "files") != "tfds":
            continue
        entry = tfds_source.TFDS_DATASETS.get(domain.dataset)
        if entry is None:
            builds = ", ".join(tfds_source.TFDS_DATASETS)
            raise _bad(f"{key}.format", "tfds", f"'files' for {domain.dataset} (TFDS builds "
                       f"exist for {builds})", "files")  # fmt: skip
        if domain.split not in entry.splits:
            expected = f"a split of {domain.dataset} with a TFDS build: {', '.join(entry.splits)}"
            raise _bad(f"{key}.split", domain.split, expected, next(iter(entry.splits)))
        name, data_dir = domain.tfds_name, domain.tfds_data_dir
        if not isinstance(name, str):
            raise _bad(f"{key}.tfds_name", name, f"a TFDS name, or '' for {entry.name}", "''")
        if not data_dir:
            continue  # TFDS' default folder; a missing build is named when it is opened
        if not os.path.isdir(data_dir):
            raise UsageError(
                f"config.{key}.tfds_data_dir = {data_dir!r}: no such folder; pass the "
                "--data-dir that tools/prepare_tfds.py wrote"
            )
        name = (name or entry.name).split(":")[0]  # without a ":1.1.0" version
        if not os.path.isdir(os.path.join(data_dir, name)):
            raise UsageError(
                f"config.{key}.tfds_data_dir = {data_dir!r} holds no {name} dataset; build it "
                f"with `{entry.build}`, or set config.{key}.format=files"
            )


def _check_files(config) -> None:
    """Dataset roots, text embeddings and initial weights exist before anything is built."""
    for key, _ in _domains(config):
        domain = _lookup(config, key)
        if domain.dataset == "synthetic" or domain.get("format", "files") == "tfds":
            continue  # a TFDS build: _check_tfds
        if not domain.root:
            raise UsageError(
                f"config.{key}.root is empty: {domain.dataset} needs its dataset folder; pass "
                f"--config.{key}.root=/path/to/{domain.dataset}"
            )
        if not os.path.isdir(domain.root):
            raise UsageError(
                f"config.{key}.root = {domain.root!r}: no such folder; pass the folder that "
                f"holds the unpacked {domain.dataset} files"
            )
    spec = config.text.embeddings
    if not str(spec).startswith("random:") and not os.path.isfile(spec):
        raise UsageError(
            f"config.text.embeddings = {spec!r}: no such file; make it with lcmsm-embed-text, "
            "or pass --config.text.embeddings=random:0 for random class anchors"
        )
    initial = {
        "train.init": "an lcmsm-convert --workdir",
        "train.pretrained": "a .pth/.safetensors/.npz backbone checkpoint",
    }
    for key, what in initial.items():
        path = _lookup(config, key)
        if path and not os.path.exists(path):
            raise UsageError(f"config.{key} = {path!r}: no such file or folder; expected {what}")


# Native (height, width) of each dataset's images (a few GTA5 images differ slightly).
_NATIVE_SIZES = {
    "gta5": (1052, 1914),
    "synthia": (760, 1280),
    "cityscapes": (1024, 2048),
    "acdc": (1080, 1920),
    "darkzurich": (1080, 1920),
}


def _native_size(config, domain) -> tuple[int, int] | None:
    """(height, width) of a domain's images before resizing, where known."""
    if domain.dataset == "synthetic":
        return tuple(config.data.synthetic.size)
    return _NATIVE_SIZES.get(domain.dataset)


def _crop_warnings(config) -> list[str]:
    """Crops larger than the resized images: an error when no crop dimension fits (every
    crop would be mostly padding, e.g. a crop given at native resolution), else a warning
    (mmseg pads such crops with ignore pixels, which can be intended)."""

    crop = tuple(config.data.crop_size)
    warnings = []
    for key in ("data.source", "data.target"):
        domain = _lookup(config, key)
        native = _native_size(config, domain)
        if native is None:
            continue
        resized = transforms.keep_ratio_size(*native, tuple(domain.scale))
        if crop[0] <= resized[0] and crop[1] <= resized[1]:
            continue
        detail = (
            f"config.data.crop_size = {crop} is larger than the {domain.dataset} images "
            f"resized to config.{key}.scale = {tuple(domain.scale)}, which are {resized}"
        )
        if crop[0] > resized[0] and crop[1] > resized[1]:
            raise UsageError(
                f"{detail}: every crop would be padded on both sides; make the crop smaller or "
                f"config.{key}.scale larger"
            )
        warnings.append(f"{detail}: crops are padded with ignored pixels")
    return warnings
