"""The LC-MSM segmentor: MiT backbone, DAFormer head, LC-MSM head and text projection."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lcmsm_jax.models import heads, layers, mit

HEAD_NAMES = ("decode", "lcmsm")

# fold_in tags that separate the random streams of one forward pass.
_DROP_PATH_STREAM, _DECODE_DROPOUT_STREAM, _LCMSM_DROPOUT_STREAM = 0, 1, 2


def _dtype(name: str) -> jnp.dtype:
    try:
        # float64 (with jax_enable_x64) is for gradient checks against finite differences.
        dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
        return {**dtypes, "float64": jnp.float64}[name]
    except KeyError:
        raise ValueError(
            f"config.model.dtype must be float32, bfloat16, float16 or float64, got {name!r}"
        ) from None


class Segmentor(nnx.Module):
    """Backbone + DAFormer head (`decode_head`) + LC-MSM head (`vlc_head`) + `text_embed_net`.

    Built from `config.model` (see configs/base.py). Parameters are float32; matmuls and
    convolutions run in `config.model.dtype`. With bfloat16, normalisation statistics, the
    backbone's residual stream, the text-pixel correlation and the returned logits stay
    float32; the feature maps are in the compute dtype.
    """

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dtype = _dtype(config.dtype)
        impl = config.depthwise_impl
        self.backbone = mit.MixVisionTransformer(
            config.backbone,
            drop_path_rate=config.drop_path_rate,
            depthwise_impl=impl,
            remat=config.get("remat", "none"),  # configs saved before the option: none
            scan_blocks=config.get("scan_blocks", True),
            rngs=rngs,
            dtype=dtype,
        )
        in_channels = self.backbone.embed_dims
        decode = config.decode_head
        self.decode_head = heads.DAFormerHead(
            in_channels,
            config.num_classes,
            embed_dim=decode.embed_dim,
            channels=decode.channels,
            fusion=decode.fusion,
            dilations=tuple(decode.dilations),
            dropout=decode.dropout,
            depthwise_impl=impl,
            remat=config.get("head_remat", False),
            rngs=rngs,
            dtype=dtype,
        )
        lcmsm = config.lcmsm_head
        self.vlc_head = heads.LCMSMHead(
            in_channels,
            config.num_classes,
            embed_dim=lcmsm.embed_dim,
            channels=lcmsm.channels,
            fusion=lcmsm.fusion,
            dilations=tuple(lcmsm.dilations),
            dropout=lcmsm.dropout,
            tau=lcmsm.tau,
            spatial_block=lcmsm.spatial_block,
            block_depth=lcmsm.block_depth,
            activation=lcmsm.activation,
            depthwise_impl=impl,
            remat=config.get("head_remat", False),
            rngs=rngs,
            dtype=dtype,
        )
        # Learnable CLIP-dim -> head-dim projection, torch default init (docs/method.md §2.5).
        self.text_embed_net = layers.torch_linear(
            config.text_dim, lcmsm.channels, rngs=rngs, dtype=dtype
        )
        self.text_dim = config.text_dim

    def project_text(self, text_embeddings: jax.Array) -> jax.Array:
        """Raw CLIP text embeddings [K, D_text] -> projected text features [K, D_head]."""
        if text_embeddings.ndim != 2 or text_embeddings.shape[-1] != self.text_dim:
            raise ValueError(
                f"text embeddings must be [num_classes, {self.text_dim}], "
                f"got {text_embeddings.shape}"
            )
        return self.text_embed_net(text_embeddings)

    def __call__(
        self,
        images: jax.Array,
        text_embeddings: jax.Array | None = None,
        *,
        text_features: jax.Array | None = None,
        train: bool = False,
        rng: jax.Array | None = None,
        heads: Sequence[str] = HEAD_NAMES,
    ) -> dict:
        """Run the backbone and the requested heads.

        Args:
          images: [B, H, W, 3] float32, normalised.
          text_embeddings: [K, D_text] raw CLIP vectors (projected here), or
          text_features: [K, D_head] already projected (what the train step passes).
          train: BatchNorm uses (and updates) batch statistics.
          rng: key for drop path and Dropout2d; None turns both off.
          heads: which of "decode" and "lcmsm" to run.
        Returns:
          {"decode": [B, H/4, W/4, K], "lcmsm": [B, H/4, W/4, K] (those requested),
           "features": four backbone maps NHWC at strides 4, 8, 16, 32}.
        """
        unknown = set(heads) - set(HEAD_NAMES)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; expected a subset of {HEAD_NAMES}")
        keys = [None] * 3 if rng is None else [jax.random.fold_in(rng, i) for i in range(3)]
        features = self.backbone(images, rng=keys[_DROP_PATH_STREAM])
        out = {"features": features}
        if "decode" in heads:
            out["decode"] = self.decode_head(
                features, train=train, rng=keys[_DECODE_DROPOUT_STREAM]
            )
        if "lcmsm" in heads:
            if text_features is None:
                if text_embeddings is None:
                    raise ValueError("the lcmsm head needs text_embeddings or text_features")
                text_features = self.project_text(text_embeddings)
            out["lcmsm"] = self.vlc_head(
                features, text_features, train=train, rng=keys[_LCMSM_DROPOUT_STREAM]
            )
        return out
