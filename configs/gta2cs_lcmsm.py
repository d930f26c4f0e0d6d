"""LC-MSM, GTA5 -> Cityscapes, single resolution (MiT-B5, 512x512 crops).

Published: 71.8 mIoU on Cityscapes val (Kim, Lee & Lee, Pattern Recognition 148, 2024).
Model values are the paper's (METHOD.md §2): MiT-B5, DAFormer and LC-MSM heads 512 wide
with separable ASPP (dilations 1/6/12/18), tau 0.07, bottleneck spatial block of depth 2,
OpenCLIP ViT-H-14 text embeddings (1024-d).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import base  # noqa: E402


def get_config():
    config = base.get_config()
    config.model.backbone = "mit_b5"
    config.model.text_dim = 1024
    return config
