"""Flax NNX models: MiT backbone, DAFormer and LC-MSM heads, the Segmentor and its
multi-resolution (HRDA) form."""

import ml_collections
from flax import nnx

from lcmsm_jax.models import hrda
from lcmsm_jax.models.heads import DAFormerHead, LCMSMHead
from lcmsm_jax.models.hrda import MultiResSegmentor, ScaleAttentionHead
from lcmsm_jax.models.mit import MIT_VARIANTS, MixVisionTransformer, is_stacked, per_block_arrays
from lcmsm_jax.models.segmentor import Segmentor


def build_segmentor(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> Segmentor:
    """The model of `config` (config.model): a `MultiResSegmentor` when
    config.hrda.enabled, else a `Segmentor`."""
    if hrda.is_enabled(config):
        return MultiResSegmentor(
            config,
            rngs=rngs,
            detail_size=tuple(config.hrda.detail_size),
            attention_embed_dim=config.hrda.attention_embed_dim,
        )
    return Segmentor(config, rngs=rngs)


__all__ = [
    "DAFormerHead",
    "LCMSMHead",
    "MIT_VARIANTS",
    "MixVisionTransformer",
    "MultiResSegmentor",
    "ScaleAttentionHead",
    "Segmentor",
    "build_segmentor",
    "is_stacked",
    "per_block_arrays",
]
