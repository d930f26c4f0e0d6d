"""`lcmsm-embed-text`: class names -> frozen OpenCLIP text embeddings in a validated .npz.

LC-MSM feeds the frozen OpenCLIP ViT-H-14 text tower the prompts "a photo of a {name}."
for the 19 Cityscapes classes, with person/rider/bicycle/motorcycle renamed to
pedestrian/driver/bike/motorbike (docs/method.md §2.5). The tower has no dropout, so its output
is the same every step: this command computes it once and `lcmsm_jax.text` loads it.

How the stored vectors are scaled (the file's `normalized` flag records which):
  * one template (the paper's case): the raw, unnormalised `encode_text` output. The
    reference L2-normalises only after its own trainable projection, so the raw vectors
    are what a model trained (or converted) from the reference expects.
  * `--normalize` with one template: those vectors L2-normalised per class.
  * several templates (a prompt ensemble): each template's vector is L2-normalised, the
    unit vectors are averaged over templates, and the mean is L2-normalised again, so the
    scale does not depend on how many templates there are or how much they agree.

open_clip and torch are imported only inside `main` (the `clip` extra); nothing else in
the package needs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from absl import flags

from lcmsm_jax import atomic, config_cli, text
from lcmsm_jax.config_cli import UsageError
from lcmsm_jax.data import labels
from lcmsm_jax.progress import say

PROG = "lcmsm-embed-text"

PAPER_PROMPT = "a photo of a {}."
PAPER_RENAMES: dict[str, str] = {
    "person": "pedestrian",
    "rider": "driver",
    "bicycle": "bike",
    "motorcycle": "motorbike",
}
CLASS_LISTS: dict[str, tuple[str, ...]] = {
    "cityscapes": labels.CITYSCAPES_CLASSES,
    "synthia16": labels.SYNTHIA16_CLASSES,
}
INSTALL_HINT = 'pip install -e ".[clip]"'
_SCHEMAS = ("hf-hub:", "local-dir:")


class ModelError(ValueError):
    """OpenCLIP could not build the model (failed download, checkpoint mismatch, ...)."""


# ----------------------------------------------------------------------------- inputs


def read_class_list(spec: str) -> tuple[str, ...]:
    """Class names from a built-in list name or a file with one class name per line.

    Blank lines and lines starting with '#' are skipped; names are stripped.
    """
    if spec in CLASS_LISTS:
        return CLASS_LISTS[spec]
    if not os.path.isfile(spec):
        raise UsageError(
            f"--classes {spec!r}: neither a built-in list ({', '.join(CLASS_LISTS)}) "
            "nor an existing file with one class name per line"
        )
    names = tuple(_content_lines(spec))
    if not names:
        raise UsageError(f"--classes {spec}: the file lists no class names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--classes {spec}: duplicate class names {duplicates}")
    return names


def read_renames(path: str) -> dict[str, str]:
    """Renames from a file with lines `old name -> new name` ('#' comments allowed)."""
    if not os.path.isfile(path):
        raise UsageError(f"--renames {path}: no such file")
    renames: dict[str, str] = {}
    for line in _content_lines(path):
        old, sep, new = line.partition("->")
        if not sep or not old.strip() or not new.strip():
            raise UsageError(f"--renames {path}: expected 'old name -> new name', got {line!r}")
        renames[old.strip()] = new.strip()
    return renames


def _content_lines(path: str) -> list[str]:
    """Stripped non-empty lines of a UTF-8 text file, without '#' comment lines."""
    with open(path, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [line for line in lines if line and not line.startswith("#")]


def apply_renames(
    classes: Sequence[str], renames: dict[str, str], *, require_all: bool
) -> tuple[str, ...]:
    """The names that go into the prompts.

    Args:
      classes: the dataset's class names.
      renames: old -> new names.
      require_all: raise if a rename matches no class (guards typos in a user's file;
        the paper's defaults are allowed to miss, e.g. for a custom class list).
    """
    unused = sorted(set(renames) - set(classes))
    if require_all and unused:
        raise UsageError(f"renames for classes that are not in the class list: {unused}")
    return tuple(renames.get(name, name) for name in classes)


def check_templates(templates: Sequence[str]) -> None:
    """Each template needs exactly one '{}' where the class name goes."""
    for template in templates:
        if template.count("{}") != 1:
            raise UsageError(
                f"--prompt {template!r}: a template needs exactly one '{{}}' for the class name"
            )


def fill_prompts(templates: Sequence[str], names: Sequence[str]) -> list[str]:
    """T*C prompt strings, template-major: index t*C + c is template t with class c."""
    # str.replace rather than str.format: other braces in a template stay literal text.
    return [template.replace("{}", name) for template in templates for name in names]


# ----------------------------------------------------------------------------- encoding


def combine(per_template: np.ndarray, normalize: bool) -> tuple[np.ndarray, bool]:
    """Reduces per-template text vectors to one vector per class (see the module docstring).

    Args:
      per_template: [T, C, D] `encode_text` outputs.
      normalize: L2-normalise a single template's vectors too.

    Returns:
      ([C, D] float32 embeddings, whether they are L2-normalised).
    """
    if per_template.shape[0] == 1 and not normalize:
        return per_template[0].astype(np.float32), False
    vectors = per_template.astype(np.float64)  # average in float64, store float32
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    mean = vectors.mean(axis=0)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    return mean.astype(np.float32), True


def import_open_clip() -> tuple[ModuleType, ModuleType]:
    """(open_clip, torch), or an ImportError that says how to install them."""
    try:
        import open_clip
        import torch
    except ImportError as e:
        raise ImportError(
            f"lcmsm-embed-text needs open_clip_torch and torch ({e}); install them with: "
            f"{INSTALL_HINT}"
        ) from e
    return open_clip, torch


def resolve_pretrained(open_clip: ModuleType, model_name: str, pretrained: str) -> str | None:
    """The `pretrained` argument for open_clip: None for random init, else a tag or a file."""
    if pretrained.lower() == "none":
        return None
    if model_name.startswith(_SCHEMAS):
        return pretrained
    if os.path.isfile(pretrained):
        check_checkpoint_file(pretrained, model_name)
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise UsageError(
            f"--pretrained {pretrained!r}: not an existing checkpoint file, not 'none', and "
            f"not an OpenCLIP tag for {model_name} (tags: {', '.join(tags) or 'none'})"
        )
    return pretrained


# How the files open_clip loads begin: a zip archive (torch.save, TorchScript, big_vision
# .npz), a pickle (the legacy torch.save), .npy; safetensors start with the 8-byte length
# of their JSON header, whose first byte is "{".
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80", b"\x93NUMPY")
_SAFETENSORS_HEADER = 8


def check_checkpoint_file(path: str, model_name: str) -> None:
    """Refuse (ModelError) a --pretrained file that is no checkpoint at all (a text file, a
    saved web page), before the model is built; the file's first bytes say."""
    with open(path, "rb") as f:
        head = f.read(_SAFETENSORS_HEADER + 1)
    is_safetensors = len(head) > _SAFETENSORS_HEADER and head[_SAFETENSORS_HEADER:] == b"{"
    if head.startswith(_CHECKPOINT_MAGIC) or is_safetensors:
        return
    raise ModelError(
        f"--pretrained {path}: not a checkpoint file (it starts with {head!r}); "
        f"{_EXPECTED_CHECKPOINT.format(model=model_name)}"
    )


_EXPECTED_CHECKPOINT = (
    "expected the OpenCLIP weights of {model} as downloaded (a PyTorch .bin/.pt state dict or "
    ".safetensors file, e.g. open_clip_pytorch_model.bin from the model's Hugging Face page), "
    "or an OpenCLIP tag"
)


def recorded_pretrained(model_name: str, pretrained: str) -> str:
    """What the file records as the weights' source."""
    if model_name.startswith(_SCHEMAS):
        return model_name  # hf-hub:/local-dir: sources carry their own weights
    return "none" if pretrained.lower() == "none" else pretrained


def build_model(
    open_clip: ModuleType, torch: ModuleType, args: flags.FlagValues
) -> tuple[Any, Callable[[list[str]], Any]]:
    """The OpenCLIP model in eval mode (float32, on args.device) and its tokenizer."""
    if not args.model.startswith(_SCHEMAS) and args.model not in open_clip.list_models():
        raise UsageError(
            f"--model {args.model!r}: not an OpenCLIP architecture (e.g. ViT-H-14, ViT-B-32; "
            "see open_clip.list_models())"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here")
    pretrained = resolve_pretrained(open_clip, args.model, args.pretrained)
    say(f"building OpenCLIP {args.model} (pretrained={args.pretrained}) on {args.device}")
    # The seed fixes random init (--pretrained none); loaded weights overwrite it anyway.
    torch.manual_seed(args.seed)
    try:
        model = open_clip.create_model(
            args.model, pretrained=pretrained, precision="fp32", device=args.device
        )
    except Exception as e:  # noqa: BLE001  (sorted out by _build_error)
        error = _build_error(args.model, pretrained, e)
        if error is None:
            raise
        raise error from e
    return model.eval(), open_clip.get_tokenizer(args.model)


def _build_error(model_name: str, pretrained: str | None, e: Exception) -> ModelError | None:
    """The one-line report of a model that could not be built, or None for an error that is
    a bug (it keeps its traceback)."""
    if pretrained is not None and os.path.isfile(pretrained):
        # torch's unpickler, safetensors and open_clip's key conversion each fail in their
        # own way on a file that is not these weights; the file is the cause either way.
        return ModelError(
            f"--pretrained {pretrained}: could not build OpenCLIP {model_name} from this file "
            f"({type(e).__name__}: {_one_line(e)}); "
            f"{_EXPECTED_CHECKPOINT.format(model=model_name)}"
        )
    if not isinstance(e, RuntimeError):
        return None
    # open_clip reports failed downloads as RuntimeError.
    hint = ""
    if pretrained is not None:
        hint = (
            "; without internet, download the checkpoint file on another machine and pass its "
            "path to --pretrained (see docs/text-embeddings.md)"
        )
    return ModelError(f"could not build OpenCLIP {model_name}: {_one_line(e)}{hint}")


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An error's message on one line, cut at `limit` characters (a state-dict mismatch
    lists every key on its own line)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode(
    model: Any,
    tokenizer: Callable[[list[str]], Any],
    prompts: Sequence[str],
    *,
    batch_size: int,
    device: str,
) -> np.ndarray:
    """Raw `encode_text` vectors of `prompts`, in batches, reporting each batch.

    Returns:
      [N, D] float32 for N = len(prompts).
    """
    import torch

    num_batches = -(-len(prompts) // batch_size)
    outputs = []
    with torch.inference_mode():
        for index in range(num_batches):
            batch = list(prompts[index * batch_size : (index + 1) * batch_size])
            tokens = tokenizer(batch).to(device)
            outputs.append(model.encode_text(tokens, normalize=False).float().cpu().numpy())
            say(f"encoded batch {index + 1}/{num_batches} ({len(batch)} prompts)")
    return np.concatenate(outputs, axis=0)


# ----------------------------------------------------------------------------- command


def _define(fv: flags.FlagValues) -> None:
    """The flags of `lcmsm-embed-text`."""
    flags.DEFINE_string("classes", None, "Class list: 'cityscapes' (19), 'synthia16' (16), or a "
                        "file with one class name per line, in the dataset's label order.",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_string("model", "ViT-H-14", "OpenCLIP architecture.", flag_values=fv)
    flags.DEFINE_string("pretrained", "laion2b_s32b_b79k",
                        "OpenCLIP pretrained tag (downloads unless cached), a local checkpoint "
                        "file (offline), or 'none' for random init (recorded as such).",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_multi_string("prompt", None,
                              f"Prompt template with '{{}}' for the class name (default "
                              f"{PAPER_PROMPT!r}); repeat for a prompt ensemble (L2-normalised, "
                              "averaged, re-normalised)", flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("normalize", False, "L2-normalise the stored vectors for a single "
                      "template too (default: store the raw encode_text output, as the paper's "
                      "model expects).", flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("no_renames", False, "Use the class names as they are (default renames "
                      "person->pedestrian, rider->driver, bicycle->bike, motorcycle->motorbike, "
                      "as in the paper).", flag_values=fv)  # fmt: skip
    flags.DEFINE_string("renames", None, "Replace the default renames by a file of "
                        "'old name -> new name' lines.", flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("batch_size", 64, "Prompts per forward pass.", flag_values=fv)
    flags.DEFINE_string("device", "cpu", "Torch device: cpu, cuda, cuda:1, ...", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Torch seed (random init only).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output .npz file (written atomically).", flag_values=fv)


def _prompt_inputs(args: flags.FlagValues) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """(dataset class names, names used in prompts, templates) from the parsed flags."""
    if args.no_renames and args.renames:
        raise UsageError("--no-renames and --renames exclude each other; pass one of them")
    classes = read_class_list(args.classes)
    if args.no_renames:
        names = classes
    elif args.renames:
        names = apply_renames(classes, read_renames(args.renames), require_all=True)
    else:
        names = apply_renames(classes, PAPER_RENAMES, require_all=False)
    templates = args.prompt or [PAPER_PROMPT]
    check_templates(templates)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    return classes, names, templates


def run(args: flags.FlagValues) -> str:
    """Computes and writes the embeddings; returns the content hash."""
    classes, names, templates = _prompt_inputs(args)
    atomic.check_output_file(args.out, "--out", suffix=".npz")  # before the model is built
    open_clip, torch = import_open_clip()
    model, tokenizer = build_model(open_clip, torch, args)
    prompts = fill_prompts(templates, names)
    flat = encode(model, tokenizer, prompts, batch_size=args.batch_size, device=args.device)
    embeddings, normalized = combine(flat.reshape(len(templates), len(classes), -1), args.normalize)
    sha256 = text.save(
        args.out,
        embeddings,
        classes,
        prompt_names=names,
        prompts=templates,
        model=args.model,
        pretrained=recorded_pretrained(args.model, args.pretrained),
        seed=args.seed,
        open_clip_version=open_clip.__version__,
        normalized=normalized,
    )
    scaling = "L2-normalised" if normalized else "raw encode_text output"
    say(
        f"wrote {args.out}: {embeddings.shape[0]}x{embeddings.shape[1]} float32, {scaling}, "
        f"sha256 {sha256}"
    )
    return sha256


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 on success and 2 for a bad command line or input file. A model
    that cannot be built (ModelError) or a missing open_clip (ImportError) is raised;
    `lcmsm_jax.cli` reports it in one line (exit 1)."""
    try:
        args = config_cli.parse(
            PROG, argv, _define, required=("classes", "out"), takes_config=False,
            description="Compute frozen OpenCLIP text embeddings of class-name prompts and "
            "write them to a validated .npz that training loads (config.text.embeddings).",
            examples=[
                f"{PROG} --classes cityscapes --out text/cityscapes_vith14.npz",
                f"{PROG} --classes synthia16 --pretrained /models/open_clip_vith14.bin "
                "--out text/synthia16_vith14.npz",
                f"{PROG} --classes cityscapes --prompt 'a photo of a {{}}.' "
                "--prompt 'a street scene with a {}.' --out text/ensemble.npz",
            ],
        )  # fmt: skip
        run(args)
    except UsageError as err:
        return config_cli.report_usage(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(config_cli.run_main(PROG, sys.argv[1:], main))
