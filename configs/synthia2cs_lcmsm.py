"""LC-MSM, SYNTHIA -> Cityscapes, single resolution (MiT-B5, 512x512 crops).

Published: 62.8 mIoU16 on Cityscapes val (LC-MSM paper abstract and README).
As gta2cs_lcmsm.py with SYNTHIA-RAND-CITYSCAPES as the source (kept at 1280x760); the
model still predicts the 19 Cityscapes classes, evaluation reports mIoU16 and mIoU13.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from base import get_config as base_config  # noqa: E402


def get_config():
    config = base_config()
    config.data.source.dataset = "synthia"
    config.data.source.scale = (1280, 760)
    config.data.eval_classes = "synthia16"
    return config
