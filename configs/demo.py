"""Demo: LC-MSM on procedural street scenes, on a laptop CPU in a few minutes.

Source: synthetic "GTA-like" scenes (labelled); target: synthetic "Cityscapes-like"
scenes (unlabelled during training, labelled for evaluation). Same layout statistics
(nearly), different appearance: palette, lighting, texture, noise, blur
(`lcmsm_jax/data/synthetic.py`). A small MiT-B0 model trained from scratch with the full
LC-MSM step; text anchors are random unit vectors unless `--config.text.embeddings`
points to a file from `lcmsm-embed-text`. Differences from the paper's setting, all
because nothing here is pretrained: no ImageNet feature distance (its frozen backbone
would be the random initial one), a shorter warmup, a larger learning rate.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from base import get_config as base_config  # noqa: E402


def get_config():
    config = base_config()
    config.model.backbone = "mit_b0"
    config.model.text_dim = 64
    for head in (config.model.decode_head, config.model.lcmsm_head):
        head.embed_dim = 64
        head.channels = 64
    config.text.embeddings = "random:0"

    data = config.data
    data.synthetic.size = (128, 256)
    data.synthetic.num_images = 500
    data.crop_size = (128, 128)
    data.batch_size = 4
    for domain in (data.source, data.target, data.eval):
        domain.dataset = "synthetic"
        domain.scale = (256, 128)
    data.source.rcs_min_pixels = 100
    data.eval.max_images = 64
    data.eval.batch_size = 8

    config.uda.feature_distance_weight = 0.0
    config.uda.mask_block_size = 16
    config.optim.lr = 6e-4
    config.optim.warmup_steps = 50

    config.train.steps = 300
    config.train.log_every = 10
    config.train.eval_every = 150
    config.train.image_every = 100
    config.train.checkpoint_every = 300
    config.eval.mode = "whole"
    return config
