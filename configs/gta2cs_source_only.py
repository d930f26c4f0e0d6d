"""Source-only: MiT-B5 + SegFormer all-MLP head trained on GTA5, evaluated on Cityscapes.

Published: 45.6 mIoU on Cityscapes val (DAFormer paper, Tab. 1).
Cross-entropy on source crops only (no teacher, no mixing, no masks), no RCS, 40k
iterations with the usual warmup and poly schedule, whole-image inference.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from base import get_config as base_config  # noqa: E402


def get_config():
    config = base_config()
    # SegFormer's head: per-level MLP embedding, 1x1 conv fusion with BN + ReLU, 768 wide.
    config.model.decode_head.fusion = "conv"
    config.model.decode_head.embed_dim = 768
    config.model.decode_head.channels = 768
    config.uda.enabled = False
    config.uda.pseudo_label_head = "decode"
    config.uda.masked_source = False
    config.uda.masked_mix = False
    config.uda.feature_distance_weight = 0.0
    config.data.source.rcs = False
    config.train.steps = 40_000
    config.train.eval_every = 4_000
    config.eval.mode = "whole"
    return config
