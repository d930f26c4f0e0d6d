"""LC-MSM on HRDA, GTA5 -> Cityscapes (MiT-B5, multi-resolution).

Published: 76.0 mIoU on Cityscapes val ("LC-MSM (Multi-resolution)", README of the LC-MSM
code). configs/gta2cs_lcmsm.py (both heads 512 wide, masked source and masked mixed losses
through the LC head, pseudo-labels from the teacher's LC head, 60k iterations) on HRDA's
multi-resolution model and data as configs/gta2cs_hrda.py sets them (docs/method.md §8).

Masking as MIC(HRDA): 64 px blocks at ratio 0.7. The LC-MSM code has no multi-resolution
recipe and the paper's text was not available to check, so this is an assumption: 64 px
blocks keep the single-resolution 32 px blocks' share of a crop at twice the resolution,
and 0.7 is the ratio of MIC(HRDA), which the multi-resolution LC-MSM builds on, and the one
the LC-MSM code's description string states. The single-resolution code executes 0.5:
`--config.uda.mask_ratio=0.5` runs that instead.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from base import get_config as base_config  # noqa: E402
from gta2cs_hrda import apply_multires  # noqa: E402


def get_config(source: str = "gta5"):
    config = apply_multires(base_config(), source)
    config.uda.mask_block_size = 64
    config.uda.mask_ratio = 0.7
    return config
