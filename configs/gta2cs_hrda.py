"""HRDA, GTA5 -> Cityscapes (MiT-B5, multi-resolution: 1024 x 1024 context crops seen at
x0.5 plus 512 x 512 detail crops at full resolution).

Published: 73.8 mIoU on Cityscapes val (Hoyer et al., HRDA, ECCV 2022; README and abstract).
DAFormer self-training (configs/gta2cs_daformer.py: 256-wide DAFormer head, pseudo-labels
from the teacher's DAFormer head, no LC-MSM head losses, 40k iterations) on HRDA's
multi-resolution model and data (docs/method.md §8): sources resized to fit (2560, 1440),
Cityscapes kept at 2048 x 1024, 1024 crops, RCS crop ratio 2.0, scale attention and a
512 x 512 detail crop with loss 0.9 fused + 0.1 detail, the pseudo-label margins
(30, 240, 30, 30) instead of DAFormer's row crop, and test-time slide windows of
1024 x 1024 at stride 512 over the 2048 x 1024 image, each running the context pass and the
512 / 256 detail slide (docs/method.md §8.7).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from base import hr_data_config  # noqa: E402
from gta2cs_daformer import get_config as daformer_config  # noqa: E402


def apply_multires(config, source: str = "gta5"):
    """HRDA's multi-resolution settings on `config` (any rung), `source` gta5 or synthia."""
    config.data = hr_data_config(source)
    hrda = config.model.hrda
    hrda.enabled = True
    hrda.detail_size = (512, 512)
    hrda.detail_loss_weight = 0.1
    # The margins of config.data.target.pseudo_margins replace DAFormer's row crop.
    config.uda.ignore_top = 0
    config.uda.ignore_bottom = 0
    config.eval.mode = "slide"
    config.eval.crop = (1024, 1024)
    config.eval.stride = (512, 512)
    return config


def get_config():
    return apply_multires(daformer_config())
