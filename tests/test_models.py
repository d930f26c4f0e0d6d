"""Hand-checkable tests of the model pieces and the public Segmentor API."""

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcmsm_jax import models
from lcmsm_jax.models import heads, layers, mit

sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
import base  # noqa: E402


def tiny_config():
    cfg = base.model_config()
    cfg.backbone = "mit_b0"
    for head in (cfg.decode_head, cfg.lcmsm_head):
        head.embed_dim = 16
        head.channels = 16
    cfg.text_dim = 12
    return cfg


# ----------------------------------------------------------------------------- depthwise conv


@pytest.mark.parametrize("dilation", [1, 2, 6])
def test_depthwise_formulations_agree(dilation):
    rng = np.random.default_rng(dilation)
    x = rng.standard_normal((2, 13, 17, 5)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 1, 5)).astype(np.float32)
    conv = layers.depthwise_conv2d(x, kernel, dilation=dilation, impl="conv")
    shifted = layers.depthwise_conv2d(x, kernel, dilation=dilation, impl="shifted_sum")
    np.testing.assert_allclose(conv, shifted, rtol=1e-5, atol=1e-5)
    # One output pixel by hand: zero-padded, dilated 3x3 cross-correlation.
    padded = np.pad(x, ((0, 0), (dilation, dilation), (dilation, dilation), (0, 0)))
    i, j = 6, 8
    want = sum(
        padded[:, i + a * dilation, j + b * dilation] * kernel[a, b, 0]
        for a in range(3)
        for b in range(3)
    )
    np.testing.assert_allclose(shifted[:, i, j], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dilation", [1, 6, 14, 20])
def test_depthwise_shifted_sum_gradients_match_the_convolution(dilation):
    # 14 on a 13 x 17 map: the vertical outer taps only read padding and are skipped;
    # 20: only the centre tap is left. The reference is autodiff through lax's convolution.
    rng = np.random.default_rng(dilation)
    x = jnp.asarray(rng.standard_normal((2, 13, 17, 5)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 5)), jnp.float32)
    weight = jnp.asarray(rng.standard_normal((2, 13, 17, 5)), jnp.float32)

    def loss(impl):
        def f(x, kernel):
            y = layers.depthwise_conv2d(x, kernel, dilation=dilation, impl=impl)
            return jnp.sum(jnp.tanh(y) * weight)

        return f

    want = jax.grad(loss("conv"), argnums=(0, 1))(x, kernel)
    got = jax.jit(jax.grad(loss("shifted_sum"), argnums=(0, 1)))(x, kernel)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    if dilation >= 13:  # a tap that only sees padding gets a zero gradient
        np.testing.assert_array_equal(got[1][0], 0.0)


def test_depthwise_shifted_sum_over_channel_groups_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 11, 12)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 1, 12)).astype(np.float32)

    def value_and_grads(x, kernel):
        def loss(x, kernel):
            y = layers.depthwise_conv2d(x, kernel, dilation=2, impl="shifted_sum")
            return jnp.sum(jnp.sin(y) * x)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)

    whole = value_and_grads(x, kernel)
    assert layers._channel_chunks(jnp.asarray(x)) == 1
    # A map of 2*9*11*12*4 bytes in groups of at most 1/4 of it: 4 groups of 3 channels.
    monkeypatch.setattr(layers, "SHIFTED_SUM_CHUNK_BYTES", x.nbytes // 4)
    assert layers._channel_chunks(jnp.asarray(x)) == 4
    grouped = value_and_grads(x, kernel)
    for a, b in zip(jax.tree.leaves(grouped), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_depthwise_impl_is_validated():
    with pytest.raises(ValueError, match="depthwise_impl must be one of"):
        layers.resolve_depthwise_impl("fft")
    assert layers.resolve_depthwise_impl("auto") in ("conv", "shifted_sum")


def test_mit_with_either_depthwise_impl_gives_the_same_features():
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    outs = []
    for impl in ("conv", "shifted_sum"):
        mit = models.MixVisionTransformer("mit_b0", depthwise_impl=impl, rngs=nnx.Rngs(0))
        outs.append(mit(x))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- normalisation


def test_batchnorm_train_and_eval_modes():
    rng = np.random.default_rng(0)
    x = (3.0 + 2.0 * rng.standard_normal((4, 5, 6, 3))).astype(np.float32)
    bn = layers.BatchNorm(3)
    bn.scale[...] = jnp.array([1.0, 2.0, 0.5])
    bn.bias[...] = jnp.array([0.0, 1.0, -1.0])
    y = bn(x, train=True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    want = (x - mean) / np.sqrt(var + 1e-5) * np.array([1.0, 2.0, 0.5]) + np.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    n = x.size // 3
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    # Eval mode uses the running statistics and leaves them alone.
    running_mean, running_var = np.array(bn.mean[...]), np.array(bn.var[...])
    y_eval = bn(x, train=False)
    want_eval = (x - running_mean) / np.sqrt(running_var + 1e-5) * np.array(
        [1.0, 2.0, 0.5]
    ) + np.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(y_eval, want_eval, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.mean[...], running_mean)


# ----------------------------------------------------------------------------- stochastic layers


def test_channel_dropout_drops_whole_channels():
    x = jnp.ones((4, 8, 8, 32))
    y = np.asarray(layers.channel_dropout(x, 0.5, jax.random.key(0)))
    per_channel = y.reshape(4, 64, 32)
    # Every (sample, channel) is constant over space: either all 0 or all 1/(1-p) = 2.
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))
    assert set(np.unique(y)) == {0.0, 2.0}
    assert 0.2 < (y == 0).mean() < 0.8
    np.testing.assert_array_equal(layers.channel_dropout(x, 0.5, None), x)


def test_drop_path_drops_whole_samples():
    x = jnp.ones((64, 10, 4))
    y = np.asarray(layers.drop_path(x, 0.25, jax.random.key(1)))
    per_sample = y.reshape(64, -1)
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
    np.testing.assert_array_equal(layers.drop_path(x, 0.25, None), x)


def test_mit_drop_path_rates_rise_linearly_over_all_blocks():
    mit = nnx.eval_shape(lambda: models.MixVisionTransformer("mit_b5", rngs=nnx.Rngs(0)))
    assert len(mit.drop_path_rates) == 52
    np.testing.assert_allclose(mit.drop_path_rates, np.linspace(0.0, 0.1, 52))


def test_mit_stores_each_stage_stacked_and_blocks_as_initialised_one_by_one():
    """A stage's blocks are one stacked parameter per kind of weight ([depth, ...]); block i
    holds the values an unstacked block i would be initialised with."""
    backbone = models.MixVisionTransformer("mit_b2", rngs=nnx.Rngs(0))
    params = nnx.state(backbone, nnx.Param).to_pure_dict()
    assert params["block3"]["attn"]["q"]["kernel"].shape == (6, 320, 320)
    assert params["block1"]["mlp"]["dwconv"]["kernel"].shape == (3, 3, 3, 1, 256)
    # Block by block with the same key sequence: patch_embed1, then block1's three blocks.
    rngs = nnx.Rngs(0)
    spec = models.MIT_VARIANTS["mit_b2"]
    mit.OverlapPatchEmbed(3, 64, 7, 4, rngs=rngs, dtype=jnp.float32)
    for index in range(3):
        block = mit.Block(64, spec.num_heads[0], spec.sr_ratios[0], spec.mlp_ratio, 0.0,
                                 depthwise_impl="auto", rngs=rngs, dtype=jnp.float32)  # fmt: skip
        np.testing.assert_array_equal(
            params["block1"]["attn"]["q"]["kernel"][index], block.attn.q.kernel[...]
        )


# ----------------------------------------------------------------------------- scanned blocks


@functools.cache
def _backbone_value_and_grads(scan_blocks: bool, remat: str, rng_seed: int | None):
    """A MiT-B2 (stage depths 3/4/6/3, so scans of different lengths), its loss over all four
    maps and the gradients, jitted; drop path on when `rng` is a key."""
    model = models.MixVisionTransformer(
        "mit_b2", drop_path_rate=0.3, scan_blocks=scan_blocks, remat=remat, rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(model, nnx.Param)
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    rng = None if rng_seed is None else jax.random.key(rng_seed)

    def loss(params):
        features = nnx.merge(graphdef, params)(images, rng=rng)
        # Not a sum of squares: every map ends in a LayerNorm, whose squares sum to a constant.
        return sum(jnp.mean(jnp.sin(3 * f) * f) for f in features), features

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params.to_pure_dict())


@pytest.mark.parametrize("remat", ["none", "block", "stage"])
def test_scanned_blocks_equal_unrolled_blocks_with_per_block_drop_path(remat):
    for rng_seed in (None, 3):
        (value, maps), grads = _backbone_value_and_grads(False, "none", rng_seed)
        (value_s, maps_s), grads_s = _backbone_value_and_grads(True, remat, rng_seed)
        np.testing.assert_allclose(value_s, value, rtol=1e-6)
        for a, b in zip(maps_s, maps, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        # Same parameter names and shapes: the stage's stacked weights, scanned or sliced.
        assert jax.tree.structure(grads_s) == jax.tree.structure(grads)
        assert grads_s["block3"]["attn"]["q"]["kernel"].shape[0] == 6
        for a, b in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Drop path is on (each block its own rate and key): the maps differ from rng=None's.
    off = _backbone_value_and_grads(True, remat, None)[0][1]
    on = _backbone_value_and_grads(True, remat, 3)[0][1]
    assert not np.allclose(off[2], on[2], atol=1e-3)


def test_scanned_stage_holds_one_block_per_stage_in_the_program():
    """The compiled size of MiT-B5 (52 blocks) stays that of MiT-B0 (8) with scanned blocks."""

    def lowered_size(variant: str, scan_blocks: bool) -> int:
        model = models.MixVisionTransformer(variant, scan_blocks=scan_blocks, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)
        images = jnp.zeros((1, 32, 32, 3))
        apply = lambda p: nnx.merge(graphdef, p)(images)  # noqa: E731
        return len(jax.jit(apply).lower(params.to_pure_dict()).as_text().splitlines())

    # The weights are stored stacked, so nothing grows with depth: the blocks' computation
    # is there once per stage, and the argument list is one array per stage and weight.
    b0, b5 = lowered_size("mit_b0", True), lowered_size("mit_b5", True)
    assert b5 < 1.05 * b0
    assert lowered_size("mit_b5", False) > 3 * b5


# ----------------------------------------------------------------------------- LC-MSM head


def test_correlation_of_unit_vectors_is_cosine_over_tau():
    theta = np.array([0.0, 0.3, 1.2, np.pi / 2, np.pi])
    text = np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # [5, 2] unit vectors
    pixels = np.array([[[[3.0, 0.0], [0.0, 0.5]]]])  # [1, 1, 2, 2]: x-axis and y-axis, scaled
    maps = np.asarray(heads.text_pixel_correlation(pixels, 7.0 * text, logit_scale=1 / 0.07))
    np.testing.assert_allclose(maps[0, 0, 0], np.cos(theta) / 0.07, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(maps[0, 0, 1], np.sin(theta) / 0.07, rtol=1e-6, atol=1e-5)


def test_spatial_block_on_one_hot_input():
    block = heads.SpatialBlock("bottleneck", "relu", rngs=nnx.Rngs(0))
    kernel = np.arange(9, dtype=np.float32).reshape(3, 3) - 4.0
    block.kernel[...] = kernel.reshape(3, 3, 1, 1)
    block.bias[...] = jnp.array([0.25])
    x = np.zeros((1, 5, 5, 3), np.float32)
    x[0, 2, 2, 1] = 1.0  # one-hot at the centre, class 1
    y = np.asarray(block(x, activate=False))
    pixel_max = x.max(axis=-1)[0]  # 1 at the centre only
    # Cross-correlation of a delta: class-1 map shows the kernel flipped around the centre.
    want_class1 = np.zeros((5, 5), np.float32)
    want_class1[1:4, 1:4] = kernel[::-1, ::-1]
    np.testing.assert_allclose(y[0, :, :, 1], want_class1 + 0.25 + pixel_max, atol=1e-6)
    for other in (0, 2):  # the other class maps only get the bias and the max over classes
        np.testing.assert_allclose(y[0, :, :, other], 0.25 + pixel_max, atol=1e-6)
    np.testing.assert_allclose(block(x, activate=True), np.maximum(y, 0.0), atol=1e-6)
    depthwise = heads.SpatialBlock("depthwise", "relu", rngs=nnx.Rngs(0))
    depthwise.kernel[...], depthwise.bias[...] = block.kernel[...], block.bias[...]
    np.testing.assert_allclose(
        depthwise(x, activate=False), y - pixel_max[None, :, :, None], atol=1e-6
    )


def test_lcmsm_head_applies_the_block_depth_times_last_without_activation():
    head = heads.LCMSMHead((4, 4, 4, 4), 3, embed_dim=4, channels=4, block_depth=3,
                           rngs=nnx.Rngs(0))  # fmt: skip
    fused = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    text = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    maps = heads.text_pixel_correlation(fused, text, 1 / 0.07)
    want = head.spatial_block(head.spatial_block(maps, activate=True), activate=True)
    want = head.spatial_block(want, activate=False)
    np.testing.assert_allclose(head.correlate(fused, text), want, rtol=1e-6)
    assert head.logit_scale == pytest.approx(1 / 0.07)
    # The scale is a constant, not a trainable parameter.
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(head, nnx.Param))}
    assert not any("logit_scale" in n for n in names)


# ----------------------------------------------------------------------------- Segmentor API


def test_segmentor_public_api():
    model = models.Segmentor(tiny_config(), rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)
    text = np.random.default_rng(1).standard_normal((19, 12)).astype(np.float32)
    out = model(images, text, train=False)
    assert out["decode"].shape == (2, 16, 24, 19)
    assert out["lcmsm"].shape == (2, 16, 24, 19)
    assert [f.shape for f in out["features"]] == [
        (2, 16, 24, 32), (2, 8, 12, 64), (2, 4, 6, 160), (2, 2, 3, 256)
    ]  # fmt: skip
    feats = model.project_text(text)
    assert feats.shape == (19, 16)
    again = model(images, text_features=feats, train=False)
    np.testing.assert_allclose(again["lcmsm"], out["lcmsm"], rtol=1e-6)
    only = model(images, heads=("decode",))
    assert set(only) == {"decode", "features"}
    with pytest.raises(ValueError, match="needs text_embeddings or text_features"):
        model(images, heads=("lcmsm",))
    with pytest.raises(ValueError, match=r"text embeddings must be \[num_classes, 12\]"):
        model.project_text(text[:, :5])
    with pytest.raises(ValueError, match="unknown heads"):
        model(images, text, heads=("aux",))


def test_segmentor_training_mode_randomness_is_explicit():
    model = models.Segmentor(tiny_config(), rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    text = np.ones((19, 12), np.float32)
    graphdef, state = nnx.split(model)

    def run(key):
        m = nnx.merge(graphdef, state)
        return m(images, text, train=True, rng=key)["decode"]

    a, b = run(jax.random.key(0)), run(jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, run(jax.random.key(1)))
    np.testing.assert_array_equal(run(None), run(None))


def _segmentor_loss_grads_and_stats(head_remat: bool):
    cfg = tiny_config()
    cfg.decode_head.fusion = cfg.lcmsm_head.fusion = "sep_aspp"
    cfg.decode_head.dilations = cfg.lcmsm_head.dilations = (1, 2, 3)
    cfg.head_remat = head_remat
    model = models.Segmentor(cfg, rngs=nnx.Rngs(0))
    assert model.decode_head.remat is head_remat and model.vlc_head.remat is head_remat
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    stats = stats.to_pure_dict()
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    text = jax.random.normal(jax.random.key(1), (19, 12))

    def loss(params):
        net = nnx.merge(graphdef, params, stats)
        out = net(images, text, train=True, rng=jax.random.key(2))
        value = jnp.mean(jnp.sin(out["decode"])) + jnp.mean(jnp.cos(out["lcmsm"]))
        return value, nnx.state(net, nnx.BatchStat).to_pure_dict()

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params.to_pure_dict())


def test_head_remat_gives_the_same_loss_gradients_and_batch_statistics():
    (value, stats), grads = _segmentor_loss_grads_and_stats(False)
    (value_r, stats_r), grads_r = _segmentor_loss_grads_and_stats(True)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(stats_r), jax.tree.leaves(stats), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # BN running stats updated
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_mit_b5_with_both_heads_at_512_shapes():
    """The paper's model, traced abstractly (no memory): logits at stride 4, 531-ch classifier."""
    cfg = base.model_config()
    model = nnx.eval_shape(lambda: models.Segmentor(cfg, rngs=nnx.Rngs(0)))
    assert model.vlc_head.conv_seg.kernel.shape == (1, 1, 512 + 19, 19)
    graphdef, state = nnx.split(model)

    def forward(state, images, text):
        return nnx.merge(graphdef, state)(images, text)

    out = jax.eval_shape(
        forward,
        state,
        jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32),
        jax.ShapeDtypeStruct((19, 1024), jnp.float32),
    )
    assert out["decode"].shape == (2, 128, 128, 19)
    assert out["lcmsm"].shape == (2, 128, 128, 19)
    assert [f.shape[1:] for f in out["features"]] == [
        (128, 128, 64), (64, 64, 128), (32, 32, 320), (16, 16, 512)
    ]  # fmt: skip


def test_bad_model_config_names_the_field():
    cfg = tiny_config()
    cfg.backbone = "mit_b9"
    with pytest.raises(ValueError, match="unknown MiT variant 'mit_b9'"):
        models.Segmentor(cfg, rngs=nnx.Rngs(0))
    cfg = tiny_config()
    cfg.decode_head.fusion = "psp"
    with pytest.raises(ValueError, match="fusion must be one of"):
        models.Segmentor(cfg, rngs=nnx.Rngs(0))
    cfg = tiny_config()
    cfg.dtype = "int8"
    with pytest.raises(ValueError, match="config.model.dtype"):
        models.Segmentor(cfg, rngs=nnx.Rngs(0))
