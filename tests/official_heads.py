"""Plain-PyTorch transcriptions of the decode heads of the official LC-MSM code.

Source: github.com/2U1/LC-MSM (mmseg 0.16 based, mmcv 1.x bricks). Each class or function
names the file and the class/function whose behaviour it reproduces. Module attribute names
are the official ones, so `state_dict()` keys are those of an official checkpoint
(`model.decode_head.*`, `model.vlc_head.*`, `text_embed_net.*`). Only the pieces the LC-MSM
configuration (`configs/_base_/models/lc_msm.py` + `lc_msm_sepaspp.py`) reaches are
transcribed: BN norm, ReLU activation, MLP embeddings, (separable) ASPP or 1x1 conv fusion,
no image pooling, no context layer; losses, samplers and fp16 wrappers are left out.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Values of the official model config (configs/_base_/models/lc_msm.py with
# configs/_base_/models/lc_msm_sepaspp.py), `tau` from the default of
# mmseg/models/segmentors/tigda_encoder_decoder.py: TigDAEncoderDecoder.__init__ and the text
# projection from mmseg/models/uda/dacs_tigda.py: DACSTigDA.__init__ (nn.Linear(1024, 512)).
OFFICIAL_MODEL = {
    "in_channels": [64, 128, 320, 512],
    "num_classes": 19,
    "tau": 0.07,
    "text_dim": 1024,
    "text_out": 512,
    "decode_head": {
        "embed_dims": 512,
        "channels": 512,
        "dropout_ratio": 0.1,
        "fusion": {"type": "aspp", "sep": True, "dilations": (1, 6, 12, 18), "pool": False},
    },
    "vlc_head": {
        "embed_dims": 512,
        "channels": 512,
        "dropout_ratio": 0.1,
        "fusion": {"type": "aspp", "sep": True, "dilations": (1, 6, 12, 18), "pool": False},
        "arch_option": 1,
        "block_depth": 2,
        "activation": "relu",
    },
}


RELU = {"type": "ReLU"}  # mmcv's default `act_cfg`; never mutated (copied before use)


def resize(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Mirrors `mmseg/ops/wrappers.py: resize` (F.interpolate; the warning is left out)."""
    return F.interpolate(input, size, scale_factor, mode, align_corners)


def build_norm_layer(cfg: dict, num_features: int) -> tuple[str, nn.Module]:
    """Mirrors `mmcv/cnn/bricks/norm.py: build_norm_layer` for `type='BN'` (BatchNorm2d,
    abbreviation `bn`, `requires_grad` applied to the affine parameters)."""
    cfg = dict(cfg)
    layer_type = cfg.pop("type")
    if layer_type != "BN":
        raise NotImplementedError(layer_type)
    requires_grad = cfg.pop("requires_grad", True)
    layer = nn.BatchNorm2d(num_features, **cfg)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return "bn", layer


def build_activation_layer(cfg: dict) -> nn.Module:
    """Mirrors `mmcv/cnn/bricks/activation.py: build_activation_layer` for `type='ReLU'`."""
    cfg = dict(cfg)
    if cfg.pop("type") != "ReLU":
        raise NotImplementedError(cfg)
    return nn.ReLU(**cfg)


class ConvModule(nn.Module):
    """Mirrors `mmcv/cnn/bricks/conv_module.py: ConvModule` with conv_cfg None (Conv2d),
    zero padding and order ('conv', 'norm', 'act'); `bias='auto'` drops the conv bias when a
    norm follows; the activation is in place, as ConvModule's default `inplace=True`."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias="auto",
        conv_cfg=None,
        norm_cfg=None,
        act_cfg=RELU,
        inplace=True,
    ):
        super().__init__()
        assert conv_cfg is None
        self.with_norm = norm_cfg is not None
        self.with_activation = act_cfg is not None
        if bias == "auto":
            bias = not self.with_norm
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        if self.with_norm:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        else:
            self.norm_name = None
        if self.with_activation:
            act_cfg_ = dict(act_cfg)
            act_cfg_.setdefault("inplace", inplace)
            self.activate = build_activation_layer(act_cfg_)

    @property
    def norm(self):
        return getattr(self, self.norm_name) if self.norm_name else None

    def forward(self, x, activate=True, norm=True):
        x = self.conv(x)
        if norm and self.with_norm:
            x = self.norm(x)
        if activate and self.with_activation:
            x = self.activate(x)
        return x


class DepthwiseSeparableConvModule(nn.Module):
    """Mirrors `mmcv/cnn/bricks/depthwise_separable_conv_module.py:
    DepthwiseSeparableConvModule`: a depthwise ConvModule (groups = in_channels, norm and
    activation as `norm_cfg`/`act_cfg`) followed by a pointwise 1x1 ConvModule."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        norm_cfg=None,
        act_cfg=RELU,
        **kwargs,
    ):
        super().__init__()
        assert "groups" not in kwargs
        self.depthwise_conv = ConvModule(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
            **kwargs,
        )
        self.pointwise_conv = ConvModule(
            in_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg, **kwargs
        )

    def forward(self, x):
        x = self.depthwise_conv(x)
        x = self.pointwise_conv(x)
        return x


class ASPPModule(nn.ModuleList):
    """Mirrors `mmseg/models/decode_heads/aspp_head.py: ASPPModule`: one ConvModule per
    dilation, 1x1 (padding 0) for dilation 1, 3x3 with padding = dilation otherwise."""

    def __init__(self, dilations, in_channels, channels, conv_cfg, norm_cfg, act_cfg):
        super().__init__()
        self.dilations = dilations
        self.in_channels = in_channels
        self.channels = channels
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        for dilation in dilations:
            self.append(
                ConvModule(
                    self.in_channels,
                    self.channels,
                    1 if dilation == 1 else 3,
                    dilation=dilation,
                    padding=0 if dilation == 1 else dilation,
                    conv_cfg=self.conv_cfg,
                    norm_cfg=self.norm_cfg,
                    act_cfg=self.act_cfg,
                )
            )

    def forward(self, x):
        return [aspp_module(x) for aspp_module in self]


class DepthwiseSeparableASPPModule(ASPPModule):
    """Mirrors `mmseg/models/decode_heads/sep_aspp_head.py: DepthwiseSeparableASPPModule`:
    every branch with dilation > 1 becomes a 3x3 DepthwiseSeparableConvModule."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for i, dilation in enumerate(self.dilations):
            if dilation > 1:
                self[i] = DepthwiseSeparableConvModule(
                    self.in_channels,
                    self.channels,
                    3,
                    dilation=dilation,
                    padding=dilation,
                    norm_cfg=self.norm_cfg,
                    act_cfg=self.act_cfg,
                )


class ASPPWrapper(nn.Module):
    """Mirrors `mmseg/models/decode_heads/daformer_head.py: ASPPWrapper` (the identical class
    in `lc_msm_head.py`): optional image pooling branch, ASPP branches, concatenation and a
    3x3 ConvModule bottleneck. The context layer (`context_cfg`) is not transcribed."""

    def __init__(
        self,
        in_channels,
        channels,
        sep,
        dilations,
        pool,
        norm_cfg,
        act_cfg,
        align_corners,
        context_cfg=None,
    ):
        super().__init__()
        assert isinstance(dilations, (list, tuple))
        assert context_cfg is None
        self.dilations = dilations
        self.align_corners = align_corners
        if pool:
            self.image_pool = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                ConvModule(in_channels, channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg),
            )
        else:
            self.image_pool = None
        self.context_layer = None
        aspp = {True: DepthwiseSeparableASPPModule, False: ASPPModule}[sep]
        self.aspp_modules = aspp(
            dilations=dilations,
            in_channels=in_channels,
            channels=channels,
            norm_cfg=norm_cfg,
            conv_cfg=None,
            act_cfg=act_cfg,
        )
        self.bottleneck = ConvModule(
            (len(dilations) + int(pool)) * channels,
            channels,
            kernel_size=3,
            padding=1,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
        )

    def forward(self, x):
        aspp_outs = []
        if self.image_pool is not None:
            aspp_outs.append(
                resize(
                    self.image_pool(x),
                    size=x.size()[2:],
                    mode="bilinear",
                    align_corners=self.align_corners,
                )
            )
        aspp_outs.extend(self.aspp_modules(x))
        aspp_outs = torch.cat(aspp_outs, dim=1)
        return self.bottleneck(aspp_outs)


class MLP(nn.Module):
    """Mirrors `mmseg/models/decode_heads/segformer_head.py: MLP`: flatten the map to tokens
    [N, HW, C] and apply one Linear (`proj`)."""

    def __init__(self, input_dim=2048, embed_dim=768):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2).contiguous()
        return self.proj(x)


def build_layer(in_channels, out_channels, type, **kwargs):
    """Mirrors `mmseg/models/decode_heads/daformer_head.py: build_layer` for the layer types
    `id`, `mlp` (which ignores the remaining keys), `sep_conv`, `conv` and `aspp`."""
    if type == "id":
        return nn.Identity()
    if type == "mlp":
        return MLP(input_dim=in_channels, embed_dim=out_channels)
    if type == "sep_conv":
        return DepthwiseSeparableConvModule(
            in_channels=in_channels,
            out_channels=out_channels,
            padding=kwargs["kernel_size"] // 2,
            **kwargs,
        )
    if type == "conv":
        return ConvModule(
            in_channels=in_channels,
            out_channels=out_channels,
            padding=kwargs["kernel_size"] // 2,
            **kwargs,
        )
    if type == "aspp":
        return ASPPWrapper(in_channels=in_channels, channels=out_channels, **kwargs)
    raise NotImplementedError(type)


class BaseDecodeHead(nn.Module):
    """Mirrors the parts of `mmseg/models/decode_heads/decode_head.py: BaseDecodeHead` that
    shape the forward pass: `conv_seg` (1x1 Conv2d with bias), `dropout` (Dropout2d, None
    for ratio 0) and `cls_seg` (dropout, then conv_seg). Loss, sampler and init config are
    accepted and ignored."""

    def __init__(
        self,
        in_channels,
        channels,
        *,
        num_classes,
        dropout_ratio=0.1,
        conv_cfg=None,
        norm_cfg=None,
        act_cfg=RELU,
        in_index=-1,
        input_transform=None,
        decoder_params=None,
        align_corners=False,
        loss_decode=None,
        ignore_index=255,
        sampler=None,
        init_cfg=None,
    ):
        super().__init__()
        assert input_transform == "multiple_select"
        assert isinstance(in_channels, (list, tuple)) and isinstance(in_index, (list, tuple))
        assert len(in_channels) == len(in_index)
        self.input_transform = input_transform
        self.in_channels = in_channels
        self.in_index = in_index
        self.channels = channels
        self.num_classes = num_classes
        self.dropout_ratio = dropout_ratio
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.align_corners = align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


def _build_embed_and_fuse(head: BaseDecodeHead, decoder_params: dict) -> None:
    """The `embed_layers` / `fuse_layer` construction shared verbatim by
    `daformer_head.py: DAFormerHead.__init__` and `lc_msm_head.py: LCMSMHead.__init__`."""
    embed_dims = decoder_params["embed_dims"]
    if isinstance(embed_dims, int):
        embed_dims = [embed_dims] * len(head.in_index)
    embed_cfg = decoder_params["embed_cfg"]
    embed_neck_cfg = decoder_params["embed_neck_cfg"]
    if embed_neck_cfg == "same_as_embed_cfg":
        embed_neck_cfg = embed_cfg
    fusion_cfg = decoder_params["fusion_cfg"]
    for cfg in [embed_cfg, embed_neck_cfg, fusion_cfg]:
        if cfg is not None and "aspp" in cfg["type"]:
            cfg["align_corners"] = head.align_corners
    embed_layers = {}
    for i, in_channels, embed_dim in zip(head.in_index, head.in_channels, embed_dims, strict=False):
        cfg = embed_neck_cfg if i == head.in_index[-1] else embed_cfg
        embed_layers[str(i)] = build_layer(in_channels, embed_dim, **cfg)
    head.embed_layers = nn.ModuleDict(embed_layers)
    head.fuse_layer = build_layer(sum(embed_dims), head.channels, **fusion_cfg)


def _embed_and_fuse(head: BaseDecodeHead, inputs):
    """The trunk of `daformer_head.py: DAFormerHead.forward` and `lc_msm_head.py:
    LCMSMHead.forward`: per-level embedding, token -> map reshape, bilinear resize to the
    first level's size where it differs, concatenation in `in_index` order, fusion."""
    x = inputs
    n, _, h, w = x[-1].shape
    os_size = x[0].size()[2:]
    _c = {}
    for i in head.in_index:
        _c[i] = head.embed_layers[str(i)](x[i])
        if _c[i].dim() == 3:
            _c[i] = _c[i].permute(0, 2, 1).contiguous().reshape(n, -1, x[i].shape[2], x[i].shape[3])
        if _c[i].size()[2:] != os_size:
            _c[i] = resize(_c[i], size=os_size, mode="bilinear", align_corners=head.align_corners)
    return head.fuse_layer(torch.cat(list(_c.values()), dim=1))


class DAFormerHead(BaseDecodeHead):
    """Mirrors `mmseg/models/decode_heads/daformer_head.py: DAFormerHead` (`__init__` and
    `forward`): embeddings, fusion, `cls_seg`."""

    def __init__(self, **kwargs):
        super().__init__(input_transform="multiple_select", **kwargs)
        assert not self.align_corners
        _build_embed_and_fuse(self, kwargs["decoder_params"])

    def forward(self, inputs):
        x = _embed_and_fuse(self, inputs)
        return self.cls_seg(x)


class depthwise_conv(nn.Module):
    """Mirrors `mmseg/models/decode_heads/lc_msm_head.py: depthwise_conv`: one 1->1 channel
    3x3 Conv2d (with bias) applied to every channel map separately."""

    def __init__(self, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.depthwise = nn.Conv2d(1, 1, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x):
        C, H, W = x.shape[1:]
        x = x.reshape(-1, 1, H, W)
        x = self.depthwise(x)
        return x.view(-1, C, H, W)


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "lrelu": nn.LeakyReLU, "tanh": nn.Tanh}[name]()


class depthwise_block(nn.Module):
    """Mirrors `mmseg/models/decode_heads/lc_msm_head.py: depthwise_block` (arch option 2):
    shared single-channel conv, then the activation unless `act=False`."""

    def __init__(self, kernel_size=3, stride=1, padding=1, activation="relu"):
        super().__init__()
        self.depthwise = depthwise_conv(kernel_size=3, stride=1, padding=1)
        self.activation = _activation(activation)

    def forward(self, x, act=True):
        x = self.depthwise(x)
        if act:
            x = self.activation(x)
        return x


class bottleneck_block(nn.Module):
    """Mirrors `mmseg/models/decode_heads/lc_msm_head.py: bottleneck_block` (arch option 1):
    the per-pixel max over channels of the input is added to the shared single-channel conv
    output, then the activation unless `act=False`."""

    def __init__(self, kernel_size=3, stride=1, padding=1, activation="relu"):
        super().__init__()
        self.depthwise = depthwise_conv(kernel_size=3, stride=1, padding=1)
        self.activation = _activation(activation)

    def forward(self, x, act=True):
        sum_layer = x.max(dim=1, keepdim=True)[0]
        x = self.depthwise(x)
        x = x + sum_layer
        if act:
            x = self.activation(x)
        return x


class LCMSMHead(BaseDecodeHead):
    """Mirrors `mmseg/models/decode_heads/lc_msm_head.py: LCMSMHead` (`__init__`, `forward`,
    `vision_language_connect`): the DAFormer trunk, then cosine similarity of every
    L2-normalised pixel feature with every L2-normalised text feature times
    `logit_scale = exp(log(1 / tau))` (a plain tensor attribute, hence not in the
    state_dict and never trained), the shared spatial block applied `block_depth` times
    (the last without activation), concatenation [features, similarity maps] and
    `cls_seg` on that (conv_seg takes channels + num_classes inputs)."""

    def __init__(self, tau, arch_option, block_depth, activation, **kwargs):
        self.tau = tau
        super().__init__(input_transform="multiple_select", **kwargs)
        decoder_params = kwargs["decoder_params"]
        self.block_depth = block_depth
        self.arch_option = arch_option
        if self.arch_option == 1:
            self.spatial_block = bottleneck_block(activation=activation)
        elif self.arch_option == 2:
            self.spatial_block = depthwise_block(activation=activation)
        assert not self.align_corners
        _build_embed_and_fuse(self, decoder_params)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / self.tau)).exp()
        self.conv_seg = nn.Conv2d(self.channels + self.num_classes, self.num_classes, 1)

    def forward(self, inputs, text_features):
        x = _embed_and_fuse(self, inputs)
        x = self.vision_language_connect(x, text_features)
        return self.cls_seg(x)

    def vision_language_connect(self, feat, text_features):
        self.logit_scale = self.logit_scale.to(feat.device)
        feat_shape = feat.shape
        imf = feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1])
        imf = imf / imf.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        cross_modal_feat = self.logit_scale * imf @ text_features.t()
        cross_modal_feat = cross_modal_feat.view(
            feat_shape[0], feat_shape[2], feat_shape[3], -1
        ).permute(0, 3, 1, 2)
        if self.arch_option in [1, 2]:
            for _ in range(self.block_depth - 1):
                cross_modal_feat = self.spatial_block(cross_modal_feat)
            cross_modal_feat = self.spatial_block(cross_modal_feat, False)
        return torch.cat([feat, cross_modal_feat], dim=1)


def build_head(cfg: dict) -> nn.Module:
    """Mirrors `mmseg/models/builder.py: build_head` for the two head types used here."""
    cfg = dict(cfg)
    head_type = cfg.pop("type")
    return {"DAFormerHead": DAFormerHead, "LCMSMHead": LCMSMHead}[head_type](**cfg)


class TigDAEncoderDecoder(nn.Module):
    """Mirrors the head part of `mmseg/models/segmentors/tigda_encoder_decoder.py:
    TigDAEncoderDecoder`: `decode_head` built as is, `vlc_head` built with the segmentor's
    `tau` (`_init_vlc_head`), and the test-time head calls `_decode_head_forward_test` /
    `_vlc_head_forward_test` (which reach the heads' `forward`). The backbone is not part of
    the transcription: the heads take the four backbone maps."""

    def __init__(self, decode_head: dict, vlc_head: dict, tau: float = 0.07):
        super().__init__()
        self.tau = tau
        self.decode_head = build_head(decode_head)
        self.align_corners = self.decode_head.align_corners
        self.num_classes = self.decode_head.num_classes
        vlc_head = dict(vlc_head, tau=self.tau)
        self.vlc_head = build_head(vlc_head)

    def _decode_head_forward_test(self, x):
        return self.decode_head(x)

    def _vlc_head_forward_test(self, x, text_features):
        return self.vlc_head(x, text_features)


class DACSTigDA(nn.Module):
    """Mirrors the trainable, checkpointed parts of `mmseg/models/uda/dacs_tigda.py:
    DACSTigDA`: the student segmentor `model` and `text_embed_net`, the Linear that maps the
    raw (unnormalised) CLIP `encode_text` output to the head width, applied in
    `forward_train` before the text features reach the LC-MSM head. The official class
    hard-codes nn.Linear(1024, 512); the widths are arguments here."""

    def __init__(self, model: dict, text_dim: int = 1024, text_out: int = 512):
        super().__init__()
        self.model = TigDAEncoderDecoder(**model)
        self.text_embed_net = nn.Linear(text_dim, text_out)

    def project_text(self, clip_text_features):
        return self.text_embed_net(clip_text_features)

    def forward(self, features, clip_text_features):
        """Both heads' logits for the backbone maps `features` (NCHW) and raw CLIP text."""
        text_features = self.project_text(clip_text_features)
        return (
            self.model._decode_head_forward_test(features),
            self.model._vlc_head_forward_test(features, text_features),
        )


def lc_msm_model_cfg(
    in_channels,
    num_classes,
    *,
    decode_embed,
    decode_channels,
    vlc_embed,
    vlc_channels,
    fusion="sep_aspp",
    dilations=(1, 6, 12, 18),
    dropout_ratio=0.1,
    tau=0.07,
    arch_option=1,
    block_depth=2,
    activation="relu",
) -> dict:
    """The `model` dict of `configs/_base_/models/lc_msm.py` with `lc_msm_sepaspp.py`
    (fusion `aspp`, `sep=True`) at chosen widths; `fusion` also selects the dense ASPP
    (`sep=False`) or a 1x1 `conv` fusion."""
    norm_cfg = {"type": "BN", "requires_grad": True}
    if fusion == "conv":
        fusion_cfg = {
            "type": "conv",
            "kernel_size": 1,
            "act_cfg": {"type": "ReLU"},
            "norm_cfg": norm_cfg,
        }
    else:
        fusion_cfg = {
            "type": "aspp",
            "sep": fusion == "sep_aspp",
            "dilations": tuple(dilations),
            "pool": False,
            "act_cfg": {"type": "ReLU"},
            "norm_cfg": norm_cfg,
        }

    def decoder_params(embed_dims):
        return {
            "embed_dims": embed_dims,
            "embed_cfg": {"type": "mlp", "act_cfg": None, "norm_cfg": None},
            "embed_neck_cfg": {"type": "mlp", "act_cfg": None, "norm_cfg": None},
            "fusion_cfg": dict(fusion_cfg),
        }

    common = {
        "in_channels": list(in_channels),
        "in_index": list(range(len(in_channels))),
        "dropout_ratio": dropout_ratio,
        "num_classes": num_classes,
        "norm_cfg": norm_cfg,
        "align_corners": False,
    }
    return {
        "tau": tau,
        "decode_head": {
            "type": "DAFormerHead",
            "channels": decode_channels,
            "decoder_params": decoder_params(decode_embed),
            **common,
        },
        "vlc_head": {
            "type": "LCMSMHead",
            "channels": vlc_channels,
            "arch_option": arch_option,
            "block_depth": block_depth,
            "activation": activation,
            "decoder_params": decoder_params(vlc_embed),
            **common,
        },
    }


def lc_msm_head(in_channels, num_classes, *, embed_dims, channels, **options) -> LCMSMHead:
    """The `vlc_head` of `lc_msm_model_cfg` on its own at the given widths, built as
    `TigDAEncoderDecoder.__init__` builds it (config `vlc_head` with the segmentor's `tau`).
    `options`: the keyword options of `lc_msm_model_cfg` (fusion, dilations, tau, ...)."""
    cfg = lc_msm_model_cfg(
        in_channels,
        num_classes,
        decode_embed=embed_dims,
        decode_channels=channels,
        vlc_embed=embed_dims,
        vlc_channels=channels,
        **options,
    )
    return build_head(dict(cfg["vlc_head"], tau=cfg["tau"]))
