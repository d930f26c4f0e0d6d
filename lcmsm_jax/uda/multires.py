"""The passes of the training step, single- or multi-resolution (docs/method.md §3, §8.6).

`make_passes(config.model)` returns the three network calls the step makes, so that
`lcmsm_jax/uda/step.py` is written once for both models:

* `student(model, images, labels, weights, head=, text=, rng=, box=)` -> (loss, logits,
  context features): one student pass and its cross-entropy;
* `teacher(model, images, head=, text=)` -> logits for the pseudo-labels;
* `imnet_input(images)`: what the frozen ImageNet backbone sees for the feature distance.

Single resolution (config.model.hrda.enabled False): the plain `Segmentor` call, CE of the
head's logits, the ImageNet backbone on the crop itself (§3); `box` is ignored.

Multi-resolution (HRDA): `forward_train` with the pass's own detail box and
(1 - w) CE(fused) + w CE(detail on the cropped labels and weights); the teacher is
`forward_inference` with detail windows of detail_size at stride detail_size / 2; the
ImageNet backbone sees the context (x0.5) image, like the student's context features.
Boxes are drawn by `sample_boxes`, one per student pass, from the step's draws key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import ml_collections

from lcmsm_jax import inference
from lcmsm_jax.models import hrda
from lcmsm_jax.uda import losses

# One detail box per student pass (HRDA draws a new box in every forward_train call).
BOX_NAMES = (
    "source_box", "masked_source_box", "mix_box", "masked_mix_box", "masked_target_box",
)  # fmt: skip
# fold_in tag of the boxes on the draws key (`step.sample_draws` splits that key into 8).
_BOXES_TAG = 8


class Passes(NamedTuple):
    student: Callable[..., tuple[jax.Array, jax.Array, Sequence[jax.Array]]]
    teacher: Callable[..., jax.Array]
    imnet_input: Callable[[jax.Array], jax.Array]


def sample_boxes(key: jax.Array, image_hw: Sequence[int], detail_size: Sequence[int]) -> dict:
    """{name: int32 [2] (y0, x0)} for every name of `BOX_NAMES`, HRDA's rule
    (`hrda.draw_detail_box`), from the step's draws key."""
    keys = jax.random.split(jax.random.fold_in(key, _BOXES_TAG), len(BOX_NAMES))
    return {
        name: hrda.draw_detail_box(k, image_hw, detail_size)
        for name, k in zip(BOX_NAMES, keys, strict=True)
    }


def make_passes(model_config: ml_collections.ConfigDict) -> Passes:
    """The student, teacher and ImageNet-input functions of the model of `model_config`."""
    if not hrda.is_enabled(model_config):
        return Passes(_single_student, _single_teacher, lambda images: images)
    detail_size = tuple(model_config.hrda.detail_size)
    detail_weight = float(model_config.hrda.detail_loss_weight)

    def student(model, images, labels, weights, *, head, text, rng, box):
        out = model.forward_train(
            images, box, text_features=text, heads=(head,), train=True, rng=rng
        )
        loss = hrda.multires_cross_entropy(
            losses.cross_entropy, out[head], labels, weights, box, detail_size, detail_weight
        )
        return loss, out[head][0], out["features"]

    def teacher(model, images, *, head, text):
        # Detail windows at stride half the window (HRDA's slide over the HR crop).
        windows = inference.detail_windows(images.shape[1:3], detail_size)
        out = model.forward_inference(
            images, windows=windows, text_features=text, heads=(head,), train=True, rng=None
        )
        return out[head][0]

    return Passes(student, teacher, hrda.downscale_half)


def _single_student(model, images, labels, weights, *, head, text, rng, box):
    """`Segmentor` pass (§3): (CE of the head's logits, logits, backbone features)."""
    del box
    out = model(images, text_features=text, train=True, rng=rng, heads=(head,))
    return losses.cross_entropy(out[head], labels, weights), out[head], out["features"]


def _single_teacher(model, images, *, head, text):
    """The teacher's logits on the clean target: BN batch statistics, no dropout (§7.13)."""
    return model(images, text_features=text, train=True, rng=None, heads=(head,))[head]
