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
}


def with_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """A copy of `config` (an LC-MSM experiment) turned into `method`.

    Raises:
      KeyError: `method` is not one of METHODS (the message lists them).
    """
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    config = copy.deepcopy(config)
    for path, value in METHODS[method].items():
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"method {method!r} sets {path}, which the config does not have")
        node[leaf] = value
    return config
