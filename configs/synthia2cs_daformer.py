"""DAFormer, SYNTHIA -> Cityscapes (MiT-B5, 512x512 crops).

Published: 60.9 mIoU16 / 67.4 mIoU13 on Cityscapes val (DAFormer paper and README).
As gta2cs_daformer.py with SYNTHIA-RAND-CITYSCAPES as the source (kept at 1280x760).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from gta2cs_daformer import get_config as daformer_config  # noqa: E402


def get_config():
    config = daformer_config()
    config.data.source.dataset = "synthia"
    config.data.source.scale = (1280, 760)
    config.data.eval_classes = "synthia16"
    return config
