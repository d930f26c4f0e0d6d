"""The ablation ladder as data: each method is the LC-MSM config with terms switched off.

docs/method.md §1.3 builds LC-MSM rung by rung (source-only, DACS, DAFormer, MIC(DAFormer),
LC-MSM). On one benchmark the rungs are compared with everything else held fixed: model,
crops, schedule, EMA rate and evaluation come from the experiment config (e.g.
`configs/demo.py`), and a method only changes which loss terms run and how the source is
sampled. Architecture and schedule differences between the published rungs (SegFormer head
for DACS, 40k vs 60k iterations, ...) are deliberately not part of it.

  source_only  CE on source crops only (no teacher, no mixing, no masks, no RCS)
  dacs         + EMA teacher pseudo-labels from the DAFormer head, ClassMix, jitter/blur
  daformer     + rare-class sampling and the thing-class feature distance (when the
               config's weight is > 0: it needs an ImageNet-pretrained backbone)
  mic          + masked target through the DAFormer head (ratio 0.7)
  lcmsm        the config itself: masked source and masked mix through the LC-MSM head,
               pseudo-labels from the teacher's LC-MSM head
  oracle       LC-MSM with the target's own labels in place of pseudo-labels (upper bound)

Beyond the ladder, `lcmsm_hrda` is LC-MSM on the experiment's multi-resolution version
(docs/method.md §8): HRDA changes the data (twice the resolution, larger crops) as well as
the model, so the experiment config states that version as data, `config.multires`, an
overlay of the values that differ (configs/demo_hr.py). Same steps, batch and seed.
"""

from __future__ import annotations

import copy

import ml_collections

_DECODE_ONLY = {
    "uda.pseudo_label_head": "decode",
    "uda.masked_source": False,
    "uda.masked_mix": False,
    "uda.masked_target": False,
}

# Overrides applied to the LC-MSM experiment config, as dotted paths.
METHODS: dict[str, dict[str, object]] = {
    "source_only": {
        **_DECODE_ONLY,
        "uda.enabled": False,
        "uda.feature_distance_weight": 0.0,
        "data.source.rcs": False,
    },
    "dacs": {**_DECODE_ONLY, "uda.feature_distance_weight": 0.0, "data.source.rcs": False},
    "daformer": {**_DECODE_ONLY},
    "mic": {**_DECODE_ONLY, "uda.masked_target": True, "uda.mask_ratio": 0.7},
    "lcmsm": {},
    "oracle": {"uda.target_supervised": True},
}

LABELS = {
    "source_only": "Source-only",
    "dacs": "DACS",
    "daformer": "DAFormer",
    "mic": "MIC(DAFormer)",
    "lcmsm": "LC-MSM",
    "oracle": "Target-supervised (oracle)",
    "lcmsm_hrda": "LC-MSM(HRDA)",
}

# Methods on the experiment's multi-resolution version: the named single-resolution method
# with config.multires laid over it and config.model.hrda switched on.
MULTIRES: dict[str, str] = {"lcmsm_hrda": "lcmsm"}
ALL = (*METHODS, *MULTIRES)


def with_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """A copy of `config` (an LC-MSM experiment) turned into `method`.

    Raises:
      KeyError: `method` is not one of ALL (the message lists them), or a multi-resolution
        method on a config without (or with an unknown key in) config.multires.
    """
    if method in MULTIRES:
        return _multires(with_method(config, MULTIRES[method]), method)
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; expected one of {', '.join(ALL)}")
    config = copy.deepcopy(config)
    for path, value in METHODS[method].items():
        _replace(
            config, path, value, f"method {method!r} sets {path}, which the config does not have"
        )
    return config


def _multires(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """`config` with config.multires laid over it and the multi-resolution model on."""
    overlay = config.get("multires")
    if not overlay:
        raise KeyError(
            f"method {method!r} needs config.multires, the experiment's multi-resolution "
            "version (e.g. configs/demo_hr.py); this config has none"
        )
    for path, value in _leaves(overlay).items():
        _replace(
            config, path, value, f"config.multires.{path}: the config has no {path} to replace"
        )
    config.model.hrda.enabled = True
    return config


def _replace(config: ml_collections.ConfigDict, path: str, value, error: str) -> None:
    """Set the dotted `path` of `config` to `value`; KeyError(error) where it has no such key."""
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
        node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(error)
    node[leaf] = value


def _leaves(node: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """{dotted path: value} of every non-ConfigDict value under `node`."""
    leaves = {}
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[prefix + key] = value
    return leaves
