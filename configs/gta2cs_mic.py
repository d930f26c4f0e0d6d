"""MIC(DAFormer), GTA5 -> Cityscapes (MiT-B5, 512x512 crops).

Published: 70.6 mIoU on Cityscapes val (Hoyer et al., MIC, CVPR 2023, Tab. 1).
DAFormer plus a masked target loss: the colour-augmented target, masked with 32 px blocks
at ratio 0.7, through the DAFormer head with the teacher's pseudo-labels (weight 1).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from gta2cs_daformer import get_config as daformer_config  # noqa: E402


def get_config():
    config = daformer_config()
    config.uda.masked_target = True
    config.uda.mask_block_size = 32
    config.uda.mask_ratio = 0.7
    return config
