"""Building blocks shared by the backbone and the heads (NHWC, explicit RNG keys).

PyTorch conventions are kept where they change numbers: BatchNorm momentum 0.1 with an
unbiased running variance, torch's default Linear initialisation, Dropout2d dropping whole
channels, DropPath dropping whole samples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

DEPTHWISE_IMPLS = ("auto", "conv", "shifted_sum")


# --------------------------------------------------------------------------- precision


def at_least_f32(x: jax.Array) -> jax.Array:
    """`x` in float32 if it is a narrower float (bfloat16, float16); float64 stays float64.

    Mixed precision keeps reductions, normalisation and logits in float32 while the matmuls
    and convolutions run in the compute dtype.
    """
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# --------------------------------------------------------------------------- initialisers


def torch_linear_kernel_init() -> nnx.Initializer:
    """torch.nn.Linear / Conv2d default weight init: U(+-1/sqrt(fan_in))."""
    return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nnx.Initializer:
    """torch's default bias init: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def kaiming_fan_out_init() -> nnx.Initializer:
    """Kaiming normal, mode fan_out, ReLU gain (mmcv ConvModule)."""
    return jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear(
    in_features: int, out_features: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32
) -> nnx.Linear:
    """A Linear with PyTorch's default initialisation (weight and bias U(+-1/sqrt(fan_in)))."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=torch_linear_kernel_init(),
        bias_init=torch_bias_init(in_features),
        dtype=dtype,
        rngs=rngs,
    )


# --------------------------------------------------------------------------- depthwise conv


def resolve_depthwise_impl(impl: str) -> str:
    """Pick the depthwise formulation for the current backend.

    XLA:CPU runs grouped convolutions (`feature_group_count=C`) far slower than a sum of
    k*k shifted, scaled copies of the input; on GPU/TPU the convolution is the fast one.
    `lcmsm-benchmark --config C.py --what depthwise` measures both on the machine at hand.
    """
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "shifted_sum" if jax.default_backend() == "cpu" else "conv"
    return impl


def depthwise_conv2d(
    x: jax.Array, kernel: jax.Array, *, dilation: int = 1, impl: str = "auto"
) -> jax.Array:
    """Stride-1 'same' depthwise convolution with zero padding.

    Args:
      x: [B, H, W, C] input.
      kernel: [k, k, 1, C] (lax HWIO layout with one input channel per group); k odd.
      dilation: kernel dilation; the padding is dilation * (k // 2) on every side.
      impl: "conv" (grouped lax convolution), "shifted_sum" or "auto".
    Returns:
      [B, H, W, C].
    """
    size = kernel.shape[0]
    pad = dilation * (size // 2)
    kernel = kernel.astype(x.dtype)
    if resolve_depthwise_impl(impl) == "conv":
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding=((pad, pad), (pad, pad)),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
    # Channels are independent: the shifted sums (forward and backward) run on one group of
    # channels at a time, so their temporaries (padded copies, shifted products; ~11x the
    # input for a [2, 128, 128, 2048] map in one piece) are bounded by the group's size.
    return _depthwise_shifted_sum(x, kernel, dilation, _channel_chunks(x))


# The shifted sums run on at most this many bytes of input at a time (see above).
SHIFTED_SUM_CHUNK_BYTES = 32 * 2**20


def _channel_chunks(x: jax.Array) -> int:
    """How many channel groups the shifted sums of `x` run in: the fewest that divide the
    channel count and keep each group under SHIFTED_SUM_CHUNK_BYTES (1 for small maps)."""
    channels = x.shape[-1]
    per_channel = x.size // channels * x.dtype.itemsize
    for chunks in range(1, channels + 1):
        if channels % chunks == 0 and per_channel * channels // chunks <= SHIFTED_SUM_CHUNK_BYTES:
            return chunks
    return channels


def _valid_taps(size: int, dilation: int, height: int, width: int) -> list[tuple]:
    """(i, j, dy, dx) of the kernel taps whose offset lands inside an H x W map at all; the
    others only ever read zero padding (e.g. dilation 18 on a 16 x 16 map) and are skipped."""
    r = size // 2
    return [
        (i, j, (i - r) * dilation, (j - r) * dilation)
        for i in range(size)
        for j in range(size)
        if abs(i - r) * dilation < height and abs(j - r) * dilation < width
    ]


def _windows(x: jax.Array, offsets: list) -> list[jax.Array]:
    """x[:, h + dy, w + dx] for each (dy, dx), zeros outside: a list of [B, H, W, C]."""
    height, width = x.shape[1], x.shape[2]
    pad_h = max(abs(dy) for dy, _ in offsets)
    pad_w = max(abs(dx) for _, dx in offsets)
    padded = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    return [
        padded[:, pad_h + dy : pad_h + dy + height, pad_w + dx : pad_w + dx + width]
        for dy, dx in offsets
    ]


def _shifted_sum(x: jax.Array, weights: list, offsets: list) -> jax.Array:
    """sum_t x[:, h + dy_t, w + dx_t] * weights[t] with zeros outside: [B, H, W, C].

    The k*k products are accumulated in (at least) float32 and rounded once, as a
    convolution accumulates (inside the same fusion as the sum).
    """
    out = None
    for weight, window in zip(weights, _windows(x, offsets), strict=True):
        term = at_least_f32(window) * at_least_f32(weight)
        out = term if out is None else out + term
    return out.astype(x.dtype)


def _group(a: jax.Array, start, width: int) -> jax.Array:
    """a[..., start : start + width] (`start` may be traced)."""
    return jax.lax.dynamic_slice_in_dim(a, start, width, axis=a.ndim - 1)


def _put_group(a: jax.Array, value: jax.Array, start) -> jax.Array:
    """a with a[..., start : start + width] = value, in place inside a loop."""
    return jax.lax.dynamic_update_slice_in_dim(a, value, start, axis=a.ndim - 1)


def _forward_values(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    taps = _valid_taps(kernel.shape[0], dilation, x.shape[1], x.shape[2])
    return _shifted_sum(x, [kernel[i, j, 0] for i, j, _, _ in taps], [t[2:] for t in taps])


def _backward_values(
    x: jax.Array, kernel: jax.Array, cotangent: jax.Array, dilation: int
) -> tuple[jax.Array, jax.Array]:
    taps = _valid_taps(kernel.shape[0], dilation, x.shape[1], x.shape[2])
    weights = [kernel[i, j, 0] for i, j, _, _ in taps]
    x_grad = _shifted_sum(cotangent, weights, [(-dy, -dx) for *_, dy, dx in taps])
    windows = _windows(x, [(dy, dx) for *_, dy, dx in taps])
    # Each tap's kernel gradient sums B*H*W products: accumulate in float32 for bfloat16.
    wide = at_least_f32(cotangent)
    per_tap = {
        (i, j): jnp.sum(at_least_f32(window) * wide, axis=(0, 1, 2))
        for (i, j, _, _), window in zip(taps, windows, strict=True)
    }
    size, channels = kernel.shape[0], kernel.shape[-1]
    zero = jnp.zeros((channels,), wide.dtype)
    kernel_grad = jnp.stack(
        [jnp.stack([per_tap.get((i, j), zero) for j in range(size)]) for i in range(size)]
    )[:, :, None, :]
    return x_grad, kernel_grad.astype(kernel.dtype)


# A hand-written backward: left to autodiff, XLA:CPU fuses each tap's transposed slice
# (a pad to the full padded size) with a recomputation of everything that produced the
# cotangent (BatchNorm backward, activation), k*k times over. Here the input gradient is
# the same shifted sum on the cotangent with mirrored offsets, and the kernel gradient one
# reduction per tap: the DAFormer head's fwd+bwd on CPU is ~2x faster.
# With `chunks` > 1, forward and backward loop over channel groups, reading each group of
# the input in place and writing each group of the result in place: the only residual is
# the input itself (alive anyway), not per-group copies as a `lax.map`/`scan` would stack.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifted_sum(x: jax.Array, kernel: jax.Array, dilation: int, chunks: int):
    if chunks == 1:
        return _forward_values(x, kernel, dilation)
    width = x.shape[-1] // chunks

    def group(index, out):
        start = index * width
        values = _forward_values(_group(x, start, width), _group(kernel, start, width), dilation)
        return _put_group(out, values, start)

    # The loop's buffer starts as a copy of its input (every group is overwritten): unlike
    # a zero-filled one it cannot be allocated before the input exists.
    return jax.lax.fori_loop(0, chunks, group, x)


def _depthwise_forward(x, kernel, dilation, chunks):
    return _depthwise_shifted_sum(x, kernel, dilation, chunks), (x, kernel)


def _depthwise_backward(dilation, chunks, residuals, cotangent):
    x, kernel = residuals
    if chunks == 1:
        return _backward_values(x, kernel, cotangent, dilation)
    width = x.shape[-1] // chunks

    def group(index, grads):
        x_grad, kernel_grad = grads
        start = index * width
        x_part, kernel_part = _backward_values(
            _group(x, start, width),
            _group(kernel, start, width),
            _group(cotangent, start, width),
            dilation,
        )
        return _put_group(x_grad, x_part, start), _put_group(kernel_grad, kernel_part, start)

    return jax.lax.fori_loop(0, chunks, group, (cotangent, kernel))  # overwritten, as above


_depthwise_shifted_sum.defvjp(_depthwise_forward, _depthwise_backward)


class DepthwiseConv(nnx.Module):
    """k x k depthwise convolution (groups = channels), stride 1, 'same' zero padding."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        use_bias: bool = True,
        impl: str = "auto",
        kernel_init: nnx.Initializer,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        resolve_depthwise_impl(impl)  # fail early on a bad name
        self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, kernel_size, 1, channels)))
        self.bias = (
            nnx.Param(torch_bias_init(kernel_size * kernel_size)(rngs.params(), (channels,)))
            if use_bias
            else None
        )
        self.dilation = dilation
        self.impl = impl
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]."""
        y = depthwise_conv2d(
            x.astype(self.dtype), self.kernel[...], dilation=self.dilation, impl=self.impl
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


# --------------------------------------------------------------------------- normalisation


class BatchNorm(nnx.Module):
    """BatchNorm over [B, H, W] per channel with PyTorch's semantics.

    Training mode normalises with the biased batch variance and updates the running
    variance with the unbiased one (momentum 0.1, torch convention). Under `jax.jit` over a
    globally sharded batch the statistics are global, i.e. synchronised across devices.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.eps = eps
        self.momentum = momentum

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[..., C] -> [..., C] in x's dtype; `train` uses batch statistics and updates the
        running ones. Statistics and the normalisation itself are computed in (at least)
        float32, so a bfloat16 input is only rounded once, on output."""
        reduce_axes = tuple(range(x.ndim - 1))
        x32 = at_least_f32(x)
        if train:
            mean = jnp.mean(x32, axis=reduce_axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=reduce_axes)
            count = math.prod(x.shape[:-1])
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        else:
            mean, var = self.mean[...], self.var[...]
        inv = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        return ((x32 - mean) * inv + self.bias[...]).astype(x.dtype)


def layer_norm(num_features: int, eps: float, *, rngs: nnx.Rngs, dtype: jnp.dtype) -> nnx.LayerNorm:
    """LayerNorm with two-pass variance, as torch computes it (better float32 parity)."""
    return nnx.LayerNorm(num_features, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


# --------------------------------------------------------------------------- stochastic layers


def channel_dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Dropout2d on NHWC: zero whole channels per sample, rescale the rest by 1/(1-rate).

    `key=None` (or rate 0) means deterministic (eval mode).
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0], 1, 1, x.shape[-1]))
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def drop_path(x: jax.Array, rate: float | jax.Array, key: jax.Array | None) -> jax.Array:
    """Stochastic depth on a residual branch [B, ...]: keep a sample with prob 1-rate, rescale.

    `rate` may be a traced scalar (a scanned stage's per-block rate); rate 0 then keeps
    every sample and divides by 1, the same values as skipping.
    """
    if key is None or (isinstance(rate, float | int) and rate == 0.0):
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    scale = 1.0 - rate
    if isinstance(scale, jax.Array):  # divide in x's dtype, as by a Python float
        scale = scale.astype(x.dtype)
    return jnp.where(keep, x / scale, 0.0).astype(x.dtype)


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of [B, H, W, C] to [B, *size, C] with align_corners=False semantics.

    No antialiasing, so downscaling matches torch's F.interpolate too (docs/method.md §7.30).
    """
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(
        x, (x.shape[0], size[0], size[1], x.shape[-1]), method="bilinear", antialias=False
    )
