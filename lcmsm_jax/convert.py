"""PyTorch state_dicts -> Segmentor parameters.

Accepted sources (names after stripping `module.`):
  * NVlabs/mmseg MiT ImageNet checkpoints (`mit_b5.pth`: `patch_embed1.proj.weight`, ...,
    classifier `head.*` skipped);
  * Hugging Face SegFormer (`segformer.stages.*` and the older `segformer.encoder.*` names,
    `decode_head.linear_projections.*` / `decode_head.linear_c.*`);
  * mmseg segmentors: `backbone.*`, `decode_head.*` (DAFormer head or SegFormer head),
    `vlc_head.*` (LC-MSM head);
  * HRDA / MIC(HRDA) segmentors: `decode_head.head.*` (the wrapped head) and
    `decode_head.scale_attention.*` (-> `attention_head.decode.*`), likewise `vlc_head.*`;
  * UDA checkpoints: `model.*` (student) or `ema_model.*` (teacher), `text_embed_net.*`;
    the other copy and `imnet_model.*` are skipped.

Everything else is a rename and a transpose: every source tensor ends up loaded, skipped for
a stated reason, or reported as unmatched; every model variable is filled or reported
missing. A shape mismatch is an error naming both sides.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from lcmsm_jax.models import mit

# read_state_dict: also used as convert.read_state_dict (lcmsm-train --config.train.pretrained).
from lcmsm_jax.progress import say
from lcmsm_jax.state_dicts import read_state_dict

Array = np.ndarray

# ----------------------------------------------------------------------------- renames

# Hugging Face SegFormer -> mmseg MiT names. Applied in order to names without `segformer.`.
_HF_BACKBONE_RENAMES = [
    # transformers >= 5 ("stages")
    (r"^stages\.(\d+)\.patch_embeddings\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj."),
    (
        r"^stages\.(\d+)\.patch_embeddings\.layer_norm\.",
        lambda m: f"patch_embed{int(m[1]) + 1}.norm.",
    ),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"^stages\.(\d+)\.layer_norm\.", lambda m: f"norm{int(m[1]) + 1}."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.k_proj\.", ".attn.k."),
    (r"\.attention\.v_proj\.", ".attn.v."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    # transformers 4.x ("encoder.block")
    (r"^encoder\.patch_embeddings\.(\d+)\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj."),
    (
        r"^encoder\.patch_embeddings\.(\d+)\.layer_norm\.",
        lambda m: f"patch_embed{int(m[1]) + 1}.norm.",
    ),
    (r"^encoder\.block\.(\d+)\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"^encoder\.layer_norm\.(\d+)\.", lambda m: f"norm{int(m[1]) + 1}."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.key\.", ".attn.k."),
    (r"\.attention\.self\.value\.", ".attn.v."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
]

# All-MLP SegFormer heads (mmseg and HF) -> our DAFormer-head names with `fusion="conv"`.
_SEGFORMER_HEAD_RENAMES = [
    (
        r"^decode_head\.linear_c(\d)\.proj\.",
        lambda m: f"decode_head.embed_layers.{int(m[1]) - 1}.proj.",
    ),
    (r"^decode_head\.linear_c\.(\d+)\.proj\.", r"decode_head.embed_layers.\1.proj."),
    (r"^decode_head\.linear_projections\.(\d+)\.proj\.", r"decode_head.embed_layers.\1.proj."),
    (r"^decode_head\.linear_fuse\.conv\.", "decode_head.fuse_layer.conv."),
    (r"^decode_head\.linear_fuse\.bn\.", "decode_head.fuse_layer.bn."),
    (r"^decode_head\.linear_fuse\.weight$", "decode_head.fuse_layer.conv.weight"),
    (r"^decode_head\.batch_norm\.", "decode_head.fuse_layer.bn."),
    (r"^decode_head\.linear_pred\.", "decode_head.conv_seg."),
    (r"^decode_head\.classifier\.", "decode_head.conv_seg."),
]

# Reasons for tensors that are deliberately not loaded.
_SKIP_RULES = [
    (r"\.num_batches_tracked$", "BatchNorm step counter (not used by inference or training)"),
    (r"^backbone\.head\.", "ImageNet classifier of the MiT checkpoint"),
    (r"^classifier\.", "ImageNet classifier of the SegFormer classification model"),
    (r"^imnet_model\.", "frozen ImageNet model copy (rebuilt from the backbone)"),
    (r"^auxiliary_head\.", "auxiliary head (not part of this model)"),
    (r"^clip_model\.", "frozen OpenCLIP model (its text embeddings come from lcmsm-embed-text)"),
]

_UDA_PREFIXES = {"student": "model.", "teacher": "ema_model."}
_HF_MARKERS = ("segformer.", "stages.", "encoder.patch_embeddings.", "encoder.block.")
_MIT_MARKERS = ("patch_embed1.", "block1.", "norm1.")


@dataclasses.dataclass
class ConversionReport:
    """What happened to every source tensor and every model variable."""

    loaded: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (source, target)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (source, reason)
    unmatched: list[str] = dataclasses.field(default_factory=list)  # source names, no target
    missing: list[str] = dataclasses.field(default_factory=list)  # model variables not filled

    def summary(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors; skipped {len(self.skipped)}; "
            f"unmatched {len(self.unmatched)}; model variables not filled {len(self.missing)}"
        ]
        reasons: dict[str, int] = {}
        for _, reason in self.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  skipped {n:5d} x {reason}" for reason, n in sorted(reasons.items())]
        lines += [f"  unmatched source tensor: {name}" for name in self.unmatched]
        groups: dict[str, int] = {}
        for name in self.missing:
            top = ".".join(name.split(".")[:1])
            groups[top] = groups.get(top, 0) + 1
        lines += [f"  not filled: {n} variables under {top}" for top, n in sorted(groups.items())]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- name mapping


def _apply(renames, name: str) -> str:
    for pattern, replacement in renames:
        name = re.sub(pattern, replacement, name)
    return name


def canonicalize(
    state_dict: Mapping[str, Array], *, weights: str = "student"
) -> tuple[dict[str, Array], list[tuple[str, str]]]:
    """Rename any supported source to mmseg segmentor names.

    Returns (canonical name -> array, [(source name, reason skipped)]). Canonical names are
    `backbone.*`, `decode_head.*`, `vlc_head.*`, `text_embed_net.*`.
    """
    if weights not in _UDA_PREFIXES:
        raise ValueError(f"weights must be 'student' or 'teacher', got {weights!r}")
    names = {re.sub(r"^(module\.)+", "", k): k for k in state_dict}
    skipped: list[tuple[str, str]] = []
    is_uda = any(n.startswith(("model.", "ema_model.")) for n in names)
    segformer_head = False
    out: dict[str, Array] = {}
    for name, original in names.items():
        value = np.asarray(state_dict[original])
        if is_uda:
            wanted, other = (
                _UDA_PREFIXES[weights],
                _UDA_PREFIXES["teacher" if weights == "student" else "student"],
            )
            if name.startswith(other):
                skipped.append((original, f"{'teacher' if weights == 'student' else 'student'} "
                                          "copy (choose with --weights)"))  # fmt: skip
                continue
            if name.startswith(wanted):
                name = name[len(wanted) :]
        segformer_head = segformer_head or _is_segformer_head(name)
        name = _rename_source(name)
        out_name = name
        if out_name in out:
            raise ValueError(f"two source tensors map to {out_name!r} (second: {original!r})")
        out[out_name] = value
    out = _merge_key_value(out)
    if segformer_head:
        out = _reorder_segformer_fuse(out)
    kept = {}
    for name, value in out.items():
        reason = next((r for pattern, r in _SKIP_RULES if re.search(pattern, name)), None)
        if reason is None:
            kept[name] = value
        else:
            skipped.append((name, reason))
    return kept, skipped


# HRDA / MIC(HRDA) segmentors (lhoyer/HRDA `HRDAHead`): the wrapped head is `<head>.head.*`
# and its scale attention `<head>.scale_attention.*`; ours are `<head>.*` and
# `attention_head.<name>.*` (`models.hrda.MultiResSegmentor`). The LC-MSM head wrapped the
# same way (`vlc_head.head.*`, `vlc_head.scale_attention.*`) maps alike.
_HRDA_RENAMES = [
    (r"^(decode_head|vlc_head)\.head\.", r"\1."),
    (r"^decode_head\.scale_attention\.", "attention_head.decode."),
    (r"^vlc_head\.scale_attention\.", "attention_head.lcmsm."),
]


def _rename_source(name: str) -> str:
    """One source name (without UDA prefix) -> canonical mmseg name."""
    name = _apply(_HRDA_RENAMES, name)
    if name.startswith(_HF_MARKERS):
        name = name.removeprefix("segformer.")
        return "backbone." + _apply(_HF_BACKBONE_RENAMES, name)
    if name.startswith(_MIT_MARKERS) or name.startswith(("patch_embed", "block", "norm", "head.")):
        return "backbone." + name
    if name.startswith("decode_head."):
        return _apply(_SEGFORMER_HEAD_RENAMES, name)
    return name


def _is_segformer_head(name: str) -> bool:
    """An all-MLP SegFormer head's own names (mmseg's DAFormer head already uses ours)."""
    return any(re.match(pattern, name) for pattern, _ in _SEGFORMER_HEAD_RENAMES)


def _merge_key_value(tensors: dict[str, Array]) -> dict[str, Array]:
    """Concatenate separate key/value projections (HF) into mmseg's single `kv` Linear."""
    out = {}
    for name, value in tensors.items():
        match = re.match(r"^(.*\.attn)\.([kv])\.(weight|bias)$", name)
        if match is None:
            out[name] = value
            continue
        prefix, which, kind = match.groups()
        if which == "v":
            continue
        partner = f"{prefix}.v.{kind}"
        if partner not in tensors:
            raise ValueError(f"{name!r} has no matching value projection {partner!r}")
        out[f"{prefix}.kv.{kind}"] = np.concatenate([value, tensors[partner]], axis=0)
    orphans = [n for n in tensors if re.match(r"^.*\.attn\.v\.(weight|bias)$", n)
               and n.replace(".attn.v.", ".attn.k.") not in tensors]  # fmt: skip
    if orphans:
        raise ValueError(f"value projection without key projection: {orphans[0]!r}")
    return out


def _reorder_segformer_fuse(tensors: dict[str, Array]) -> dict[str, Array]:
    """SegFormer concatenates levels c4..c1 before its 1x1 fuse conv; we concatenate c1..c4.

    Reversing the conv's input-channel blocks makes the two orders compute the same thing.
    Only for SegFormer heads: the DAFormer head with 1x1 conv fusion concatenates c1..c4.
    """
    name = "decode_head.fuse_layer.conv.weight"
    if name not in tensors or "decode_head.fuse_layer.aspp_modules.0.conv.weight" in tensors:
        return tensors
    weight = tensors[name]
    levels = [k for k in tensors if re.match(r"^decode_head\.embed_layers\.\d+\.proj\.weight$", k)]
    if weight.ndim != 4 or not levels or weight.shape[2:] != (1, 1):
        return tensors
    blocks = np.split(weight, len(levels), axis=1)
    return {**tensors, name: np.concatenate(blocks[::-1], axis=1)}


def _target_path(name: str) -> tuple[tuple, str] | None:
    """Canonical torch name -> (our module path, torch parameter kind)."""
    name = name.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
    name = name.replace(".spatial_block.depthwise.depthwise.", ".spatial_block.")
    parts = name.split(".")
    if len(parts) < 2:
        return None
    path = tuple(int(p) if p.isdigit() else p for p in parts[:-1])
    return path, parts[-1]


_KIND_TO_LEAF = {
    "weight": ("kernel", "scale"),
    "bias": ("bias",),
    "running_mean": ("mean",),
    "running_var": ("var",),
}


def _to_flax_layout(value: Array, target_shape: tuple[int, ...]) -> Array:
    """torch layouts -> ours: Linear (out, in) -> (in, out); conv OIHW -> HWIO (which also
    turns a depthwise (C, 1, k, k) into (k, k, 1, C))."""
    if value.ndim == 2 and len(target_shape) == 2:
        return value.T
    if value.ndim == 4 and len(target_shape) == 4:
        return value.transpose(2, 3, 1, 0)
    return value


def _model_variables(model: nnx.Module) -> dict[tuple, jax.ShapeDtypeStruct]:
    """Shape and dtype of every variable `load_torch_state_dict` can fill, by per-block path."""
    params, stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    out = {}
    for state in (params, stats):
        for path, variable, stacked in mit.per_block_variables(state):
            value = variable.get_value()
            shape = value.shape if stacked is None else value.shape[1:]
            out[path] = jax.ShapeDtypeStruct(shape, value.dtype)
    return out


def load_torch_state_dict(
    model: nnx.Module,
    state_dict: Mapping[str, Array],
    *,
    weights: str = "student",
    strict: bool = False,
    dry_run: bool = False,
) -> ConversionReport:
    """Fill `model` (in place) from a PyTorch state_dict of name -> array.

    Args:
      model: a `Segmentor` (or any module using the same attribute names).
      state_dict: source tensors, any naming scheme listed in this module's docstring.
      weights: for UDA checkpoints, "student" (`model.*`) or "teacher" (`ema_model.*`).
      strict: raise if a source tensor matches nothing or a model variable stays unfilled.
      dry_run: only match and report, leaving `model` as it is; it may then be abstract
        (`nnx.eval_shape`), which checks a checkpoint without initialising a model.
    Returns:
      A ConversionReport. Raises ValueError on a shape mismatch, naming both tensors.
    """
    tensors, skipped = canonicalize(state_dict, weights=weights)
    variables = _model_variables(model)
    report = ConversionReport(skipped=skipped)
    filled: dict[tuple, Array] = {}
    for name, value in sorted(tensors.items()):
        target = _target_path(name)
        if target is None:
            report.unmatched.append(name)
            continue
        path, kind = target
        leaf = next(
            (leaf for leaf in _KIND_TO_LEAF.get(kind, ()) if path + (leaf,) in variables), None
        )
        if leaf is None:
            report.unmatched.append(name)
            continue
        full = path + (leaf,)
        expected = tuple(variables[full].shape)
        converted = _to_flax_layout(value, expected)
        if tuple(converted.shape) != expected:
            raise ValueError(
                f"shape mismatch: source {name!r} {tuple(value.shape)} -> model "
                f"{_dotted(full)!r} expects {expected} (after layout conversion: "
                f"{tuple(converted.shape)}); check that config.model (backbone, head widths, "
                "fusion) describes the checkpoint's network"
            )
        filled[full] = converted.astype(variables[full].dtype)
        report.loaded.append((name, _dotted(full)))
    report.missing = sorted(_dotted(p) for p in variables if p not in filled)
    if strict and (report.unmatched or report.missing):
        raise ValueError("strict conversion failed:\n" + report.summary())
    if not dry_run:
        _assign(model, filled)
    return report


def _assign(model: nnx.Module, filled: dict[tuple, Array]) -> None:
    """Write `filled` (per-block paths) into `model`; a stacked stage's blocks go into their
    slices of the stacked array, blocks not filled keep their values."""
    by_path: dict[tuple, Array] = {}
    for path, variable, stacked in mit.per_block_variables(nnx.state(model)):
        if path not in filled:
            continue
        if stacked is None:
            by_path[path] = filled[path]
            continue
        stacked_path, index = stacked
        if stacked_path not in by_path:
            by_path[stacked_path] = np.array(variable.get_value())
        by_path[stacked_path][index] = filled[path]
    flat = []
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        if path in by_path:
            variable = variable.replace(by_path[path])
        flat.append((path, variable))
    nnx.update(model, nnx.from_flat_state(flat))


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


# ----------------------------------------------------------------------------- command line

# Below this fraction of the model's variables filled, the checkpoint is taken to be of another
# network (or of a naming scheme this module does not know). An ImageNet MiT backbone alone
# fills 63% (MiT-B0) to 91% (MiT-B5) of a Segmentor's variables.
MIN_FILLED_FRACTION = 0.5


class PartialConversionError(ValueError):
    """Too few model variables were filled; the message counts them and shows unmatched names."""


def check_filled(
    report: ConversionReport, source: str | os.PathLike, minimum: float = MIN_FILLED_FRACTION
) -> None:
    """Raise PartialConversionError when fewer than `minimum` of the model's variables were
    filled from `source`."""
    total = len(report.loaded) + len(report.missing)
    if total == 0 or len(report.loaded) >= minimum * total:
        return
    if report.unmatched:
        shown = ", ".join(report.unmatched[:5])
        left = f"{len(report.unmatched)} source tensors match no model variable (e.g. {shown})"
    else:
        left = f"the file has no other tensors ({len(report.skipped)} skipped)"
    raise PartialConversionError(
        f"{source}: {len(report.loaded)} tensors matched, filling {len(report.loaded)} of "
        f"{total} model variables ({len(report.loaded) / total:.0%}, less than {minimum:.0%}); "
        f"{left}. Is it a checkpoint of this network (config.model)? Nothing was written; "
        "--allow-partial writes it with the other variables randomly initialised"
    )


def check_parts(
    report: ConversionReport, source: str | os.PathLike, minimum: float = MIN_FILLED_FRACTION
) -> None:
    """Raise PartialConversionError when the backbone, or a head while source tensors went
    unmatched, has fewer than `minimum` of its variables filled.

    An ImageNet backbone checkpoint fills no head and leaves nothing unmatched: that is a
    backbone initialisation, not an error. A segmentor checkpoint whose head tensors are
    named in a layout the converter does not map leaves the head empty *and* tensors
    unmatched; the message names each such part and the source prefixes closest to it.
    """
    counts: dict[str, list[int]] = {}
    for _, target in report.loaded:
        part = counts.setdefault(target.split(".")[0], [0, 0])
        part[0], part[1] = part[0] + 1, part[1] + 1
    for name in report.missing:
        counts.setdefault(name.split(".")[0], [0, 0])[1] += 1
    empty = [
        (part, filled, total)
        for part, (filled, total) in sorted(counts.items())
        if filled < minimum * total and (part == "backbone" or report.unmatched)
    ]
    if not empty:
        return
    prefixes: dict[str, int] = {}
    for name in report.unmatched:
        prefix = ".".join(name.split(".")[:2])
        prefixes[prefix] = prefixes.get(prefix, 0) + 1
    lines = []
    for part, filled, total in empty:
        close = difflib.get_close_matches(part, list(prefixes), n=3, cutoff=0.0)
        seen = ", ".join(f"{p}.* ({prefixes[p]} tensors)" for p in close) or "none"
        lines.append(f"{part}: {filled} of {total} variables filled; closest unmatched "
                     f"source prefixes: {seen}")  # fmt: skip
    raise PartialConversionError(
        f"{source}: {'; '.join(lines)}. {len(report.unmatched)} source tensors match no model "
        "variable: is the file in a layout this converter reads, and of this network "
        "(config.model)? Nothing was written; --allow-partial writes it with the other "
        "variables randomly initialised"
    )


def main(argv: list[str] | None = None) -> int:
    """`lcmsm-convert --config C.py --torch-checkpoint F.pth --workdir DIR [--weights ...]`.

    Writes nothing when fewer than MIN_FILLED_FRACTION of the model's variables were filled
    (PartialConversionError), unless --allow-partial. Usage errors: message and exit 2; data
    failures are raised (`lcmsm_jax.cli` reports them in one line).
    """
    from absl import flags

    from lcmsm_jax import checkpoint, config_checks, config_cli, models

    def define(fv: flags.FlagValues) -> None:
        flags.DEFINE_string("torch_checkpoint", None, "PyTorch .pth, .safetensors or .npz file.",
                            flag_values=fv)  # fmt: skip
        flags.DEFINE_string("workdir", None, "Run directory; weights go to <workdir>/converted.",
                            flag_values=fv)  # fmt: skip
        flags.DEFINE_enum("weights", "student", ["student", "teacher"],
                          "For UDA checkpoints: student (model.*) or EMA teacher (ema_model.*).",
                          flag_values=fv)  # fmt: skip
        flags.DEFINE_bool("strict", False, "Fail if any tensor or model variable is left over.",
                          flag_values=fv)  # fmt: skip
        flags.DEFINE_bool("allow_partial", False,
                          f"Write the result even if less than {MIN_FILLED_FRACTION:.0%} of the "
                          "model's variables were filled.", flag_values=fv)  # fmt: skip
        flags.DEFINE_integer("seed", 0, "Seed for variables the checkpoint does not fill.",
                             flag_values=fv)  # fmt: skip
        flags.DEFINE_string("export", None,
                            "The other way: write the run in --workdir (its newest checkpoint, "
                            "or --step) to this .pth or .safetensors file in the official "
                            "PyTorch layout, with the evaluation settings in <file>.json.",
                            flag_values=fv)  # fmt: skip
        flags.DEFINE_integer("step", None, "With --export: the checkpoint step (default: newest).",
                             flag_values=fv)  # fmt: skip

    try:
        flag_values = config_cli.parse(
            "lcmsm-convert", argv, define, required=("workdir",),
            description="Convert a PyTorch checkpoint into <workdir>/converted, or (--export) "
            "a run's checkpoint into a PyTorch one.",
            examples=[
                "lcmsm-convert --config configs/gta2cs_lcmsm.py --torch-checkpoint mit_b5.pth "
                "--workdir runs/gta2cs",
                "lcmsm-convert --config configs/gta2cs_lcmsm.py --torch-checkpoint "
                "lcmsm_gta2cs.pth --workdir runs/official --weights teacher",
                "lcmsm-convert --config configs/gta2cs_lcmsm.py --workdir runs/gta2cs "
                "--export gta2cs_teacher.pth --weights teacher",
            ],
        )  # fmt: skip
        if flag_values.export is None and flag_values.torch_checkpoint is None:
            raise config_cli.UsageError(
                "--torch-checkpoint is required (or --export, to write a run out)"
            )
        config_checks.check_model_config(flag_values.config)
    except config_cli.UsageError as err:
        return config_cli.report_usage("lcmsm-convert", err)
    config = flag_values.config
    if flag_values.export is not None:
        return _export(config, flag_values)
    target = (Path(flag_values.workdir) / checkpoint.CONVERTED).absolute()
    if target.exists():  # checked first: converting a large checkpoint takes a while
        raise FileExistsError(f"{target} already exists; remove it or choose another --workdir")
    source = read_state_dict(flag_values.torch_checkpoint)
    say(f"read {len(source)} tensors from {flag_values.torch_checkpoint}")
    options = dict(weights=flag_values.weights, strict=flag_values.strict)

    def build() -> models.Segmentor:
        return models.build_segmentor(config.model, rngs=nnx.Rngs(flag_values.seed))

    # Match against the model's shapes first: a checkpoint of another network fails in
    # seconds, before the (slow) initialisation of the real model.
    report = load_torch_state_dict(nnx.eval_shape(build), source, **options, dry_run=True)
    if not flag_values.allow_partial:
        check_filled(report, flag_values.torch_checkpoint)
        check_parts(report, flag_values.torch_checkpoint)
    model = build()
    report = load_torch_state_dict(model, source, **options)
    say(report.summary())
    checkpoint.save_model(
        target,
        model,
        metadata={
            "source": str(Path(flag_values.torch_checkpoint).resolve()),
            "weights": flag_values.weights,
            "report": report.to_json(),
            "config": json.loads(config.to_json_best_effort()),
        },
    )
    say(f"wrote {target}")
    return 0


def _export(config, flag_values) -> int:
    """`lcmsm-convert --export F.pth --workdir RUN`: a run's weights in the official layout."""
    from lcmsm_jax import restore, torch_export

    torch_export.check_destination(flag_values.export)
    graphdef, params, batch_stats, step = restore.load_weights(
        config, flag_values.workdir, step=flag_values.step, weights=flag_values.weights
    )
    model = nnx.merge(graphdef, params, batch_stats)
    settings = torch_export.evaluation_settings(config)
    settings |= {"weights": flag_values.weights, "step": step,
                 "run": str(Path(flag_values.workdir).resolve())}  # fmt: skip
    state_dict = torch_export.to_torch_state_dict(model)
    written = torch_export.write(state_dict, flag_values.export, settings)
    what = "converted weights" if step is None else f"step {step}"
    say(f"wrote {len(state_dict)} tensors ({flag_values.weights}, {what}) to "
        f"{written[0]} and the evaluation settings to {written[1]}")  # fmt: skip
    return 0
