"""Defaults shared by every experiment: the LC-MSM model of the paper (METHOD.md §2).

Experiment files import `get_config()` from here and change only what differs.
Any field can be overridden on the command line: `--config.model.backbone=mit_b0`.
"""

import ml_collections


def model_config() -> ml_collections.ConfigDict:
    """MiT-B5 + DAFormer head + LC-MSM head, both heads 512 wide with separable ASPP."""
    model = ml_collections.ConfigDict()
    model.backbone = "mit_b5"  # mit_b0 .. mit_b5
    model.drop_path_rate = 0.1  # stochastic depth, linear over all blocks
    model.num_classes = 19
    model.text_dim = 1024  # OpenCLIP ViT-H-14 text width
    model.dtype = "float32"  # compute dtype; parameters stay float32
    model.depthwise_impl = "auto"  # auto | conv | shifted_sum (auto: shifted_sum on CPU)

    model.decode_head = ml_collections.ConfigDict()
    model.decode_head.embed_dim = 512  # DAFormer itself uses 256
    model.decode_head.channels = 512
    model.decode_head.fusion = "sep_aspp"  # sep_aspp | aspp | conv (1x1, SegFormer head)
    model.decode_head.dilations = (1, 6, 12, 18)
    model.decode_head.dropout = 0.1  # Dropout2d before the classifier

    model.lcmsm_head = ml_collections.ConfigDict()
    model.lcmsm_head.embed_dim = 512
    model.lcmsm_head.channels = 512  # also the text projection's output width
    model.lcmsm_head.fusion = "sep_aspp"
    model.lcmsm_head.dilations = (1, 6, 12, 18)
    model.lcmsm_head.dropout = 0.1
    model.lcmsm_head.tau = 0.07  # correlation scale 1/tau, a constant
    model.lcmsm_head.spatial_block = "bottleneck"  # bottleneck (arch 1) | depthwise (arch 2) | none
    model.lcmsm_head.block_depth = 2  # shared block applied this many times, last without act
    model.lcmsm_head.activation = "relu"  # relu | lrelu | tanh
    return model


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = model_config()
    return config
