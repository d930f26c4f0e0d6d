"""MIC(HRDA), GTA5 -> Cityscapes (MiT-B5, multi-resolution).

Published: 75.9 mIoU on Cityscapes val (Hoyer et al., MIC, CVPR 2023; README and abstract).
configs/gta2cs_hrda.py plus MIC's masked target loss: the colour-augmented target, masked
with 64 px blocks (the 32 px of MIC(DAFormer) at twice the resolution) at ratio 0.7, a
multi-resolution forward with its own detail box, the teacher's pseudo-labels, weight 1.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from gta2cs_hrda import get_config as hrda_config  # noqa: E402


def get_config():
    config = hrda_config()
    config.uda.masked_target = True
    config.uda.mask_block_size = 64
    config.uda.mask_ratio = 0.7
    return config
