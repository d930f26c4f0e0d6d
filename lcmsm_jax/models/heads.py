"""Decoders: the DAFormer fusion head and the LC-MSM head (docs/method.md §2.3-2.4), NHWC.

Both heads share one trunk design: a per-level linear embedding, bilinear upsampling to
stride 4, concatenation in level order, and a fusion block (separable ASPP in LC-MSM and
DAFormer, plain ASPP, or a 1x1 conv as in SegFormer's all-MLP head). Attribute names follow
the mmseg reference (`embed_layers.0.proj`, `fuse_layer.aspp_modules.1.depthwise_conv.conv`,
`conv_seg`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lcmsm_jax.models import layers

FUSIONS = ("sep_aspp", "aspp", "conv")
SPATIAL_BLOCKS = ("none", "bottleneck", "depthwise")
ACTIVATIONS = {"relu": jax.nn.relu, "lrelu": lambda x: jax.nn.leaky_relu(x, 0.01), "tanh": jnp.tanh}


class ConvModule(nnx.Module):
    """conv (no bias) -> BatchNorm -> ReLU, as mmcv's ConvModule with BN and ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        depthwise: bool = False,
        depthwise_impl: str = "auto",
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        if depthwise:
            if in_channels != out_channels:
                raise ValueError("a depthwise ConvModule keeps the channel count")
            self.conv = layers.DepthwiseConv(
                in_channels,
                kernel_size,
                dilation=dilation,
                use_bias=False,
                impl=depthwise_impl,
                kernel_init=layers.kaiming_fan_out_init(),
                rngs=rngs,
                dtype=dtype,
            )
        else:
            pad = dilation * (kernel_size // 2)
            self.conv = nnx.Conv(
                in_channels,
                out_channels,
                (kernel_size, kernel_size),
                padding=((pad, pad), (pad, pad)),
                kernel_dilation=(dilation, dilation),
                use_bias=False,
                kernel_init=layers.kaiming_fan_out_init(),
                dtype=dtype,
                rngs=rngs,
            )
        self.bn = layers.BatchNorm(out_channels)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[B, H, W, C_in] -> [B, H, W, C_out]."""
        return jax.nn.relu(self.bn(self.conv(x), train=train))


class DepthwiseSeparableConvModule(nnx.Module):
    """Depthwise k x k ConvModule followed by a pointwise 1x1 ConvModule (both BN + ReLU)."""

    def __init__(
        self, in_channels, out_channels, kernel_size, *, dilation, depthwise_impl, rngs, dtype
    ):
        self.depthwise_conv = ConvModule(
            in_channels,
            in_channels,
            kernel_size,
            dilation=dilation,
            depthwise=True,
            depthwise_impl=depthwise_impl,
            rngs=rngs,
            dtype=dtype,
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.pointwise_conv(self.depthwise_conv(x, train=train), train=train)


class ASPPFusion(nnx.Module):
    """Atrous spatial pyramid (no image pooling) + 3x3 bottleneck.

    Dilation 1 is a 1x1 ConvModule; larger dilations are depthwise-separable 3x3 modules
    (`separable=True`, DAFormer's choice) or dense dilated 3x3 ConvModules.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        dilations: Sequence[int],
        *,
        separable: bool,
        depthwise_impl: str,
        rngs: nnx.Rngs,
        dtype: jnp.dtype,
    ):
        branches = []
        for dilation in dilations:
            if dilation == 1:
                branches.append(ConvModule(in_channels, channels, 1, rngs=rngs, dtype=dtype))
            elif separable:
                branches.append(
                    DepthwiseSeparableConvModule(
                        in_channels,
                        channels,
                        3,
                        dilation=dilation,
                        depthwise_impl=depthwise_impl,
                        rngs=rngs,
                        dtype=dtype,
                    )
                )
            else:
                branches.append(
                    ConvModule(in_channels, channels, 3, dilation=dilation, rngs=rngs, dtype=dtype)
                )
        self.aspp_modules = nnx.List(branches)
        self.bottleneck = ConvModule(len(dilations) * channels, channels, 3, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[B, H, W, C_in] -> [B, H, W, channels]."""
        outs = [branch(x, train=train) for branch in self.aspp_modules]
        return self.bottleneck(jnp.concatenate(outs, axis=-1), train=train)


class MLPEmbed(nnx.Module):
    """Per-pixel Linear(C_l -> E) with bias; no norm, no activation."""

    def __init__(self, in_channels: int, embed_dim: int, *, rngs, dtype):
        self.proj = layers.torch_linear(in_channels, embed_dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


def _build_trunk(
    in_channels: Sequence[int],
    embed_dim: int,
    channels: int,
    fusion: str,
    dilations: Sequence[int],
    *,
    depthwise_impl: str,
    rngs: nnx.Rngs,
    dtype: jnp.dtype,
) -> tuple[nnx.List, nnx.Module]:
    """Embedding layers and the fusion block shared by both heads' designs."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    embed_layers = nnx.List([MLPEmbed(c, embed_dim, rngs=rngs, dtype=dtype) for c in in_channels])
    concat = embed_dim * len(in_channels)
    if fusion == "conv":
        fuse_layer = ConvModule(concat, channels, 1, rngs=rngs, dtype=dtype)
    else:
        fuse_layer = ASPPFusion(
            concat,
            channels,
            dilations,
            separable=fusion == "sep_aspp",
            depthwise_impl=depthwise_impl,
            rngs=rngs,
            dtype=dtype,
        )
    return embed_layers, fuse_layer


def _trunk(
    embed_layers: nnx.List, fuse_layer: nnx.Module, features: Sequence[jax.Array], train: bool
) -> jax.Array:
    size = features[0].shape[1:3]
    embedded = [
        layers.resize_bilinear(embed(feature), size)
        for embed, feature in zip(embed_layers, features, strict=True)
    ]
    return fuse_layer(jnp.concatenate(embedded, axis=-1), train=train)


def _run_trunk(
    embed_layers: nnx.List,
    fuse_layer: nnx.Module,
    features: Sequence[jax.Array],
    train: bool,
    remat: bool = False,
) -> jax.Array:
    """Four backbone maps -> fused features [B, H/4, W/4, channels] at the first map's size.

    `remat` runs the trunk under `jax.checkpoint`: only the backbone maps (kept anyway) are
    saved for the backward pass, and the 4 x embed_dim concatenation and every ASPP
    branch's activations at 1/4 resolution (the largest buffers of the paper's step) are
    recomputed. The BatchNorm statistics it updates are written back to the modules.
    """
    if not remat:
        return _trunk(embed_layers, fuse_layer, features, train)
    graphdef, state = nnx.split((embed_layers, fuse_layer))

    @jax.checkpoint
    def trunk(state, features):
        embed, fuse = nnx.merge(graphdef, state)
        fused = _trunk(embed, fuse, features, train)
        return fused, nnx.state((embed, fuse), nnx.BatchStat)

    fused, batch_stats = trunk(state, list(features))
    nnx.update((embed_layers, fuse_layer), batch_stats)
    return fused


def _classifier(in_channels: int, num_classes: int, *, rngs, dtype) -> nnx.Conv:
    # N(0, 0.01^2) weights, zero bias (mmseg BaseDecodeHead.init_weights).
    return nnx.Conv(
        in_channels,
        num_classes,
        (1, 1),
        kernel_init=jax.nn.initializers.normal(0.01),
        bias_init=jax.nn.initializers.zeros,
        dtype=dtype,
        rngs=rngs,
    )


class DAFormerHead(nnx.Module):
    """Multi-level fusion decoder producing logits at stride 4."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        embed_dim: int = 256,
        channels: int = 256,
        fusion: str = "sep_aspp",
        dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
        depthwise_impl: str = "auto",
        remat: bool = False,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.remat = remat
        self.embed_layers, self.fuse_layer = _build_trunk(
            in_channels,
            embed_dim,
            channels,
            fusion,
            dilations,
            depthwise_impl=depthwise_impl,
            rngs=rngs,
            dtype=dtype,
        )
        self.conv_seg = _classifier(channels, num_classes, rngs=rngs, dtype=dtype)
        self.dropout = dropout

    def __call__(
        self, features: Sequence[jax.Array], *, train: bool, rng: jax.Array | None = None
    ) -> jax.Array:
        """Four maps (strides 4..32) -> logits [B, H/4, W/4, num_classes], at least float32
        (the classifier runs in the compute dtype; losses and softmax read float32).

        `train` selects BatchNorm batch statistics; `rng` enables Dropout2d (None = off).
        """
        fused = _run_trunk(self.embed_layers, self.fuse_layer, features, train, self.remat)
        return layers.at_least_f32(self.conv_seg(layers.channel_dropout(fused, self.dropout, rng)))


def text_pixel_correlation(
    features: jax.Array, text_features: jax.Array, logit_scale: float, eps: float = 1e-12
) -> jax.Array:
    """Cosine similarity of every pixel with every class text vector, times `logit_scale`.

    Args:
      features: [B, H, W, D] pixel features.
      text_features: [K, D] projected text features.
    Returns:
      [B, H, W, K] in (at least) float32: a cosine scaled by 1/tau = 14.3 would carry
      bfloat16's 0.4% error into the pseudo-label confidence. The matmul is small (K = 19).
      The reference has no epsilon in its norms; `eps` only guards 0/0.
    """
    features, text_features = layers.at_least_f32(features), layers.at_least_f32(text_features)
    pixels = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), eps)
    text = text_features / jnp.maximum(jnp.linalg.norm(text_features, axis=-1, keepdims=True), eps)
    return logit_scale * jnp.einsum("bhwd,kd->bhwk", pixels, text.astype(pixels.dtype))


class SpatialBlock(nnx.Module):
    """One shared single-channel 3x3 conv (9 weights + 1 bias) applied to every class map.

    `bottleneck` (arch option 1) adds the per-pixel max over classes of the block's input;
    `depthwise` (arch option 2) does not.
    """

    def __init__(self, kind: str, activation: str, *, rngs: nnx.Rngs):
        if kind not in SPATIAL_BLOCKS[1:]:
            raise ValueError(f"spatial block must be one of {SPATIAL_BLOCKS[1:]}, got {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        # torch's default Conv2d init with fan_in 9: U(+-1/3) for weight and bias.
        self.kernel = nnx.Param(
            jax.random.uniform(rngs.params(), (3, 3, 1, 1), minval=-1 / 3, maxval=1 / 3)
        )
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (1,), minval=-1 / 3, maxval=1 / 3))
        self.kind = kind
        self.activation = activation

    def __call__(self, x: jax.Array, *, activate: bool) -> jax.Array:
        """[B, H, W, K] -> [B, H, W, K]."""
        kernel = jnp.broadcast_to(self.kernel[...], (3, 3, 1, x.shape[-1]))
        # A 1-channel conv on each map equals a depthwise conv with the kernel tiled over
        # classes; shifted sums are exact and cheap for K = 19 on every backend.
        y = layers.depthwise_conv2d(x, kernel, impl="shifted_sum") + self.bias[...].astype(x.dtype)
        if self.kind == "bottleneck":
            y = y + jnp.max(x, axis=-1, keepdims=True)
        return ACTIVATIONS[self.activation](y) if activate else y


class LCMSMHead(nnx.Module):
    """Language-conditioned head: trunk -> text correlation -> spatial block -> classifier."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        embed_dim: int = 512,
        channels: int = 512,
        fusion: str = "sep_aspp",
        dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
        tau: float = 0.07,
        spatial_block: str = "bottleneck",
        block_depth: int = 2,
        activation: str = "relu",
        depthwise_impl: str = "auto",
        remat: bool = False,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.remat = remat
        if spatial_block not in SPATIAL_BLOCKS:
            raise ValueError(
                f"spatial_block must be one of {SPATIAL_BLOCKS}, got {spatial_block!r}"
            )
        if spatial_block != "none" and block_depth < 1:
            raise ValueError(f"block_depth must be >= 1, got {block_depth}")
        self.embed_layers, self.fuse_layer = _build_trunk(
            in_channels,
            embed_dim,
            channels,
            fusion,
            dilations,
            depthwise_impl=depthwise_impl,
            rngs=rngs,
            dtype=dtype,
        )
        self.spatial_block = (
            None if spatial_block == "none" else SpatialBlock(spatial_block, activation, rngs=rngs)
        )
        self.block_depth = block_depth
        # A constant, never trained (docs/method.md §7.5): the reference exponentiates log(1/tau).
        self.logit_scale = 1.0 / tau
        self.conv_seg = _classifier(channels + num_classes, num_classes, rngs=rngs, dtype=dtype)
        self.dropout = dropout

    def correlate(self, fused: jax.Array, text_features: jax.Array) -> jax.Array:
        """Fused features [B, h, w, D], text [K, D] -> refined similarity maps [B, h, w, K]."""
        maps = text_pixel_correlation(fused, text_features, self.logit_scale)
        if self.spatial_block is not None:
            for _ in range(self.block_depth - 1):
                maps = self.spatial_block(maps, activate=True)
            maps = self.spatial_block(maps, activate=False)
        return maps

    def __call__(
        self,
        features: Sequence[jax.Array],
        text_features: jax.Array,
        *,
        train: bool,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Four maps + text features [K, D] -> logits [B, H/4, W/4, num_classes], at least
        float32. The similarity maps are computed in float32 and joined to the fused
        features in the compute dtype for the classifier."""
        fused = _run_trunk(self.embed_layers, self.fuse_layer, features, train, self.remat)
        maps = self.correlate(fused, text_features)
        joint = jnp.concatenate([fused, maps.astype(fused.dtype)], axis=-1)
        return layers.at_least_f32(self.conv_seg(layers.channel_dropout(joint, self.dropout, rng)))
