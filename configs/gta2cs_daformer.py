"""DAFormer, GTA5 -> Cityscapes (MiT-B5, 512x512 crops).

Published: 68.3 mIoU on Cityscapes val (Hoyer et al., DAFormer, CVPR 2022; mean of 3 seeds).
DACS self-training with the DAFormer head (256 wide, separable ASPP), rare-class sampling
(T = 0.01), thing-class ImageNet feature distance (0.005), warmup 1500, EMA 0.999,
pseudo-label crop (top 15 / bottom 120 rows), 40k iterations, whole-image inference.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from base import get_config as base_config  # noqa: E402


def get_config():
    config = base_config()
    for head in (config.model.decode_head, config.model.lcmsm_head):
        head.embed_dim = 256
        head.channels = 256
    config.uda.pseudo_label_head = "decode"
    config.uda.masked_source = False
    config.uda.masked_mix = False
    config.uda.ignore_top = 15
    config.uda.ignore_bottom = 120
    config.train.steps = 40_000
    config.train.eval_every = 4_000
    config.eval.mode = "whole"
    return config
