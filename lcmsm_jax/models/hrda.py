"""Multi-resolution (HRDA) model pieces (docs/method.md §8), NHWC, sizes (height, width).

One training sample is a high-resolution (HR) image `[B, H, W, 3]`. It is seen twice by the
same backbone and heads:
  * context: the whole image downscaled by 2 (`downscale_half`); its logits have stride 4
    with respect to the context input, i.e. stride 8 (`CONTEXT_STRIDE`) in HR pixels;
  * detail: a `detail_size` window of the HR image at the box (y0, x0) (`crop`); its logits
    have stride 4 (`OUTPUT_STRIDE`) and are placed at box / 4 into an HR canvas
    `[B, H/4, W/4, K]`.
A scale-attention head on the context features decides, per pixel and class, how much of
the detail logits enter the fused logits (`fuse_train`, `fuse_inference`). At inference the
detail logits cover the whole canvas: overlapping detail windows, averaged
(`lcmsm_jax/models/hrda_inference.py`).

Offsets are traced int32 (one box per batch, drawn by `draw_detail_box`), sizes are static,
so everything traces into one jitted step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lcmsm_jax.models import heads as heads_lib
from lcmsm_jax.models import layers
from lcmsm_jax.models.hrda_inference import OUTPUT_STRIDE, average_windows, window_batch
from lcmsm_jax.models.segmentor import HEAD_NAMES, Segmentor, _dtype

CONTEXT_STRIDE = 8  # context logits against the HR image (stride 4 of a x0.5 input)
BOX_DIVISIBLE = 8  # box offsets are multiples of this, so box/4 and box/8 are whole
DETAIL_WEIGHT = 0.1  # share of the detail cross-entropy in the loss
ATTENTION_EMBED_DIM = 256  # width of the scale-attention head (embedding = fusion)

# fold_in tags of the random streams of one multi-resolution forward.
_CONTEXT_STREAM, _DETAIL_STREAM, _ATTENTION_STREAM = 0, 1, 2


def is_enabled(model_config: ml_collections.ConfigDict) -> bool:
    """config.model.hrda.enabled (a config without the block is single-resolution)."""
    block = model_config.get("hrda")
    return block is not None and bool(block.enabled)


# --------------------------------------------------------------------------- geometry


def draw_detail_box(
    key: jax.Array,
    image_hw: Sequence[int],
    crop_hw: Sequence[int],
    divisible: int = BOX_DIVISIBLE,
) -> jax.Array:
    """Top-left corner of the detail crop, int32 `[2]` = (y0, x0), one box for the batch.

    Per axis: margin = image - crop, offset = randint(0, (margin + 1) // divisible) *
    divisible, the upper bound excluded (HRDA's `get_crop_bbox`). For 1024 / 512 / 8 the
    offsets are {0, 8, ..., 504}: the crop never reaches the margin itself
    (docs/method.md §8). An axis with no margin gets offset 0.
    """
    counts = []
    for size, crop_size in zip(image_hw, crop_hw, strict=True):
        margin = size - crop_size
        if margin < 0:
            raise ValueError(f"detail crop {tuple(crop_hw)} larger than image {tuple(image_hw)}")
        count = (margin + 1) // divisible
        if margin > 0 and count == 0:
            raise ValueError(
                f"image {tuple(image_hw)} and crop {tuple(crop_hw)} leave a margin under "
                f"{divisible - 1}: no offset is a multiple of {divisible}"
            )
        counts.append(max(count, 1))
    draws = jax.random.randint(key, (2,), 0, jnp.asarray(counts, jnp.int32), dtype=jnp.int32)
    return draws * divisible


def downscale_half(images: jax.Array) -> jax.Array:
    """`[B, H, W, C]` -> `[B, H/2, W/2, C]` by exact 2 x 2 averaging.

    Equals PyTorch's bilinear `scale_factor=0.5` without antialiasing (pixel centres fall
    midway between two source pixels); `jax.image.resize` would antialias.
    """
    b, h, w, c = images.shape
    if h % 2 or w % 2:
        raise ValueError(f"downscale_half needs an even height and width, got {h} x {w}")
    return images.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def crop(x: jax.Array, box: jax.Array | Sequence[int], size: Sequence[int]) -> jax.Array:
    """The `size` window at `box` = (y0, x0) of every sample: `[B, H, W, ...]` ->
    `[B, h, w, ...]` (images, labels `[B, H, W]`, weights). `box` may be traced."""
    y0, x0 = (jnp.asarray(v, jnp.int32) for v in (box[0], box[1]))
    zero = jnp.zeros((), jnp.int32)
    starts = (zero, y0, x0) + (zero,) * (x.ndim - 3)
    return jax.lax.dynamic_slice(x, starts, (x.shape[0], *size, *x.shape[3:]))


def box_mask(map_hw: Sequence[int], start: jax.Array, size: Sequence[int]) -> jax.Array:
    """`[1, h, w, 1]` float32: 1 on rows [y, y + size_h) and columns [x, x + size_w), `start`
    = (y, x) in map cells, 0 elsewhere."""
    rows = jnp.arange(map_hw[0])[:, None]
    cols = jnp.arange(map_hw[1])[None, :]
    inside = (rows >= start[0]) & (rows < start[0] + size[0])
    inside &= (cols >= start[1]) & (cols < start[1] + size[1])
    return inside.astype(jnp.float32)[None, :, :, None]


def insert(values: jax.Array, start: jax.Array, canvas_hw: Sequence[int]) -> jax.Array:
    """`values` `[B, h, w, K]` written at `start` = (y, x) into a zero canvas
    `[B, *canvas_hw, K]`."""
    b, _, _, k = values.shape
    canvas = jnp.zeros((b, *canvas_hw, k), values.dtype)
    zero = jnp.zeros((), jnp.int32)
    return jax.lax.dynamic_update_slice(canvas, values, (zero, start[0], start[1], zero))


def upsample2(x: jax.Array) -> jax.Array:
    """Bilinear x2 with half-pixel centres and clamped edges (torch align_corners=False)."""
    return layers.resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))


# --------------------------------------------------------------------------- fusion


def _fuse(attention: jax.Array, lr: jax.Array, hr_canvas: jax.Array) -> tuple[jax.Array, ...]:
    """F = Up(A) * H + Up((1 - A) * L): the product is formed before upsampling."""
    lr = (1.0 - attention) * lr
    return upsample2(attention) * hr_canvas + upsample2(lr), lr


def fuse_train(
    lr_logits: jax.Array, hr_logits: jax.Array, attention_logits: jax.Array, box: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training fusion with a detail box (HRDA `HRDAHead.forward`).

    F = Up(A * M) * Ins(H) + Up((1 - A * M) * L), A = sigmoid(attention logits), M the box
    at context-logit resolution (box / 8), Ins placing H at box / 4 of a zero canvas.

    Args:
      lr_logits: context logits `[B, h, w, K]` (h = H/8).
      hr_logits: detail logits `[B, d_h, d_w, K]` (d = detail size / 4).
      attention_logits: `[B, h, w, K]` (or 1 channel).
      box: (y0, x0) of the detail crop in HR pixels, multiples of 8.
    Returns:
      (fused `[B, 2h, 2w, K]`, attenuated context logits (1 - A * M) * L, hr_logits).
    """
    h, w = lr_logits.shape[1:3]
    d_h, d_w = hr_logits.shape[1:3]
    if d_h % 2 or d_w % 2:
        raise ValueError(f"detail logits {d_h} x {d_w}: the detail crop must be a multiple of 8")
    box = jnp.asarray(box, jnp.int32)
    mask = box_mask((h, w), box // CONTEXT_STRIDE, (d_h // 2, d_w // 2))
    attention = jax.nn.sigmoid(layers.at_least_f32(attention_logits)) * mask
    canvas = insert(hr_logits, box // OUTPUT_STRIDE, (2 * h, 2 * w))
    fused, lr = _fuse(attention, lr_logits, canvas)
    return fused, lr, hr_logits


def fuse_inference(
    lr_logits: jax.Array, hr_canvas: jax.Array, attention_logits: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inference fusion, attention everywhere: F = Up(A) * H + Up((1 - A) * L).

    `hr_canvas` `[B, 2h, 2w, K]` are the window-averaged detail logits. Returns (fused,
    (1 - A) * L, hr_canvas).
    """
    attention = jax.nn.sigmoid(layers.at_least_f32(attention_logits))
    fused, lr = _fuse(attention, lr_logits, hr_canvas)
    return fused, lr, hr_canvas


# --------------------------------------------------------------------------- losses


def multires_loss(
    ce_fused: jax.Array, ce_detail: jax.Array, detail_weight: float = DETAIL_WEIGHT
) -> jax.Array:
    """(1 - w) * CE(fused) + w * CE(detail), w = 0.1: the weights sum to 1 (HRDA scales
    the fused term down; it is not fused + 0.1 * detail)."""
    return (1.0 - detail_weight) * ce_fused + detail_weight * ce_detail


def multires_cross_entropy(
    cross_entropy: Callable[..., jax.Array],
    outputs: tuple[jax.Array, jax.Array, jax.Array],
    labels: jax.Array,
    weights: jax.Array | None,
    box: jax.Array,
    detail_size: Sequence[int],
    detail_weight: float = DETAIL_WEIGHT,
) -> jax.Array:
    """`multires_loss` of one head's `forward_train` outputs (fused, lr, hr).

    `cross_entropy(logits, labels, weights)` upsamples logits to the labels' size. The
    fused logits are scored against `labels` / `weights` `[B, H, W]`, the detail logits
    against their `detail_size` crops at `box`.
    """
    fused, _, detail = outputs
    detail_labels = crop(labels, box, detail_size)
    detail_weights = None if weights is None else crop(weights, box, detail_size)
    return multires_loss(
        cross_entropy(fused, labels, weights),
        cross_entropy(detail, detail_labels, detail_weights),
        detail_weight,
    )


# --------------------------------------------------------------------------- modules


class ScaleAttentionHead(heads_lib.DAFormerHead):
    """HRDA's scale-attention head: the DAFormer head with its fusion replaced by one
    1 x 1 conv + BN + ReLU, embedding and fusion width `embed_dim` (256), Dropout2d as the
    wrapped head, one output per class (`classwise`) or a single one. It returns logits;
    `fuse_train` / `fuse_inference` apply the sigmoid."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        embed_dim: int = ATTENTION_EMBED_DIM,
        dropout: float = 0.1,
        classwise: bool = True,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        super().__init__(
            in_channels,
            num_classes if classwise else 1,
            embed_dim=embed_dim,
            channels=embed_dim,
            fusion="conv",
            dropout=dropout,
            rngs=rngs,
            dtype=dtype,
        )


class MultiResSegmentor(Segmentor):
    """A `Segmentor` plus one `ScaleAttentionHead` per wrapped head (`attention_head.<name>`).

    The segmentor's parameters keep their names, so `__call__` is the single-resolution
    forward and single-resolution checkpoints load into it; the attention heads' names
    contain `head`, so they join the heads' parameter group.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        *,
        rngs: nnx.Rngs,
        detail_size: Sequence[int] = (512, 512),
        attention_heads: Sequence[str] = HEAD_NAMES,
        attention_embed_dim: int = ATTENTION_EMBED_DIM,
    ):
        if any(s % BOX_DIVISIBLE for s in detail_size):
            raise ValueError(f"detail_size {tuple(detail_size)}: sides must be multiples of 8")
        unknown = set(attention_heads) - set(HEAD_NAMES)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; expected a subset of {HEAD_NAMES}")
        super().__init__(config, rngs=rngs)  # drawn first: the segmentor's values are unchanged
        dropouts = {"decode": config.decode_head.dropout, "lcmsm": config.lcmsm_head.dropout}
        self.attention_head = nnx.Dict(
            {
                name: ScaleAttentionHead(
                    self.backbone.embed_dims,
                    config.num_classes,
                    embed_dim=attention_embed_dim,
                    dropout=dropouts[name],
                    rngs=rngs,
                    dtype=_dtype(config.dtype),
                )
                for name in attention_heads
            }
        )
        self.detail_size = tuple(int(s) for s in detail_size)

    def _passes(self, images_hr, cut_detail, heads, text_embeddings, text_features, train, rng):
        """The context pass, the detail pass on `cut_detail(images_hr)` and the attention
        heads: (context outputs, detail outputs, {head: attention logits})."""
        h, w = images_hr.shape[1:3]
        if h % BOX_DIVISIBLE or w % BOX_DIVISIBLE:
            raise ValueError(f"HR images must have sides that are multiples of 8, got {h} x {w}")
        if self.detail_size[0] > h or self.detail_size[1] > w:
            raise ValueError(f"detail size {self.detail_size} larger than the image {h} x {w}")
        missing = [name for name in heads if name not in self.attention_head]
        if missing:
            raise ValueError(f"no scale-attention head for {missing}")
        if "lcmsm" in heads and text_features is None:
            if text_embeddings is None:
                raise ValueError("the lcmsm head needs text_embeddings or text_features")
            text_features = self.project_text(text_embeddings)  # once for both scales
        keys = [None] * 3 if rng is None else [jax.random.fold_in(rng, i) for i in range(3)]
        common = {"text_features": text_features, "train": train, "heads": heads}
        context = self(downscale_half(images_hr), rng=keys[_CONTEXT_STREAM], **common)
        detail = self(cut_detail(images_hr), rng=keys[_DETAIL_STREAM], **common)
        key = keys[_ATTENTION_STREAM]
        attention = {
            name: self.attention_head[name](
                context["features"],
                train=train,
                rng=None if key is None else jax.random.fold_in(key, i),
            )
            for i, name in enumerate(heads)
        }
        return context, detail, attention

    def forward_train(
        self,
        images_hr: jax.Array,
        box: jax.Array,
        text_embeddings: jax.Array | None = None,
        *,
        text_features: jax.Array | None = None,
        heads: Sequence[str] = ("decode",),
        train: bool = True,
        rng: jax.Array | None = None,
    ) -> dict:
        """Context pass on the downscaled image, detail pass on its crop at `box`.

        Args:
          images_hr: `[B, H, W, 3]` normalised HR images, H and W multiples of 8.
          box: int32 `[2]` (y0, x0) from `draw_detail_box`, shared by the batch.
          text_embeddings / text_features: as `Segmentor.__call__`, for the lcmsm head.
          heads: which wrapped heads to run.
          train: BatchNorm batch statistics (the context and detail passes and the
            attention head each normalise over their own batch of B).
          rng: drop path and Dropout2d; None turns both off.
        Returns:
          {head: (fused `[B, H/4, W/4, K]`, attenuated context logits `[B, H/8, W/8, K]`,
          detail logits `[B, h/4, w/4, K]`), "features": the four context backbone maps}.
        """
        heads = tuple(heads)
        cut = functools.partial(crop, box=box, size=self.detail_size)
        passes = (heads, text_embeddings, text_features, train, rng)
        context, detail, attention = self._passes(images_hr, cut, *passes)
        out = {"features": context["features"]}
        for name in heads:
            out[name] = fuse_train(context[name], detail[name], attention[name], box)
        return out

    def forward_inference(
        self,
        images_hr: jax.Array,
        text_embeddings: jax.Array | None = None,
        *,
        windows: Sequence[tuple[int, int]],
        text_features: jax.Array | None = None,
        heads: Sequence[str] = ("decode",),
        train: bool = False,
        rng: jax.Array | None = None,
    ) -> dict:
        """Context pass on the whole downscaled image, detail pass over sliding windows.

        Args:
          images_hr: `[B, H, W, 3]`, H and W multiples of 8.
          windows: top-left corners of the `detail_size` windows, e.g.
            `lcmsm_jax.inference.windows((H, W), detail_size, detail_size // 2)[0]`
            (HRDA: stride half the window). All windows run as one batch `[N * B]`.
          train: BatchNorm batch statistics (the teacher's pseudo-labels); the windows
            then share one batch of N * B.
          Other arguments as `forward_train`.
        Returns:
          {head: (fused `[B, H/4, W/4, K]`, attenuated context logits, averaged detail
          canvas `[B, H/4, W/4, K]`), "features": the four context backbone maps}.
        """
        heads = tuple(heads)
        cut = functools.partial(window_batch, windows=windows, size=self.detail_size)
        passes = (heads, text_embeddings, text_features, train, rng)
        context, detail, attention = self._passes(images_hr, cut, *passes)
        out = {"features": context["features"]}
        for name in heads:
            canvas = average_windows(detail[name], windows, images_hr.shape[1:3])
            out[name] = fuse_inference(context[name], canvas, attention[name])
        return out
