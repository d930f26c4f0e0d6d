"""Strong augmentation of normalised images: colour jitter and Gaussian blur (docs/method.md §3.13).

The maths follows the DACS transforms on kornia 0.5.8, which the reference trains with:

* colour jitter on the de-normalised image in [0, 1], four operations (0 brightness, 1 contrast,
  2 saturation, 3 hue) applied in a random order, with factors drawn per image;
* a separable Gaussian blur with reflect padding on the normalised image, after the jitter.

Everything is NHWC, pure and shape-static: the random draws live in a dict produced by
`sample_strong_draws` and `strong_transform` is the same compiled program whichever flags and
op orders were drawn. All work is per image, so a batch sharded over devices stays sharded.
The normalisation (mean/std of 0..255 RGB) is an argument: it belongs to the input pipeline.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
NUM_OPS = 4
# kornia's RGB->HSV divides the chroma by V + eps.
HSV_EPS = 1e-6

Draws = dict[str, jax.Array]


# --------------------------------------------------------------------------------------------
# Random draws
# --------------------------------------------------------------------------------------------


def sample_strong_draws(
    key: jax.Array,
    batch_size: int,
    *,
    share_order_and_sigma: bool,
    color_jitter_apply_probability: float = 0.8,
    blur_apply_probability: float = 0.5,
    strength: float = 0.2,
    sigma_range: tuple[float, float] = (0.15, 1.15),
) -> Draws:
    """All random numbers of one strong-augmentation call.

    Each op is on with its apply probability (0 switches it off, 1 always on). The draw is
    the reference's: one uniform u per call, on when u > 1 - probability (jitter: u > 0.2;
    blur: u > 0.5), so the same key switches the same ops on (docs/method.md §3.13).

    With `share_order_and_sigma` the op order and blur sigma are drawn once and broadcast over
    the batch (the reference's masking module makes one kornia call for the whole batch);
    otherwise they are drawn per image (the ClassMix path makes one call per image). Jitter
    factors are per image in both cases.

    Returns a dict with "jitter_on", "blur_on" (bool scalars), "brightness", "contrast",
    "saturation", "hue", "sigma" (float32 [B]) and "order" (int32 [B, 4], a permutation of
    0..3 per row).
    """
    if not 0.0 <= strength <= 0.5:
        raise ValueError(f"jitter strength must be in [0, 0.5] (hue bound), got {strength}")
    keys = jax.random.split(key, 8)
    b = batch_size

    def factor(k: jax.Array, low: float, high: float) -> jax.Array:
        return jax.random.uniform(k, (b,), jnp.float32, low, high)

    if share_order_and_sigma:
        order = jnp.broadcast_to(jax.random.permutation(keys[6], NUM_OPS), (b, NUM_OPS))
        sigma = jnp.broadcast_to(jax.random.uniform(keys[7], (), jnp.float32, *sigma_range), (b,))
    else:
        # argsort of iid uniforms is a uniformly random permutation per row.
        order = jnp.argsort(jax.random.uniform(keys[6], (b, NUM_OPS)), axis=1)
        sigma = factor(keys[7], *sigma_range)
    return {
        "jitter_on": jax.random.uniform(keys[0]) > 1.0 - color_jitter_apply_probability,
        "blur_on": jax.random.uniform(keys[1]) > 1.0 - blur_apply_probability,
        "brightness": factor(keys[2], 1.0 - strength, 1.0 + strength),
        "contrast": factor(keys[3], 1.0 - strength, 1.0 + strength),
        "saturation": factor(keys[4], 1.0 - strength, 1.0 + strength),
        "hue": factor(keys[5], -strength, strength),
        "order": order.astype(jnp.int32),
        "sigma": sigma,
    }


# --------------------------------------------------------------------------------------------
# Colour space (kornia 0.5.8 conventions, channels last)
# --------------------------------------------------------------------------------------------


def _pick(index: jax.Array, options: list[jax.Array]) -> jax.Array:
    """Elementwise options[index]; `index` holds integers 0..len(options)-1."""
    return jnp.select([index == i for i in range(len(options) - 1)], options[:-1], options[-1])


def rgb_to_hsv(image: jax.Array, eps: float = HSV_EPS) -> jax.Array:
    """RGB in [0, 1] `[..., 3]` -> HSV `[..., 3]` with H in [0, 2π) radians, S and V in [0, 1].

    S = Δ / (V + eps) as in kornia (so a grey pixel has S = 0, H = 0). Where several channels
    share the maximum, the first one (R, then G) decides the hue formula, as kornia does.
    """
    maxc = image.max(axis=-1)
    minc = image.min(axis=-1)
    argmax = jnp.argmax(image, axis=-1)  # first occurrence on ties
    delta = maxc - minc
    sat = delta / (maxc + eps)
    delta = jnp.where(delta == 0, jnp.ones_like(delta), delta)  # grey: hue numerator is 0 anyway
    rc, gc, bc = jnp.moveaxis(maxc[..., None] - image, -1, 0)
    hue = _pick(argmax, [bc - gc, 2.0 * delta + rc - bc, 4.0 * delta + gc - rc]) / delta
    hue = 2.0 * math.pi * jnp.mod(hue / 6.0, 1.0)
    return jnp.stack([hue, sat, maxc], axis=-1)


def hsv_to_rgb(image: jax.Array) -> jax.Array:
    """HSV `[..., 3]` (H in radians, any real value; S, V in [0, 1]) -> RGB `[..., 3]`."""
    h, s, v = jnp.moveaxis(image, -1, 0)
    h6 = h / (2.0 * math.pi) * 6.0
    sector = jnp.mod(jnp.floor(h6), 6.0)
    f = jnp.mod(h6, 6.0) - sector
    p = v * (1.0 - s)
    q = v * (1.0 - f * s)
    t = v * (1.0 - (1.0 - f) * s)
    sector = sector.astype(jnp.int32)
    r = _pick(sector, [v, q, p, p, t, v])
    g = _pick(sector, [t, v, v, q, p, p])
    b = _pick(sector, [p, p, t, v, v, q])
    return jnp.stack([r, g, b], axis=-1)


def _saturation_or_hue(
    x: jax.Array, is_saturation: jax.Array, saturation: jax.Array, hue_shift: jax.Array
) -> jax.Array:
    """One HSV round trip `[B, H, W, 3]` doing, per image, the saturation or the hue op.

    Saturation: S <- clip(σS, 0, 1). Hue: H <- fmod(H + shift, 2π) (fmod as kornia; hsv_to_rgb
    wraps H either way) with S untouched - not even clipped, since an input with a negative
    channel has S > 1. `is_saturation` is `[B, 1, 1]`, σ and shift broadcast against `[B, H, W]`.
    """
    hsv = rgb_to_hsv(x)
    h = jnp.fmod(hsv[..., 0] + jnp.where(is_saturation, 0.0, hue_shift), 2.0 * math.pi)
    s = jnp.where(is_saturation, jnp.clip(hsv[..., 1] * saturation, 0.0, 1.0), hsv[..., 1])
    return hsv_to_rgb(jnp.stack([h, s, hsv[..., 2]], axis=-1))


# --------------------------------------------------------------------------------------------
# Colour jitter and blur
# --------------------------------------------------------------------------------------------


def _per_image(values: jax.Array) -> jax.Array:
    """[B] -> [B, 1, 1, 1] for broadcasting against NHWC images."""
    return values[:, None, None, None]


def color_jitter(x: jax.Array, draws: Draws) -> jax.Array:
    """Apply the four jitter ops to RGB images in [0, 1] `[B, H, W, 3]`, each in its own order.

    At each of the 4 positions every image picks the op named by its `order` row. All branches
    are elementwise and cheap except the HSV round trip, which saturation and hue share.
    """
    brightness = _per_image(draws["brightness"]) - 1.0
    contrast = _per_image(draws["contrast"])
    saturation = _per_image(draws["saturation"])[..., 0]
    hue_shift = _per_image(draws["hue"])[..., 0] * 2.0 * math.pi
    for position in range(NUM_OPS):
        op = draws["order"][:, position]
        op4 = _per_image(op)
        hsv_branch = _saturation_or_hue(x, op4[..., 0] == SATURATION, saturation, hue_shift)
        x = jnp.where(
            op4 == BRIGHTNESS,
            jnp.clip(x + brightness, 0.0, 1.0),
            jnp.where(op4 == CONTRAST, jnp.clip(x * contrast, 0.0, 1.0), hsv_branch),
        )
    return x


def blur_kernel_size(side: int) -> int:
    """Largest odd integer <= ceil(side / 10) (the reference's rule): 51 for 512, 7 for 64."""
    c = -(-side // 10)  # exact integer ceil
    return c if c % 2 == 1 else c - 1


def gaussian_taps(sigma: jax.Array, size: int) -> jax.Array:
    """Normalised 1-D Gaussian taps exp(-x²/2σ²), x = -size//2..size//2: [B] -> [B, size]."""
    x = jnp.arange(size, dtype=jnp.float32) - size // 2
    taps = jnp.exp(-(x**2) / (2.0 * sigma[:, None] ** 2))
    return taps / taps.sum(axis=1, keepdims=True)


def _blur_axis(x: jax.Array, taps: jax.Array, axis: int) -> jax.Array:
    """Depthwise 1-D correlation of `[B, H, W, C]` along `axis` with per-image taps `[B, k]`.

    Reflect padding mirrors without repeating the edge pixel (torch/kornia 'reflect'). The
    sum over shifted slices keeps full float32 precision on every backend (no matmul units).
    """
    size = taps.shape[1]
    half = size // 2
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (half, half)
    padded = jnp.pad(x, pad, mode="reflect")
    out = jnp.zeros_like(x)
    for t in range(size):
        window = lax.slice_in_dim(padded, t, t + n, axis=axis)
        out = out + _per_image(taps[:, t]) * window
    return out


def gaussian_blur(images: jax.Array, sigma: jax.Array) -> jax.Array:
    """Separable Gaussian blur `[B, H, W, C]` with per-image sigma `[B]`, kernel per axis from
    `blur_kernel_size` (equal to kornia's 2-D kernel, the outer product of the two 1-D ones)."""
    _, height, width, _ = images.shape
    out = _blur_axis(images, gaussian_taps(sigma, blur_kernel_size(height)), axis=1)
    return _blur_axis(out, gaussian_taps(sigma, blur_kernel_size(width)), axis=2)


def strong_transform(
    images: jax.Array, draws: Draws, mean_rgb: Sequence[float], std_rgb: Sequence[float]
) -> jax.Array:
    """Colour jitter (if draws["jitter_on"]) then Gaussian blur (if draws["blur_on"]).

    images: `[B, H, W, 3]` normalised as (x - mean_rgb) / std_rgb with x the 0..255 RGB
    image (`mean_rgb`, `std_rgb`: 3 values each; the jitter works on x / 255). Returns the
    same shape and dtype. The flags are scalars, so `lax.cond` skips the work when off.
    """
    dtype = images.dtype
    x = images.astype(jnp.promote_types(images.dtype, jnp.float32))
    mean = jnp.asarray(mean_rgb, jnp.float32)
    std = jnp.asarray(std_rgb, jnp.float32)

    def jitter(y: jax.Array) -> jax.Array:
        y01 = (y * std + mean) / 255.0
        return (color_jitter(y01, draws) * 255.0 - mean) / std

    x = lax.cond(draws["jitter_on"], jitter, lambda y: y, x)
    x = lax.cond(draws["blur_on"], lambda y: gaussian_blur(y, draws["sigma"]), lambda y: y, x)
    return x.astype(dtype)
