"""Frozen class-name text embeddings: the file format, its validation, and config specs.

LC-MSM conditions its LC head on text embeddings of the class names (docs/method.md §2.5). The
text tower is frozen and has no dropout, so the embeddings are computed once (by
`lcmsm-embed-text`, see `lcmsm_jax.clip_text`) and stored in a small `.npz` file:

    embeddings         [C, D] float32   one row per class, in the dataset's class order
    class_names        [C] str          the dataset's class names (before prompt renames)
    prompt_names       [C] str          the names put into the prompts (after renames)
    prompts            [T] str          prompt templates, each with one "{}" for the name
    model              str              OpenCLIP architecture, e.g. "ViT-H-14"
    pretrained         str              OpenCLIP tag, checkpoint path, or "none" (random init)
    seed               int              torch seed used to build the model (matters for "none")
    open_clip_version  str              version of open_clip_torch that computed the file
    normalized         bool             whether the rows were L2-normalised
    format_version     int              version of this layout
    sha256             str              `content_hash(embeddings, class_names, normalized)`

This module needs only numpy: training machines never import torch to read the file.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lcmsm_jax import atomic

FORMAT_VERSION = 1
RANDOM_PREFIX = "random:"

_STRING_KEYS = ("model", "pretrained", "open_clip_version", "sha256")
_LIST_KEYS = ("class_names", "prompt_names", "prompts")
REQUIRED_KEYS: tuple[str, ...] = (
    "embeddings",
    *_LIST_KEYS,
    *_STRING_KEYS,
    "seed",
    "normalized",
    "format_version",
)


class TextEmbeddingError(ValueError):
    """A text-embedding file or spec that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class TextEmbeddings:
    """The validated content of one text-embedding file.

    Attributes:
      embeddings: [C, D] float32, row i belongs to `class_names[i]`.
      class_names: C dataset class names.
      prompt_names: C names used inside the prompts (after renames).
      prompts: T prompt templates; T > 1 means a prompt ensemble.
      model, pretrained, open_clip_version, sha256: provenance strings.
      seed: torch seed the model was built with.
      normalized: whether rows are unit length.
    """

    embeddings: np.ndarray
    class_names: tuple[str, ...]
    prompt_names: tuple[str, ...]
    prompts: tuple[str, ...]
    model: str
    pretrained: str
    seed: int
    open_clip_version: str
    normalized: bool
    sha256: str

    def describe(self, path: str | os.PathLike[str]) -> str:
        """One line for the training log: where the vectors came from and which they are."""
        num_classes, dim = self.embeddings.shape
        prompts = " | ".join(self.prompts)
        return (
            f"text embeddings {os.fspath(path)}: {num_classes}x{dim} from OpenCLIP "
            f"{self.model} (pretrained={self.pretrained}), prompts [{prompts}], "
            f"normalized={self.normalized}, sha256 {self.sha256[:12]}"
        )


def content_hash(embeddings: np.ndarray, class_names: Sequence[str], normalized: bool) -> str:
    """sha256 (hex) over what training depends on: the vectors, their classes and scaling.

    Args:
      embeddings: [C, D] array; hashed as little-endian float32, row-major.
      class_names: C names, hashed in order.
      normalized: the stored normalisation flag.
    """
    array = np.ascontiguousarray(embeddings, dtype="<f4")
    digest = hashlib.sha256()
    digest.update(f"lcmsm-text-v{FORMAT_VERSION}|{array.shape}|{bool(normalized)}|".encode())
    digest.update(array.tobytes())
    # A separator that cannot appear in a class name keeps ("a b", "c") apart from ("a", "b c").
    digest.update("\0".join(class_names).encode("utf-8"))
    return digest.hexdigest()


def save(
    path: str | os.PathLike[str],
    embeddings: np.ndarray,
    class_names: Sequence[str],
    *,
    prompt_names: Sequence[str],
    prompts: Sequence[str],
    model: str,
    pretrained: str,
    seed: int,
    open_clip_version: str,
    normalized: bool,
) -> str:
    """Writes a text-embedding file atomically and returns its content hash.

    The arrays go to a temporary file next to `path` which is renamed over `path` only once
    complete, so an interrupted run never leaves a half-written file behind.

    Args:
      path: destination `.npz` file; parent folders are created.
      embeddings: [C, D] float array (stored as float32).
      class_names, prompt_names: C names each; prompts: T templates.
      model, pretrained, seed, open_clip_version, normalized: provenance, stored as given.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(class_names):
        raise ValueError(
            f"embeddings must be [C, D] with C = {len(class_names)} classes, "
            f"got shape {embeddings.shape}"
        )
    sha256 = content_hash(embeddings, class_names, normalized)
    arrays = {
        "embeddings": embeddings,
        "class_names": np.asarray(list(class_names), dtype=str),
        "prompt_names": np.asarray(list(prompt_names), dtype=str),
        "prompts": np.asarray(list(prompts), dtype=str),
        "model": np.asarray(model),
        "pretrained": np.asarray(pretrained),
        "seed": np.asarray(seed, dtype=np.int64),
        "open_clip_version": np.asarray(open_clip_version),
        "normalized": np.asarray(bool(normalized)),
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        "sha256": np.asarray(sha256),
    }
    with atomic.replace_file(path, "wb") as f:
        np.savez(f, **arrays)
    return sha256


def read(path: str | os.PathLike[str]) -> TextEmbeddings:
    """Reads a text-embedding file and checks it is internally consistent.

    Checks: required keys, a [C, D] float32 array matching the C class names, finite
    values, and the stored content hash. Dataset-specific checks are in `load`.

    Raises:
      FileNotFoundError: no file at `path`.
      TextEmbeddingError: anything else wrong with the file.
    """
    name = os.fspath(path)
    raw = _read_npz(name)
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise TextEmbeddingError(
            f"{name}: not a text-embedding file, missing keys {missing} "
            f"(a file from lcmsm-embed-text has {list(REQUIRED_KEYS)})"
        )
    try:
        version = int(raw["format_version"])
        emb = _record(raw)
    except (TypeError, ValueError) as e:
        raise TextEmbeddingError(f"{name}: malformed metadata ({e})") from e
    _check_format_version(name, version)
    _check_array(name, emb)
    _check_finite(name, emb)
    _check_hash(name, emb)
    return emb


def _record(raw: Mapping[str, np.ndarray]) -> TextEmbeddings:
    """The typed record of a file's arrays; raises TypeError/ValueError on odd contents."""
    return TextEmbeddings(
        embeddings=raw["embeddings"],
        class_names=tuple(str(s) for s in np.atleast_1d(raw["class_names"])),
        prompt_names=tuple(str(s) for s in np.atleast_1d(raw["prompt_names"])),
        prompts=tuple(str(s) for s in np.atleast_1d(raw["prompts"])),
        model=str(raw["model"]),
        pretrained=str(raw["pretrained"]),
        seed=int(raw["seed"]),
        open_clip_version=str(raw["open_clip_version"]),
        normalized=bool(raw["normalized"]),
        sha256=str(raw["sha256"]),
    )


def _read_npz(name: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file, without pickles (a data file must not run code)."""
    if not os.path.exists(name):
        raise FileNotFoundError(
            f"{name}: text-embedding file not found (compute it with lcmsm-embed-text)"
        )
    if not zipfile.is_zipfile(name):
        # np.load would take it for a pickle and suggest allow_pickle, which runs its code.
        raise TextEmbeddingError(
            f"{name} is not an .npz archive (it starts with {_head(name)!r}); write it with "
            "lcmsm-embed-text"
        )
    try:
        with np.load(name, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise TextEmbeddingError(f"{name}: not a readable .npz file ({e})") from e
        raise TextEmbeddingError(
            f"{name}: holds object arrays, which are not read (loading them would run code "
            "stored in the file); write it with lcmsm-embed-text"
        ) from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise TextEmbeddingError(f"{name}: not a readable .npz file ({e})") from e


def _head(name: str, size: int = 16) -> bytes:
    """The first bytes of a file, to show what it is instead."""
    with open(name, "rb") as f:
        return f.read(size)


def _check_format_version(name: str, version: int) -> None:
    if version != FORMAT_VERSION:
        raise TextEmbeddingError(
            f"{name}: format_version {version}, this code reads version {FORMAT_VERSION}"
        )


def _check_array(name: str, emb: TextEmbeddings) -> None:
    """embeddings must be [C, D] float32 with one row per class name."""
    array = emb.embeddings
    if array.dtype != np.float32 or array.ndim != 2:
        raise TextEmbeddingError(
            f"{name}: embeddings must be a [C, D] float32 array, "
            f"found {array.dtype} with shape {array.shape}"
        )
    if array.shape[0] != len(emb.class_names):
        raise TextEmbeddingError(
            f"{name}: {array.shape[0]} embedding rows but {len(emb.class_names)} class names"
        )
    if len(emb.prompt_names) != len(emb.class_names):
        raise TextEmbeddingError(
            f"{name}: {len(emb.prompt_names)} prompt names but {len(emb.class_names)} classes"
        )


def _check_finite(name: str, emb: TextEmbeddings) -> None:
    bad = ~np.isfinite(emb.embeddings)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise TextEmbeddingError(
            f"{name}: embeddings contain {int(bad.sum())} non-finite values (NaN/Inf), "
            f"first in row {row} (class {emb.class_names[row]!r})"
        )


def _check_hash(name: str, emb: TextEmbeddings) -> None:
    computed = content_hash(emb.embeddings, emb.class_names, emb.normalized)
    if computed != emb.sha256:
        raise TextEmbeddingError(
            f"{name}: content hash mismatch (stored sha256 {emb.sha256[:16]}..., computed "
            f"{computed[:16]}...): the file was modified or corrupted; recompute it with "
            "lcmsm-embed-text"
        )


def check_classes(name: str, found: Sequence[str], expected: Sequence[str]) -> None:
    """Raises unless `found` equals `expected` exactly: same count, same order.

    Args:
      name: file name to put in the message.
      found: class names stored in the file.
      expected: the dataset's class names (e.g. `labels.CITYSCAPES_CLASSES`).
    """
    found, expected = list(found), list(expected)
    if len(found) != len(expected):
        raise TextEmbeddingError(
            f"{name}: has {len(found)} classes but the dataset has {len(expected)}; "
            f"expected {expected}, found {found}"
        )
    for index, (got, want) in enumerate(zip(found, expected, strict=True)):
        if got != want:
            raise TextEmbeddingError(
                f"{name}: class {index} is {got!r} but the dataset expects {want!r} "
                "(first mismatch; rows must follow the dataset's class order)"
            )


def check_dim(name: str, dim: int, expected_dim: int) -> None:
    """Raises unless the embedding width D equals the model's text input width."""
    if dim != expected_dim:
        raise TextEmbeddingError(
            f"{name}: embeddings have dimension {dim} but the model expects {expected_dim} "
            "(compute them with the OpenCLIP model whose text width matches, e.g. ViT-H-14 "
            "for 1024)"
        )


def load(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    expected_dim: int | None = None,
) -> np.ndarray:
    """Loads a text-embedding file validated against a dataset and model.

    Args:
      path: `.npz` file written by `lcmsm-embed-text`.
      class_names: the dataset's C class names, in label order.
      expected_dim: the model's text input width D; None skips this check.

    Returns:
      [C, D] float32 embeddings, row i for `class_names[i]`.

    Raises:
      FileNotFoundError: no file at `path`.
      TextEmbeddingError (a ValueError): the file is malformed, corrupted, for other
        classes or another order, or of the wrong width.
    """
    return load_with_info(path, class_names, expected_dim).embeddings


def load_with_info(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    expected_dim: int | None = None,
) -> TextEmbeddings:
    """Like `load`, but returns the whole validated record (for logging provenance)."""
    emb = read(path)
    name = os.fspath(path)
    check_classes(name, emb.class_names, class_names)
    if expected_dim is not None:
        check_dim(name, emb.embeddings.shape[1], expected_dim)
    return emb


def random_embeddings(seed: int, num_classes: int, dim: int) -> np.ndarray:
    """Deterministic random unit vectors, a stand-in for runs without a language prior.

    Rows are L2-normalised so their scale does not depend on `dim` (Gaussian rows would
    have norm ~sqrt(dim)); random unit vectors in high dimension are nearly orthogonal,
    so each class still gets a distinct code.

    Returns:
      [num_classes, dim] float32, a pure function of (seed, num_classes, dim).
    """
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((num_classes, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def parse_random_seed(spec: str) -> int | None:
    """The seed of a "random:<seed>" spec, or None when `spec` is not of that form."""
    if not spec.startswith(RANDOM_PREFIX):
        return None
    seed_text = spec[len(RANDOM_PREFIX) :]
    try:
        seed = int(seed_text)
    except ValueError:
        raise TextEmbeddingError(
            f"text embeddings spec {spec!r}: the seed after 'random:' must be an integer"
        ) from None
    if seed < 0:
        raise TextEmbeddingError(f"text embeddings spec {spec!r}: the seed must be >= 0")
    return seed


def resolve(spec: str, class_names: Sequence[str], dim: int | None) -> tuple[np.ndarray, str]:
    """Turns a config value (`config.text.embeddings`) into embeddings and a log line.

    Args:
      spec: path to a `.npz` from `lcmsm-embed-text`, or "random:<seed>".
      class_names: the dataset's C class names, in label order.
      dim: the model's text input width D (required for "random:<seed>").

    Returns:
      ([C, D] float32 embeddings, one-line description for the training log).
    """
    seed = parse_random_seed(spec)
    if seed is None:
        try:
            info = load_with_info(spec, class_names, dim)
        except TextEmbeddingError as err:  # name the config key the file came from
            raise TextEmbeddingError(f"config.text.embeddings: {err}") from err
        return info.embeddings, info.describe(spec)
    if dim is None:
        raise TextEmbeddingError(
            f"text embeddings spec {spec!r}: random embeddings need the model's text dimension"
        )
    embeddings = random_embeddings(seed, len(class_names), dim)
    description = (
        f"text embeddings {spec}: {len(class_names)}x{dim} random unit vectors "
        f"(seed {seed}; no language prior)"
    )
    return embeddings, description
