"""Flax NNX models: MiT backbone, DAFormer and LC-MSM heads, and the Segmentor."""

from lcmsm_jax.models.heads import DAFormerHead, LCMSMHead
from lcmsm_jax.models.mit import MIT_VARIANTS, MixVisionTransformer
from lcmsm_jax.models.segmentor import Segmentor

__all__ = ["DAFormerHead", "LCMSMHead", "MIT_VARIANTS", "MixVisionTransformer", "Segmentor"]
