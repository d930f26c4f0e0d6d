"""Independent PyTorch references for tests: the DAFormer and LC-MSM heads written from
METHOD.md §2.2-2.3 with mmseg's parameter names, a tiny SegFormer config from
`transformers`, and a renaming of its weights into NVlabs/mmseg MiT names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, k, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    def __init__(self, cin, cout, dilation):
        super().__init__()
        self.depthwise_conv = ConvBNReLU(cin, cin, 3, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvBNReLU(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class SeparableASPP(nn.Module):
    def __init__(self, cin, ch, dilations):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            [
                ConvBNReLU(cin, ch, 1) if d == 1 else SeparableConvBNReLU(cin, ch, d)
                for d in dilations
            ]
        )
        self.bottleneck = ConvBNReLU(len(dilations) * ch, ch, 3)

    def forward(self, x):
        return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], dim=1))


class Embed(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.proj = nn.Linear(cin, dim)

    def forward(self, x):
        b, _, h, w = x.shape
        y = self.proj(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(b, -1, h, w)


class DAFormerHead(nn.Module):
    def __init__(self, in_channels, num_classes, embed_dim, channels, dilations=(1, 6, 12, 18)):
        super().__init__()
        self.embed_layers = nn.ModuleDict(
            {str(i): Embed(c, embed_dim) for i, c in enumerate(in_channels)}
        )
        self.fuse_layer = SeparableASPP(embed_dim * len(in_channels), channels, dilations)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def fused(self, feats):
        size = feats[0].shape[2:]
        embedded = [
            F.interpolate(
                self.embed_layers[str(i)](f), size=size, mode="bilinear", align_corners=False
            )
            for i, f in enumerate(feats)
        ]
        return self.fuse_layer(torch.cat(embedded, dim=1))

    def forward(self, feats):
        return self.conv_seg(self.dropout(self.fused(feats)))


class SingleChannelConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        b, c, h, w = x.shape
        return self.depthwise(x.reshape(-1, 1, h, w)).view(b, c, h, w)


class BottleneckBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.depthwise = SingleChannelConv()

    def forward(self, x, act=True):
        y = self.depthwise(x) + x.max(dim=1, keepdim=True)[0]
        return F.relu(y) if act else y


class LCMSMHead(DAFormerHead):
    def __init__(self, in_channels, num_classes, embed_dim, channels, tau=0.07, depth=2):
        super().__init__(in_channels, num_classes, embed_dim, channels)
        self.conv_seg = nn.Conv2d(channels + num_classes, num_classes, 1)
        self.spatial_block = BottleneckBlock()
        self.scale = 1.0 / tau
        self.depth = depth

    def forward(self, feats, text):
        fused = self.fused(feats)
        pixels = fused / fused.norm(dim=1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        maps = self.scale * torch.einsum("bchw,kc->bkhw", pixels, text)
        for _ in range(self.depth - 1):
            maps = self.spatial_block(maps)
        maps = self.spatial_block(maps, False)
        return self.conv_seg(self.dropout(torch.cat([fused, maps], dim=1)))


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Give every norm/bias/BN buffer non-trivial values so parity tests see them."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(0.1 * noise)
            elif tensor.ndim == 1:  # LayerNorm / BatchNorm scale
                tensor.copy_(1.0 + 0.1 * noise)


def segformer_config(**overrides):
    """MiT-B0 with a SegFormer all-MLP head; LayerNorm epsilons as the NVlabs MiT."""
    from transformers import SegformerConfig

    kwargs = dict(
        hidden_sizes=[32, 64, 160, 256],
        depths=[2, 2, 2, 2],
        num_attention_heads=[1, 2, 5, 8],
        decoder_hidden_size=64,
        num_labels=19,
        drop_path_rate=0.0,
    )
    kwargs.update(overrides)
    return SegformerConfig(**kwargs)


def match_nvlabs_epsilons_(model: nn.Module) -> None:
    """transformers uses eps 1e-5 in every LayerNorm; NVlabs MiT uses 1e-6 in the block and
    end-of-stage norms. Set them so the reference is the MiT of METHOD.md §2.1."""
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and (
            name.endswith(("layernorm_before", "layernorm_after"))
            or (
                name.endswith("layer_norm")
                and "patch_embeddings" not in name
                and "sequence_reduction" not in name
            )  # fmt: skip
        ):
            module.eps = 1e-6


def hf_to_nvlabs_names(state_dict: dict) -> dict:
    """Rename a transformers SegformerModel state_dict to NVlabs/mmseg MiT names."""
    out = {}
    for name, value in state_dict.items():
        name = name.removeprefix("segformer.")
        parts = name.split(".")
        if parts[0] != "stages":
            continue
        stage = int(parts[1]) + 1
        rest = ".".join(parts[2:])
        if rest.startswith("patch_embeddings."):
            rest = rest.replace("patch_embeddings.layer_norm", "norm").replace(
                "patch_embeddings.", ""
            )
            out[f"patch_embed{stage}.{rest}"] = value
        elif rest.startswith("layer_norm."):
            out[f"norm{stage}.{rest.split('.')[-1]}"] = value
        else:
            for old, new in [
                ("blocks.", ""), ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                ("attention.q_proj", "attn.q"), ("attention.o_proj", "attn.proj"),
                ("attention.sequence_reduction.sequence_reduction", "attn.sr"),
                ("attention.sequence_reduction.layer_norm", "attn.norm"),
            ]:  # fmt: skip
                rest = rest.replace(old, new)
            out[f"block{stage}.{rest}"] = value
    merged = {}
    for name, value in out.items():
        if ".attention.k_proj." in name:
            kind = name.split(".")[-1]
            prefix = name.split(".attention.k_proj.")[0]
            v = out[f"{prefix}.attention.v_proj.{kind}"]
            merged[f"{prefix}.attn.kv.{kind}"] = torch.cat([value, v], dim=0)
        elif ".attention.v_proj." not in name:
            merged[name] = value
    return merged
