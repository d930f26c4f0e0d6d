"""The files `lcmsm-prepare` writes next to a dataset, and how they are read back.

`lcmsm_manifest.json` lists the validated image/label pairs of each split; it is written
last and records the SHA-256 of `lcmsm_class_stats.json` (per-image class pixel counts), so
a manifest never points at a stale or half-written statistics file. Both are written with
`lcmsm_jax.atomic` (a temporary file in the same folder, flushed and renamed into place), so
an interrupted run leaves each file old or new, never half-written, and a new statistics file
under an old manifest is detected by its hash.
"""

import hashlib
import json
import os
from typing import Any

from lcmsm_jax import atomic

MANIFEST_NAME = "lcmsm_manifest.json"
STATS_NAME = "lcmsm_class_stats.json"
MANIFEST_FORMAT = "lcmsm-data-manifest"
STATS_FORMAT = "lcmsm-class-stats"
VERSION = 1


class ManifestError(ValueError):
    """The prepared files are missing, stale or inconsistent."""


def _encode(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()


def write_prepared(out_dir: str, manifest: dict, stats: dict) -> tuple[str, str]:
    """Write stats then the manifest (which records the stats hash); returns both paths."""
    stats_bytes = _encode({"format": STATS_FORMAT, "version": VERSION, **stats})
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": VERSION,
        **manifest,
        "stats_file": STATS_NAME,
        "stats_sha256": hashlib.sha256(stats_bytes).hexdigest(),
    }
    stats_path = os.path.join(out_dir, STATS_NAME)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    atomic.write_bytes(stats_path, stats_bytes)
    atomic.write_bytes(manifest_path, _encode(manifest))
    return manifest_path, stats_path


def _read_json(path: str, expected_format: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
        obj = json.loads(data)
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: cannot be read ({e}); run lcmsm-prepare again") from e
    if obj.get("format") != expected_format or obj.get("version") != VERSION:
        raise ManifestError(
            f"{path}: not a {expected_format} file of version {VERSION}; "
            "run lcmsm-prepare again to regenerate it"
        )
    obj["_sha256"] = hashlib.sha256(data).hexdigest()
    return obj


def load_manifest(folder: str) -> dict | None:
    """The manifest in `folder`, or None if there is none."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.exists(path):
        return None
    return _read_json(path, MANIFEST_FORMAT)


def load_stats(folder: str) -> dict:
    """The class statistics in `folder`, checked against the manifest that wrote them."""
    manifest = load_manifest(folder)
    if manifest is None:
        raise ManifestError(
            f"{os.path.join(folder, MANIFEST_NAME)} not found; run "
            f"`lcmsm-prepare --dataset NAME --root {folder}` to compute class statistics"
        )
    path = os.path.join(folder, manifest["stats_file"])
    stats = _read_json(path, STATS_FORMAT)
    if stats["_sha256"] != manifest["stats_sha256"]:
        raise ManifestError(
            f"{path} does not match {MANIFEST_NAME} (it was changed after lcmsm-prepare "
            "wrote it); run lcmsm-prepare again"
        )
    return stats
