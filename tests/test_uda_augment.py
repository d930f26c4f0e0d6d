"""Strong augmentation: draws, HSV maths, each jitter op, op order, blur (docs/method.md §3.13).

The references below are plain numpy written from the formulas (kornia 0.5.8 conventions);
one test also compares with kornia 0.5.8 itself.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcmsm_jax.data.transforms import MEAN_RGB, STD_RGB
from lcmsm_jax.uda import augment as A

# Jitted once per shape: eager dispatch of the many small ops would dominate the test time.
color_jitter = jax.jit(A.color_jitter)
gaussian_blur = jax.jit(A.gaussian_blur)
strong_transform = jax.jit(
    lambda images, draws: A.strong_transform(images, draws, MEAN_RGB, STD_RGB)
)
rgb_to_hsv = jax.jit(A.rgb_to_hsv)
hsv_to_rgb = jax.jit(A.hsv_to_rgb)

# ----------------------------------------------------------------------------- numpy references


def np_rgb_to_hsv(rgb, eps=1e-6):
    """[..., 3] in [0, 1] -> HSV with H in radians; ties resolved R, then G, then B."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = delta / (v + eps)
    d = np.where(delta == 0, 1.0, delta)
    h = np.where(
        r == v,
        (g - b) / d,
        np.where(g == v, 2.0 + (b - r) / d, 4.0 + (r - g) / d),
    )
    h = 2 * np.pi * np.mod(h / 6.0, 1.0)
    return np.stack([h, s, v], -1).astype(np.float32)


def np_hsv_to_rgb(hsv):
    h, s, v = hsv[..., 0] / (2 * np.pi), hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6) % 6
    f = (h * 6) % 6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = {
        0: (v, t, p),
        1: (q, v, p),
        2: (p, v, t),
        3: (p, q, v),
        4: (t, p, v),
        5: (v, p, q),
    }
    out = np.zeros(hsv.shape, np.float64)
    for k, (rr, gg, bb) in table.items():
        sel = sector == k
        out[..., 0] = np.where(sel, rr, out[..., 0])
        out[..., 1] = np.where(sel, gg, out[..., 1])
        out[..., 2] = np.where(sel, bb, out[..., 2])
    return out.astype(np.float32)


def np_op(x, op, beta, kappa, sigma, eta):
    """One jitter op on one image [H, W, 3] in [0, 1]."""
    if op == 0:
        return np.clip(x + (beta - 1), 0, 1)
    if op == 1:
        return np.clip(kappa * x, 0, 1)
    hsv = np_rgb_to_hsv(x)
    if op == 2:
        hsv[..., 1] = np.clip(hsv[..., 1] * sigma, 0, 1)
    else:
        hsv[..., 0] = np.mod(hsv[..., 0] + 2 * np.pi * eta, 2 * np.pi)
    return np_hsv_to_rgb(hsv)


def np_jitter(x01, draws):
    out = []
    for i in range(x01.shape[0]):
        img = x01[i]
        f = [float(draws[k][i]) for k in ("brightness", "contrast", "saturation", "hue")]
        for op in np.asarray(draws["order"][i]):
            img = np_op(img, int(op), *f)
        out.append(img)
    return np.stack(out)


def np_blur(images, sigmas):
    """Explicit 2-D correlation with reflect padding, kernel = outer product of 1-D taps."""
    _, height, width, _ = images.shape
    out = np.zeros_like(images, dtype=np.float64)
    for i, sigma in enumerate(sigmas):
        ky, kx = A.blur_kernel_size(height), A.blur_kernel_size(width)
        ty = np.exp(-((np.arange(ky) - ky // 2) ** 2) / (2 * sigma**2))
        tx = np.exp(-((np.arange(kx) - kx // 2) ** 2) / (2 * sigma**2))
        kernel = np.outer(ty / ty.sum(), tx / tx.sum())
        padded = np.pad(images[i], ((ky // 2,) * 2, (kx // 2,) * 2, (0, 0)), mode="reflect")
        for a in range(ky):
            for b in range(kx):
                out[i] += kernel[a, b] * padded[a : a + height, b : b + width]
    return out.astype(np.float32)


def denorm(x):
    return (x * STD_RGB + MEAN_RGB) / 255.0


def renorm(x):
    return (x * 255.0 - MEAN_RGB) / STD_RGB


def make_draws(batch, order, *, jitter_on=True, blur_on=False, sigma=1.0, **factors):
    order = np.broadcast_to(np.asarray(order, np.int32), (batch, 4))
    draws = {
        "jitter_on": jnp.asarray(jitter_on),
        "blur_on": jnp.asarray(blur_on),
        "order": jnp.asarray(order),
        "sigma": jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (batch,)),
    }
    for name, neutral in (
        ("brightness", 1.0),
        ("contrast", 1.0),
        ("saturation", 1.0),
        ("hue", 0.0),
    ):
        value = factors.get(name, neutral)
        draws[name] = jnp.broadcast_to(jnp.asarray(value, jnp.float32), (batch,))
    return draws


def random_rgb(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.random(shape).astype(np.float32)
    x[..., 0, 0, :] = 0.4  # a grey pixel
    x[..., 0, 1, :] = [0.7, 0.7, 0.2]  # R/G tie for the maximum
    return x


# ----------------------------------------------------------------------------- draws


def test_draw_shapes_ranges_and_sharing():
    shared = A.sample_strong_draws(jax.random.key(0), 16, share_order_and_sigma=True)
    own = A.sample_strong_draws(jax.random.key(1), 16, share_order_and_sigma=False)
    for draws in (shared, own):
        assert draws["jitter_on"].shape == () and draws["jitter_on"].dtype == jnp.bool_
        assert draws["blur_on"].shape == () and draws["blur_on"].dtype == jnp.bool_
        for name in ("brightness", "contrast", "saturation"):
            v = np.asarray(draws[name])
            assert v.shape == (16,) and v.min() >= 0.8 and v.max() <= 1.2
            assert len(np.unique(v)) == 16  # per image in both modes
        hue = np.asarray(draws["hue"])
        assert hue.min() >= -0.2 and hue.max() <= 0.2 and len(np.unique(hue)) == 16
        order = np.asarray(draws["order"])
        assert order.shape == (16, 4) and order.dtype == np.int32
        assert (np.sort(order, axis=1) == np.arange(4)).all()  # permutations
        sigma = np.asarray(draws["sigma"])
        assert sigma.shape == (16,) and sigma.min() >= 0.15 and sigma.max() <= 1.15
    assert (np.asarray(shared["order"]) == np.asarray(shared["order"])[0]).all()
    assert len(np.unique(np.asarray(shared["sigma"]))) == 1
    assert len({tuple(r) for r in np.asarray(own["order"])}) > 1
    assert len(np.unique(np.asarray(own["sigma"]))) == 16


def test_draw_frequencies():
    keys = jax.random.split(jax.random.key(2), 4000)
    sample = jax.vmap(lambda k: A.sample_strong_draws(k, 2, share_order_and_sigma=True))
    draws = sample(keys)
    assert abs(float(draws["jitter_on"].mean()) - 0.8) < 0.03  # u_cj > 0.2
    assert abs(float(draws["blur_on"].mean()) - 0.5) < 0.03
    # Every one of the 24 permutations shows up for the shared order.
    assert len({tuple(r) for r in np.asarray(draws["order"][:, 0])}) == 24
    hue = np.asarray(draws["hue"]).ravel()
    assert hue.min() < -0.19 and hue.max() > 0.19


def test_apply_probabilities_reproduce_the_reference_thresholds():
    # The reference switches jitter on when u > 0.2 and blur when u > 0.5, with u the first
    # and second uniform of the call; apply probabilities 0.8 / 0.5 give the same decisions
    # for the same key, 0 switches an op off and 1 on.
    keys = jax.random.split(jax.random.key(3), 400)

    def draw(jitter: float, blur: float):
        return jax.vmap(
            lambda k: A.sample_strong_draws(
                k, 1, share_order_and_sigma=True,
                color_jitter_apply_probability=jitter, blur_apply_probability=blur,
            )
        )(keys)  # fmt: skip

    uniforms = jax.vmap(lambda k: jax.vmap(jax.random.uniform)(jax.random.split(k, 8)[:2]))(keys)
    default = draw(0.8, 0.5)
    np.testing.assert_array_equal(default["jitter_on"], uniforms[:, 0] > 0.2)
    np.testing.assert_array_equal(default["blur_on"], uniforms[:, 1] > 0.5)
    assert 0.7 < float(default["jitter_on"].mean()) < 0.9
    off, on = draw(0.0, 0.0), draw(1.0, 1.0)
    assert not off["jitter_on"].any() and not off["blur_on"].any()
    assert on["jitter_on"].all() and on["blur_on"].all()


# ----------------------------------------------------------------------------- colour space


def test_hsv_hand_values():
    rgb = jnp.asarray([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5], [0, 0, 0.0]])
    hsv = np.asarray(rgb_to_hsv(rgb))
    np.testing.assert_allclose(hsv[:, 0], [0, 2 * np.pi / 3, 4 * np.pi / 3, np.pi / 3, 0, 0])
    np.testing.assert_allclose(hsv[:, 1], [1 / (1 + 1e-6)] * 4 + [0, 0], rtol=1e-7)
    np.testing.assert_allclose(hsv[:, 2], [1, 1, 1, 1, 0.5, 0])


def test_hsv_matches_reference_and_round_trips():
    x = random_rgb(0, (3, 9, 11, 3))
    hsv = np.asarray(rgb_to_hsv(jnp.asarray(x)))
    np.testing.assert_allclose(hsv, np_rgb_to_hsv(x), atol=2e-6)
    assert hsv[..., 0].min() >= 0 and hsv[..., 0].max() < 2 * np.pi
    back = np.asarray(hsv_to_rgb(jnp.asarray(hsv)))
    np.testing.assert_allclose(back, np_hsv_to_rgb(hsv), atol=2e-6)
    np.testing.assert_allclose(back, x, atol=1e-5)  # exact up to the 1e-6 eps in S


def test_hsv_to_rgb_wraps_any_hue():
    hsv = np_rgb_to_hsv(random_rgb(1, (2, 5, 6, 3)))
    for turns in (-1.0, 1.0):
        shifted = hsv.copy()
        shifted[..., 0] += turns * 2 * np.pi
        np.testing.assert_allclose(
            hsv_to_rgb(jnp.asarray(shifted)), hsv_to_rgb(jnp.asarray(hsv)), atol=1e-5
        )


# ----------------------------------------------------------------------------- jitter ops


@pytest.mark.parametrize(
    "factor, expected",
    [
        (dict(brightness=1.1), lambda x: np.clip(x + 0.1, 0, 1)),
        (dict(brightness=0.8), lambda x: np.clip(x - 0.2, 0, 1)),
        (dict(contrast=1.2), lambda x: np.clip(1.2 * x, 0, 1)),
        (dict(contrast=0.85), lambda x: 0.85 * x),
    ],
)
def test_brightness_and_contrast(factor, expected):
    x = random_rgb(2, (2, 6, 7, 3))
    out = color_jitter(jnp.asarray(x), make_draws(2, [0, 1, 2, 3], **factor))
    # The two HSV ops run with neutral factors: identity up to the eps in S.
    np.testing.assert_allclose(out, expected(x), atol=1e-5)


def test_saturation_op():
    x = random_rgb(3, (2, 6, 7, 3))
    for sigma in (0.8, 1.2):
        out = np.asarray(
            color_jitter(jnp.asarray(x), make_draws(2, [2, 0, 1, 3], saturation=sigma))
        )
        hsv = np_rgb_to_hsv(x)
        hsv[..., 1] = np.clip(hsv[..., 1] * sigma, 0, 1)
        np.testing.assert_allclose(out, np_hsv_to_rgb(hsv), atol=1e-5)
        # Saturation scales each pixel's spread around its maximum, keeping the maximum.
        np.testing.assert_allclose(out.max(-1), x.max(-1), atol=1e-5)
    grey = np.full((1, 2, 2, 3), 0.3, np.float32)
    out = color_jitter(jnp.asarray(grey), make_draws(1, [2, 0, 1, 3], saturation=1.2))
    np.testing.assert_allclose(out, grey, atol=1e-6)


def test_hue_op():
    red = np.zeros((1, 1, 1, 3), np.float32)
    red[..., 0] = 1.0
    # +1/6 turn = +60 degrees: red -> yellow; -1/6: red -> magenta.
    out = color_jitter(jnp.asarray(red), make_draws(1, [3, 0, 1, 2], hue=1 / 6))
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], [1, 1, 0], atol=1e-5)
    out = color_jitter(jnp.asarray(red), make_draws(1, [3, 0, 1, 2], hue=-1 / 6))
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], [1, 0, 1], atol=1e-5)
    x = random_rgb(4, (2, 6, 7, 3))
    for eta in (-0.2, 0.13):
        out = color_jitter(jnp.asarray(x), make_draws(2, [3, 2, 1, 0], hue=eta))
        hsv = np_rgb_to_hsv(x)
        hsv[..., 0] = np.mod(hsv[..., 0] + 2 * np.pi * eta, 2 * np.pi)
        np.testing.assert_allclose(out, np_hsv_to_rgb(hsv), atol=1e-5)


def test_op_order_matters_and_is_honoured_per_image():
    x = random_rgb(5, (2, 8, 9, 3))
    factors = dict(brightness=1.15, contrast=0.82, saturation=1.18, hue=0.11)
    b_first = make_draws(2, [0, 1, 2, 3], **factors)
    c_first = make_draws(2, [1, 0, 3, 2], **factors)
    out_b = np.asarray(color_jitter(jnp.asarray(x), b_first))
    out_c = np.asarray(color_jitter(jnp.asarray(x), c_first))
    assert np.abs(out_b - out_c).max() > 0.05
    np.testing.assert_allclose(out_b, np_jitter(x, b_first), atol=2e-5)
    np.testing.assert_allclose(out_c, np_jitter(x, c_first), atol=2e-5)
    # Different orders within one batch: each image follows its own row.
    mixed = dict(b_first, order=jnp.asarray([[0, 1, 2, 3], [1, 0, 3, 2]], jnp.int32))
    out = np.asarray(color_jitter(jnp.asarray(x), mixed))
    np.testing.assert_allclose(out[0], out_b[0], atol=1e-6)
    np.testing.assert_allclose(out[1], out_c[1], atol=1e-6)


def test_random_jitter_matches_reference():
    x = random_rgb(6, (4, 6, 5, 3))
    draws = A.sample_strong_draws(jax.random.key(7), 4, share_order_and_sigma=False)
    np.testing.assert_allclose(color_jitter(jnp.asarray(x), draws), np_jitter(x, draws), atol=2e-5)


# ----------------------------------------------------------------------------- blur


@pytest.mark.parametrize("side, size", [(512, 51), (64, 7), (1024, 103), (100, 9), (40, 3), (5, 1)])
def test_blur_kernel_size(side, size):
    assert A.blur_kernel_size(side) == size


def test_gaussian_taps():
    taps = np.asarray(A.gaussian_taps(jnp.asarray([0.5, 1.1]), 7))
    np.testing.assert_allclose(taps.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(taps, taps[:, ::-1])
    for row, sigma in zip(taps, (0.5, 1.1), strict=True):
        np.testing.assert_allclose(row[4] / row[3], math.exp(-1 / (2 * sigma**2)), rtol=1e-5)


def test_blur_matches_reference_and_keeps_constants():
    rng = np.random.default_rng(8)
    images = rng.standard_normal((2, 40, 64, 3)).astype(np.float32)  # kernels 3 x 7
    sigmas = np.asarray([0.4, 1.15], np.float32)
    out = np.asarray(gaussian_blur(jnp.asarray(images), jnp.asarray(sigmas)))
    np.testing.assert_allclose(out, np_blur(images, sigmas), atol=1e-5)
    const = np.full((1, 64, 64, 3), -1.7, np.float32)
    np.testing.assert_allclose(gaussian_blur(jnp.asarray(const), jnp.asarray([1.1])), const, 1e-6)


def test_blur_at_512_uses_51_taps_and_reflects(monkeypatch):
    sizes = []
    taps_fn = A.gaussian_taps

    def recording_taps(sigma, size):
        sizes.append(size)
        return taps_fn(sigma, size)

    monkeypatch.setattr(A, "gaussian_taps", recording_taps)
    # An impulse one pixel from the top border, in column 256.
    image = np.zeros((1, 512, 512, 1), np.float32)
    image[0, 1, 256] = 1.0
    blur = jax.jit(A.gaussian_blur)  # traced here, with the recording taps
    out = np.asarray(blur(jnp.asarray(image), jnp.asarray([1.15])))[0, :, 256, 0]
    assert sizes == [51, 51]
    taps = np.asarray(taps_fn(jnp.asarray([1.15]), 51))[0]
    # Reflect mirrors row -1 onto row 1 (the edge row 0 is not repeated), so the impulse reaches
    # row r at offsets r - 1 and r + 1; the horizontal pass contributes tap(0).
    rows = np.arange(6)
    expected = (taps[25 + rows - 1] + taps[25 + rows + 1]) * taps[25]
    np.testing.assert_allclose(out[:6], expected, rtol=1e-5)


# ----------------------------------------------------------------------------- strong transform


def test_strong_transform_flags():
    x01 = random_rgb(9, (2, 20, 30, 3))
    images = renorm(x01).astype(np.float32)
    factors = dict(brightness=1.1, contrast=0.9, saturation=0.85, hue=-0.07, sigma=0.9)
    off = make_draws(2, [2, 3, 0, 1], jitter_on=False, blur_on=False, **factors)
    np.testing.assert_array_equal(strong_transform(jnp.asarray(images), off), images)

    jit_only = dict(off, jitter_on=jnp.asarray(True))
    expected = renorm(np_jitter(x01, jit_only))
    out = strong_transform(jnp.asarray(images), jit_only)
    np.testing.assert_allclose(out, expected, atol=1e-4)

    both = dict(jit_only, blur_on=jnp.asarray(True))
    out = strong_transform(jnp.asarray(images), both)
    np.testing.assert_allclose(out, np_blur(expected, [0.9, 0.9]), atol=1e-4)

    blur_only = dict(off, blur_on=jnp.asarray(True))
    out = strong_transform(jnp.asarray(images), blur_only)
    np.testing.assert_allclose(out, np_blur(images, [0.9, 0.9]), atol=1e-4)


def test_strong_transform_jit_sharded_matches_reference():
    if jax.device_count() < 4:
        pytest.skip("needs simulated devices")
    n = 4
    mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    images = renorm(random_rgb(10, (n, 16, 24, 3))).astype(np.float32)
    draws = A.sample_strong_draws(jax.random.key(11), n, share_order_and_sigma=False)
    draws = dict(draws, jitter_on=jnp.asarray(True), blur_on=jnp.asarray(True))
    sharded = jax.device_put(jnp.asarray(images), sharding)
    out = strong_transform(sharded, draws)
    assert out.sharding.is_equivalent_to(sharding, 4)
    expected = np_blur(renorm(np_jitter(denorm(images), draws)), np.asarray(draws["sigma"]))
    np.testing.assert_allclose(out, expected, atol=1e-4)


# ----------------------------------------------------------------------------- kornia 0.5.8


@pytest.mark.torch
def test_matches_kornia_058():
    import kornia
    import torch

    # The reference maths is that of kornia 0.5.8 (pinned in the test extra).
    assert kornia.__version__ == "0.5.8", kornia.__version__
    rng = np.random.default_rng(12)
    # Includes out-of-range values (S > 1), where the hue op must not clip S.
    x = (rng.random((2, 3, 10, 12)) * 1.2 - 0.1).astype(np.float32)
    for seed in range(4):
        torch.manual_seed(seed)
        jitter = kornia.augmentation.ColorJitter(0.2, 0.2, 0.2, 0.2)
        params = jitter.forward_parameters(torch.Size(x.shape))
        expected = jitter(torch.from_numpy(x), params).numpy().transpose(0, 2, 3, 1)
        draws = make_draws(
            2,
            params["order"].numpy(),
            brightness=params["brightness_factor"].numpy(),
            contrast=params["contrast_factor"].numpy(),
            saturation=params["saturation_factor"].numpy(),
            hue=params["hue_factor"].numpy(),
        )
        out = color_jitter(jnp.asarray(x.transpose(0, 2, 3, 1)), draws)
        np.testing.assert_allclose(out, expected, atol=1e-5)
    blur = kornia.filters.GaussianBlur2d((3, 7), (0.7, 0.7))
    images = rng.standard_normal((1, 3, 40, 64)).astype(np.float32)
    expected = blur(torch.from_numpy(images)).numpy().transpose(0, 2, 3, 1)
    out = gaussian_blur(jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray([0.7]))
    np.testing.assert_allclose(out, expected, atol=1e-5)
