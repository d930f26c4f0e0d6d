"""LC-MSM on HRDA, SYNTHIA -> Cityscapes (MiT-B5, multi-resolution).

Published: 68.2 mIoU16 on Cityscapes val ("LC-MSM (Multi-resolution)", README of the LC-MSM
code). For comparison: HRDA 65.8, MIC(HRDA) 67.3 (MIC paper, Tab. 2).
As configs/gta2cs_lcmsm_hrda.py with SYNTHIA-RAND-CITYSCAPES as the source, resized to
fit (2560, 1520); the model still predicts the 19 Cityscapes classes, evaluation reports
mIoU16 and mIoU13.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from gta2cs_lcmsm_hrda import get_config as lcmsm_hrda_config  # noqa: E402


def get_config():
    return lcmsm_hrda_config("synthia")
