"""DACS with a MiT-B5 + SegFormer all-MLP head, GTA5 -> Cityscapes.

Published: 58.2 mIoU on Cityscapes val (DAFormer paper, Tab. 1; a reproduction reports 58.8).
EMA teacher (0.99), ClassMix, confidence-weighted pseudo-labels (0.968), colour jitter and
blur on mixed images, warmup; no RCS, no feature distance, no pseudo-label crop.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from gta2cs_source_only import get_config as source_only_config  # noqa: E402


def get_config():
    config = source_only_config()
    config.uda.enabled = True
    config.uda.alpha = 0.99
    return config
