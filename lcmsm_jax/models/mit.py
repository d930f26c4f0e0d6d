"""Mix Transformer (MiT-B0..B5), the SegFormer encoder, in NHWC (docs/method.md §2.2).

Attribute names follow the NVlabs/mmseg implementation (`patch_embed1`, `block1.0.attn.kv`,
`norm1`, ...) so that converting a PyTorch checkpoint is a rename-and-transpose table.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcmsm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class MiTVariant:
    """Per-stage widths and depths of one MiT size."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


MIT_VARIANTS: dict[str, MiTVariant] = {
    "mit_b0": MiTVariant((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTVariant((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MiTVariant((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MiTVariant((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MiTVariant((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MiTVariant((64, 128, 320, 512), (3, 6, 40, 3)),
}

# LayerNorm epsilons of the reference: patch-embedding and spatial-reduction norms use
# torch's default, the block and end-of-stage norms 1e-6.
PATCH_NORM_EPS = 1e-5
SR_NORM_EPS = 1e-5
BLOCK_NORM_EPS = 1e-6

# Activation checkpointing (config.model.remat): "block" keeps only each transformer
# block's input for the backward pass and recomputes the block, "stage" only each stage's
# input; either trades one extra forward of the backbone for activation memory.
REMAT_MODES = ("none", "block", "stage")

# How a stage's blocks are stored and run. Storage: the identical blocks of a stage are one
# `Block` whose parameters carry a leading [depth] axis (`block3.attn.q.kernel` is
# [40, 320, 320] in MiT-B5), so the optimiser, the EMA teacher and every pass of the train step
# handle one array per stage and kind of weight, not one per block (MiT-B5 has 52 blocks).
# Running (config.model.scan_blocks): True scans the stage's stacked parameters with
# `jax.lax.scan`, so the compiled program holds one block per stage whatever the depth; False
# unrolls the blocks, slicing each one's weights. PyTorch checkpoints name blocks one by one
# (`block3.17.attn.q.weight`); `per_block_variables` maps between the two
# (docs/method.md §2.2).
STACKED_STAGE = re.compile(r"^block[1-4]$")


def stacked_stage_position(path: tuple) -> int | None:
    """Where a stacked stage's name (`block1`..`block4`) sits in a parameter path, or None
    for a parameter that is not stacked (its leading axis is then not the block index)."""
    return next(
        (i for i, key in enumerate(path) if isinstance(key, str) and STACKED_STAGE.match(key)),
        None,
    )


def is_stacked(path: tuple) -> bool:
    """Whether the leaf at `path` (dict keys / indices) holds a stage's stacked blocks."""
    return stacked_stage_position(path) is not None


def per_block_variables(state: nnx.State) -> list[tuple[tuple, object, tuple | None]]:
    """The variables of a model's state as checkpoints name them: one entry per MiT block.

    Returns [(path, variable, (stacked path, block index) or None)]; a stage's stacked
    parameters (`block3.attn.q.kernel` [40, ...]) appear once per block
    (`block3.17.attn.q.kernel`), as the PyTorch layouts store them (docs/method.md §2.2).
    """
    out = []
    for path, variable in nnx.to_flat_state(state):
        position = stacked_stage_position(path)
        if position is None:
            out.append((path, variable, None))
            continue
        for index in range(variable.get_value().shape[0]):
            block_path = path[: position + 1] + (index,) + path[position + 1 :]
            out.append((block_path, variable, (path, index)))
    return out


def per_block_arrays(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """Every Param and BatchStat of `model` by its per-block path (see `per_block_variables`),
    as numpy arrays in our layouts (what `convert.load_torch_state_dict` fills)."""
    params, stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    out = {}
    for state in (params, stats):
        for path, variable, stacked in per_block_variables(state):
            value = np.asarray(variable.get_value())
            out[path] = value if stacked is None else value[stacked[1]]
    return out


def _mit_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, dtype) -> nnx.Linear:
    # mmseg MiT: trunc_normal(std=0.02) weights, zero bias.
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=jax.nn.initializers.truncated_normal(0.02),
        bias_init=jax.nn.initializers.zeros,
        dtype=dtype,
        rngs=rngs,
    )


def _mit_conv_init(fan_out: int) -> nnx.Initializer:
    # mmseg MiT: N(0, sqrt(2 / fan_out)) with fan_out = k*k*out/groups.
    return jax.nn.initializers.normal(math.sqrt(2.0 / fan_out))


def residual_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The residual stream's dtype: at least float32, as PyTorch autocast keeps it. Block
    branches compute in `dtype` and are added to it; 52 bfloat16 roundings of the stream
    (MiT-B5) would otherwise accumulate."""
    return jnp.promote_types(dtype, jnp.float32)


class OverlapPatchEmbed(nnx.Module):
    """Strided conv (kernel 7/stride 4 or kernel 3/stride 2, padding k//2) + LayerNorm.

    The conv runs in `dtype`; the LayerNorm's output starts the residual stream, in
    `residual_dtype(dtype)`.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int, *, rngs, dtype):
        pad = patch_size // 2
        self.proj = nnx.Conv(
            in_channels,
            dim,
            (patch_size, patch_size),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            kernel_init=_mit_conv_init(patch_size * patch_size * dim),
            bias_init=jax.nn.initializers.zeros,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm = layers.layer_norm(dim, PATCH_NORM_EPS, rngs=rngs, dtype=residual_dtype(dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H/s, W/s, C]."""
        return self.norm(self.proj(x))


class EfficientAttention(nnx.Module):
    """Multi-head self-attention whose keys/values come from a spatially reduced map."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, *, rngs, dtype):
        self.num_heads = num_heads
        self.q = _mit_linear(dim, dim, rngs=rngs, dtype=dtype)
        self.kv = _mit_linear(dim, 2 * dim, rngs=rngs, dtype=dtype)
        self.proj = _mit_linear(dim, dim, rngs=rngs, dtype=dtype)
        if sr_ratio > 1:
            self.sr = nnx.Conv(
                dim,
                dim,
                (sr_ratio, sr_ratio),
                strides=(sr_ratio, sr_ratio),
                padding="VALID",
                kernel_init=_mit_conv_init(sr_ratio * sr_ratio * dim),
                bias_init=jax.nn.initializers.zeros,
                dtype=dtype,
                rngs=rngs,
            )
            self.norm = layers.layer_norm(dim, SR_NORM_EPS, rngs=rngs, dtype=dtype)
        else:
            self.sr = None
            self.norm = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C] (attention over the H*W tokens)."""
        batch, height, width, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, height * width, self.num_heads, head_dim)
        context = x if self.sr is None else self.norm(self.sr(x))
        kv = self.kv(context).reshape(batch, -1, 2, self.num_heads, head_dim)
        out = jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1])
        return self.proj(out.reshape(batch, height, width, dim))


class MixFFN(nnx.Module):
    """fc1 -> depthwise 3x3 conv -> GELU (erf) -> fc2."""

    def __init__(self, dim: int, hidden: int, *, depthwise_impl: str, rngs, dtype):
        self.fc1 = _mit_linear(dim, hidden, rngs=rngs, dtype=dtype)
        self.dwconv = layers.DepthwiseConv(
            hidden,
            3,
            impl=depthwise_impl,
            kernel_init=_mit_conv_init(9),
            rngs=rngs,
            dtype=dtype,
        )
        self.dwconv.bias[...] = jnp.zeros_like(self.dwconv.bias[...])
        self.fc2 = _mit_linear(hidden, dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]."""
        return self.fc2(jax.nn.gelu(self.dwconv(self.fc1(x)), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block with stochastic depth on both residual branches."""

    def __init__(
        self, dim, num_heads, sr_ratio, mlp_ratio, drop_path_rate, *, depthwise_impl, rngs, dtype
    ):
        self.norm1 = layers.layer_norm(dim, BLOCK_NORM_EPS, rngs=rngs, dtype=dtype)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio, rngs=rngs, dtype=dtype)
        self.norm2 = layers.layer_norm(dim, BLOCK_NORM_EPS, rngs=rngs, dtype=dtype)
        self.mlp = MixFFN(
            dim, dim * mlp_ratio, depthwise_impl=depthwise_impl, rngs=rngs, dtype=dtype
        )
        self.drop_path_rate = drop_path_rate

    def __call__(
        self,
        x: jax.Array,
        rng: jax.Array | None,
        drop_path_rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]; `rng=None` disables drop path.

        `drop_path_rate` overrides the block's own rate; a scanned stage passes each
        block's rate as a traced scalar, since one loop body serves every block.
        The norms hand the branches `dtype` inputs; the sums stay in x's (float32) dtype.
        """
        rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
        attn_key = mlp_key = None
        if rng is not None:
            attn_key, mlp_key = jax.random.split(rng)
        x = x + layers.drop_path(self.attn(self.norm1(x)), rate, attn_key)
        return x + layers.drop_path(self.mlp(self.norm2(x)), rate, mlp_key)


class MixVisionTransformer(nnx.Module):
    """The four-stage MiT encoder; returns maps at strides 4, 8, 16, 32."""

    def __init__(
        self,
        variant: str,
        *,
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
        depthwise_impl: str = "auto",
        remat: str = "none",
        scan_blocks: bool = True,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        if variant not in MIT_VARIANTS:
            raise ValueError(
                f"unknown MiT variant {variant!r}; expected one of {sorted(MIT_VARIANTS)}"
            )
        if remat not in REMAT_MODES:
            raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
        spec = MIT_VARIANTS[variant]
        self.embed_dims = spec.embed_dims
        self.depths = spec.depths
        self.remat = remat
        self.scan_blocks = scan_blocks
        total_blocks = sum(spec.depths)
        # Drop-path rate rises linearly over all blocks, counted globally across stages.
        rates = [drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        self.drop_path_rates = tuple(rates)
        block_index = 0
        previous = in_channels
        for stage, (dim, depth) in enumerate(
            zip(spec.embed_dims, spec.depths, strict=True), start=1
        ):
            patch, stride = (7, 4) if stage == 1 else (3, 2)
            setattr(
                self,
                f"patch_embed{stage}",
                OverlapPatchEmbed(previous, dim, patch, stride, rngs=rngs, dtype=dtype),
            )
            blocks = []
            for _ in range(depth):
                blocks.append(
                    Block(
                        dim,
                        spec.num_heads[stage - 1],
                        spec.sr_ratios[stage - 1],
                        spec.mlp_ratio,
                        rates[block_index],
                        depthwise_impl=depthwise_impl,
                        rngs=rngs,
                        dtype=dtype,
                    )
                )
                block_index += 1
            # Initialised block by block (the same draws as separate blocks), then stacked.
            setattr(self, f"block{stage}", _stack_blocks(blocks))
            setattr(
                self, f"norm{stage}", layers.layer_norm(dim, BLOCK_NORM_EPS, rngs=rngs, dtype=dtype)
            )
            previous = dim

    def __call__(self, images: jax.Array, *, rng: jax.Array | None = None) -> list[jax.Array]:
        """Encode images.

        Args:
          images: [B, H, W, 3] normalised.
          rng: key for drop path (training); None = deterministic.
        Returns:
          Four maps [B, H/4, W/4, C1], [B, H/8, W/8, C2], [B, H/16, W/16, C3], [B, H/32, W/32, C4]
          in the compute dtype (ceil division for sizes that are not multiples of 32).
        """
        stage_fn = _run_stage
        if self.remat == "stage":
            stage_fn = nnx.remat(_run_stage, static_argnums=(1, 4))
        features = []
        x = images
        first_block = 0
        for stage in range(1, 5):
            x = stage_fn(self, stage, x, rng, first_block)
            first_block += self.depths[stage - 1]
            features.append(x)
        return features


def _stack_blocks(blocks: list[Block]) -> Block:
    """One `Block` whose parameters hold `blocks`' stacked on a leading [depth] axis."""
    graphdef = nnx.split(blocks[0])[0]
    states = [nnx.split(block)[1] for block in blocks]
    return nnx.merge(graphdef, jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))


def _call_block(block: Block, x: jax.Array, rng: jax.Array | None, rate) -> jax.Array:
    return block(x, rng, drop_path_rate=rate)


# The block under jax.checkpoint: only its input (and key) is kept for the backward pass.
_call_block_remat = nnx.remat(_call_block)


def _scan_blocks(
    stacked: Block, rates: tuple[float, ...], x: jax.Array, rng: jax.Array | None,
    first_block: int, remat: bool,
) -> jax.Array:  # fmt: skip
    """A stage's blocks as one `jax.lax.scan` over their stacked parameters.

    The blocks differ only in their weights and drop-path rates, so the loop body is one
    block's graph merged with the i-th slice of the weights, and the rate and the drop-path
    key (folded from the block's global index, as unrolled) are scanned too.
    """
    graphdef, weights = nnx.split(stacked)
    indices = jnp.arange(first_block, first_block + len(rates))

    def body(x, per_block):
        weights, rate, index = per_block
        key = None if rng is None else jax.random.fold_in(rng, index)
        return nnx.merge(graphdef, weights)(x, key, drop_path_rate=rate), None

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, x, (weights, jnp.asarray(rates, jnp.float32), indices))[0]


def _run_stage(
    model: MixVisionTransformer,
    stage: int,
    x: jax.Array,
    rng: jax.Array | None,
    first_block: int,
) -> jax.Array:
    """Patch embedding, the stage's blocks and its norm: [B, H, W, C_in] -> [B, H/s, W/s, C].

    Drop path keys are folded from `rng` with the block's global index.
    """
    x = getattr(model, f"patch_embed{stage}")(x)
    stacked = getattr(model, f"block{stage}")
    depth = model.depths[stage - 1]
    rates = model.drop_path_rates[first_block : first_block + depth]
    if model.scan_blocks and depth > 1:
        x = _scan_blocks(stacked, rates, x, rng, first_block, remat=model.remat == "block")
    else:
        call = _call_block_remat if model.remat == "block" else _call_block
        graphdef, weights = nnx.split(stacked)
        for offset in range(depth):
            block = nnx.merge(graphdef, jax.tree.map(lambda w, i=offset: w[i], weights))
            key = None if rng is None else jax.random.fold_in(rng, first_block + offset)
            x = call(block, x, key, rates[offset])
    return getattr(model, f"norm{stage}")(x)
