"""The LC-MSM training step (docs/method.md §3) as one pure loss function and one update.

`loss_fn(params, batch, rest, rng, draws=None) -> (total_loss, aux)` computes every term of
the step; `train_step(state, batch, rng) -> (state, metrics)` differentiates it, applies the
optimiser and the EMA update. Every random draw of the method (block masks, ClassMix
choices, jitter/blur decisions and parameters) is in `draws`, which `sample_draws` produces
from the key and which a caller may supply instead; dropout and drop path use keys folded
from `rng`. The ablation ladder (source-only, DACS, DAFormer, MIC, LC-MSM) is `config.uda`.

State (a plain dict of pytrees):
  step                  int32 scalar, iterations done
  params, batch_stats   student (includes the text projection `text_embed_net`)
  ema_params            teacher parameters (EMA of the student's)
  ema_batch_stats       teacher BatchNorm buffers (updated, never used: its BN runs in
                        training mode, docs/method.md §7.13)
  opt_state             optax state
  imnet_params          frozen ImageNet backbone for the feature distance
  text_embeddings       frozen CLIP class embeddings [K, D_text]
Batch: source_image [B, H, W, 3], source_label [B, H, W], target_image [B, H, W, 3]
(+ target_label [B, H, W] for the target-supervised oracle, + target_valid [B, H, W] where
the data pipeline sets pseudo-label margins). With config.model.hrda.enabled every network
call is the multi-resolution one (`lcmsm_jax/uda/multires.py`, docs/method.md §8.6).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from lcmsm_jax.data.transforms import MEAN_RGB, STD_RGB
from lcmsm_jax.models import hrda
from lcmsm_jax.uda import augment, classmix, ema, losses, masking, multires

# The input pipeline's normalisation; the strong transform jitters the de-normalised image.
NORMALIZATION = (tuple(MEAN_RGB.tolist()), tuple(STD_RGB.tolist()))

# Intermediates worth looking at (aux keys), returned by the step when asked for.
IMAGE_KEYS = (
    "pseudo_label", "pseudo_confidence", "classmix_mask", "mixed_image", "mixed_label",
    "mixed_weight", "masked_source_image", "masked_mix_image", "masked_target_image",
    "mix_prediction",
)  # fmt: skip

# fold_in tags for the independent random streams of one step.
_DRAWS, _SOURCE, _MASKED_SOURCE, _MIX, _MASKED_MIX, _MASKED_TARGET = range(6)


def init_state(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    text_embeddings: jax.Array,
    *,
    imnet_params=None,
) -> dict:
    """Training state at t = 0 from a (possibly converted or pretrained) Segmentor.

    The teacher starts as a copy of the student; the frozen ImageNet backbone defaults to
    the student's backbone (the reference loads both from the same ImageNet checkpoint).
    """
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = params.to_pure_dict(), batch_stats.to_pure_dict()
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "batch_stats": batch_stats,
        "ema_params": copy(params),
        "ema_batch_stats": copy(batch_stats),
        "opt_state": tx.init(params),
        "imnet_params": copy(params["backbone"]) if imnet_params is None else imnet_params,
        "text_embeddings": jnp.asarray(text_embeddings, jnp.float32),
    }


def sample_draws(
    key: jax.Array,
    source_label: jax.Array,
    config: ml_collections.ConfigDict,
    num_classes: int,
    *,
    detail_size: Sequence[int] | None = None,
) -> dict:
    """All random decisions of one step, from one key.

    Args:
      source_label: [B, H, W] source labels (ClassMix picks among their classes).
      config: `config.uda`.
      detail_size: the multi-resolution model's detail crop; adds one detail box per
        student pass (`multires.BOX_NAMES`). None (single resolution) adds nothing.
    Returns:
      {"mix_aug", "masked_source_aug", "masked_mix_aug", "masked_target_aug": strong-
       transform draws; "masked_source_mask", "masked_mix_mask", "masked_target_mask":
       [B, H, W] block masks; "classmix_choice": [B, K + 1] chosen label values;
       with detail_size "source_box", ...: int32 [2] (y0, x0)}.
    """
    batch, height, width = source_label.shape
    boxes = {} if detail_size is None else multires.sample_boxes(key, (height, width), detail_size)
    keys = jax.random.split(key, 8)
    strong = dict(
        color_jitter_apply_probability=config.color_jitter_apply_probability,
        blur_apply_probability=0.5 if config.blur else 0.0,
        strength=config.color_jitter_strength,
    )
    block = dict(block_size=config.mask_block_size, mask_ratio=config.mask_ratio)
    return {
        # ClassMix: one augmentation call per image (own op order and blur sigma).
        "mix_aug": augment.sample_strong_draws(
            keys[0], batch, share_order_and_sigma=False, **strong
        ),
        # Masking module: one call for the whole batch (shared op order and sigma).
        "masked_source_aug": augment.sample_strong_draws(
            keys[1], batch, share_order_and_sigma=True, **strong
        ),
        "masked_mix_aug": augment.sample_strong_draws(
            keys[2], batch, share_order_and_sigma=True, **strong
        ),
        "masked_target_aug": augment.sample_strong_draws(
            keys[3], batch, share_order_and_sigma=True, **strong
        ),
        "masked_source_mask": masking.sample_block_mask(keys[4], batch, height, width, **block),
        "masked_mix_mask": masking.sample_block_mask(keys[5], batch, height, width, **block),
        "masked_target_mask": masking.sample_block_mask(keys[6], batch, height, width, **block),
        "classmix_choice": classmix.sample_classmix_choice(keys[7], source_label, num_classes),
        **boxes,
    }


def _masked(images: jax.Array, aug_draws: dict, mask: jax.Array) -> jax.Array:
    """BlockMask(StrongAug(images)): [B, H, W, 3] -> [B, H, W, 3]."""
    strong = augment.strong_transform(images, aug_draws, *NORMALIZATION)
    return masking.apply_block_mask(strong, mask)


class _Student:
    """Runs the student's passes of one step.

    Joint (`per_pass=False`): every pass calls one merged student, so the step's single
    `jax.value_and_grad` of the total differentiates all of them together, and every
    pass's activations stay alive until that one backward pass.
    Per pass (`per_pass=True`): each pass is differentiated on its own, right after its
    forward (as the reference calls backward() once per loss term), its gradients summed
    in pass order, and the next pass's input image waits for them (`_after`): only one
    pass's activations are alive at a time. Same losses, gradients to float rounding.
    BatchNorm statistics pass from one pass to the next in both.
    """

    def __init__(self, graphdef, params, batch_stats, text_embeddings, *, per_pass: bool):
        self.graphdef, self.params, self.per_pass = graphdef, params, per_pass
        self.text_embeddings = jax.lax.stop_gradient(text_embeddings)  # frozen CLIP vectors
        self.grads = None
        self.module = nnx.merge(graphdef, params, batch_stats)
        # The projected text features: the joint student's (differentiated through every
        # pass), in per-pass mode a value for the teacher only (each pass projects its own).
        self.text = self.module.project_text(self.text_embeddings)

    def run(self, fn: Callable, image: jax.Array) -> tuple[jax.Array, object]:
        """`fn(student, text, image) -> (loss, extras)` on the student, `image` being the
        pass's input [B, H, W, 3]; returns (loss, extras)."""
        if not self.per_pass:
            return fn(self.module, self.text, image)
        if self.grads is not None:
            image = _after(image, self.grads)
        batch_stats = nnx.state(self.module, nnx.BatchStat).to_pure_dict()

        def pass_loss(params):
            net = nnx.merge(self.graphdef, params, batch_stats)
            loss, extras = fn(net, net.project_text(self.text_embeddings), image)
            return loss, (extras, nnx.state(net, nnx.BatchStat).to_pure_dict())

        (loss, (extras, batch_stats)), grads = jax.value_and_grad(pass_loss, has_aux=True)(
            self.params
        )
        self.grads = grads if self.grads is None else jax.tree.map(jnp.add, self.grads, grads)
        self.module = nnx.merge(self.graphdef, self.params, batch_stats)
        return loss, extras

    def batch_stats(self) -> dict:
        return nnx.state(self.module, nnx.BatchStat).to_pure_dict()


def _after(image: jax.Array, grads) -> jax.Array:
    """`image`, unchanged, as a value that depends on every leaf of `grads`: everything the
    next pass computes from its input waits for the previous passes' whole backward.

    An optimisation barrier would say the same, but XLA:CPU drops barriers before it
    schedules, and then ran every pass's forward before any backward (all four passes'
    activations alive at once: the paper step's plan was 24 GB instead of 9). The zero
    added here comes from one element of each gradient and is exact for any value.
    """
    leaves = jax.tree.leaves(grads)
    firsts = jnp.stack([losses.at_least_f32(leaf.reshape(-1)[0]) for leaf in leaves])
    # x - x is 0 for finite x, and XLA cannot fold it away (it is NaN for inf and NaN).
    zero = jnp.sum(jnp.where(jnp.isfinite(firsts), firsts - firsts, 0.0))
    return image + zero.astype(image.dtype)


def make_loss_fn(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    imnet_graphdef: nnx.GraphDef,
    *,
    per_pass: bool = False,
) -> Callable:
    """Build `loss_fn(params, batch, rest, rng, draws=None) -> (total, aux)`.

    Args:
      config: the full experiment config (`uda`, `model` are read).
      graphdef: `nnx.split(segmentor, nnx.Param, nnx.BatchStat)[0]`.
      imnet_graphdef: `nnx.split(segmentor.backbone)[0]` (the frozen ImageNet backbone).
    `rest` holds the non-differentiated state: batch_stats, ema_params, ema_batch_stats,
    imnet_params, text_embeddings. `aux` holds every loss term ("losses"), the teacher's
    pseudo-labels, confidence and quality weight, the ClassMix masks, the mixed image,
    label and weights, the masked inputs, the draws used and the updated BatchNorm
    statistics of student ("batch_stats") and teacher ("ema_batch_stats").

    `per_pass=True` differentiates each student pass as soon as it has run (`_Student`):
    `aux["grads"]` then holds the gradient of the total, and the returned total is a value
    only (do not differentiate it).
    """
    uda = config.uda
    num_classes = config.model.num_classes
    passes = multires.make_passes(config.model)
    detail_size = tuple(config.model.hrda.detail_size) if hrda.is_enabled(config.model) else None
    if uda.pseudo_label_head not in ("lcmsm", "decode"):
        raise ValueError(
            "config.uda.pseudo_label_head must be 'lcmsm' or 'decode', "
            f"got {uda.pseudo_label_head!r}"
        )

    def loss_fn(params, batch, rest, rng, draws=None):
        if draws is None:
            draws = sample_draws(
                jax.random.fold_in(rng, _DRAWS),
                batch["source_label"],
                uda,
                num_classes,
                detail_size=detail_size,
            )
        key = lambda tag: jax.random.fold_in(rng, tag)  # noqa: E731
        # The CLIP embeddings are frozen; only the projection learns.
        student = _Student(graphdef, params, rest["batch_stats"], rest["text_embeddings"],
                           per_pass=per_pass)  # fmt: skip
        source, label = batch["source_image"], batch["source_label"]
        terms, aux = {}, {"draws": draws}
        with_distance = uda.enabled and uda.feature_distance_weight > 0
        if with_distance:  # the frozen ImageNet backbone's features (no gradient)
            imnet = nnx.merge(imnet_graphdef, rest["imnet_params"])
            imnet_features = jax.lax.stop_gradient(imnet(passes.imnet_input(source))[-1])

        # Step 3: source CE through the DAFormer head, and (step 5) the ImageNet feature
        # distance on thing classes of the same pass's backbone features.
        def source_pass(net, text, source):
            ce, _, features = passes.student(
                net, source, label, None, head="decode", text=text, rng=key(_SOURCE),
                box=draws.get("source_box"),
            )  # fmt: skip
            if not with_distance:
                return ce, {"source": ce}
            distance = uda.feature_distance_weight * losses.feature_distance(
                features[-1],
                imnet_features,
                label,
                thing_classes=tuple(uda.feature_distance_classes),
                min_ratio=uda.feature_distance_min_ratio,
                num_classes=num_classes,
            )
            return ce + distance, {"source": ce, "feature_distance": distance}

        source_terms = student.run(source_pass, source)[1]
        terms["source"] = source_terms["source"]

        if uda.enabled:
            # Step 4: masked, re-augmented source through the LC-MSM head.
            if uda.masked_source:
                masked = _masked(source, draws["masked_source_aug"], draws["masked_source_mask"])
                terms["masked_source"] = student.run(
                    lambda net, text, masked: _weighted(uda.mask_weight, passes.student(
                        net, masked, label, None, head="lcmsm", text=text,
                        rng=key(_MASKED_SOURCE), box=draws.get("masked_source_box"),
                    )), masked,
                )[0]  # fmt: skip
                aux["masked_source_image"] = masked
            if with_distance:
                terms["feature_distance"] = source_terms["feature_distance"]
            _adaptation_terms(
                uda, passes, student, graphdef, rest, batch, draws, key, terms, aux, num_classes
            )

        total = sum(terms.values())
        aux["losses"] = terms
        aux["batch_stats"] = student.batch_stats()
        aux.setdefault("ema_batch_stats", rest["ema_batch_stats"])
        if per_pass:
            aux["grads"] = student.grads
        return total, aux

    return loss_fn


def _weighted(weight: float, result: tuple) -> tuple[jax.Array, None]:
    """`passes.student`'s (loss, logits, features) as `_Student.run` wants it, the loss
    weighted inside the differentiated function: (weight * loss, None)."""
    return weight * result[0], None


def _adaptation_terms(uda, passes, student, graphdef, rest, batch, draws, key, terms, aux, k):
    """Steps 6-9 (and MIC's masked target): teacher pseudo-labels, ClassMix, mixed losses."""
    text = student.text
    source, label, target = batch["source_image"], batch["source_label"], batch["target_image"]
    size = label.shape[1:]
    # Step 6: the teacher on the clean target. BN in training mode, no dropout/drop path,
    # the student's projected text features under stop-gradient.
    teacher = nnx.merge(graphdef, rest["ema_params"], rest["ema_batch_stats"])
    head = uda.pseudo_label_head
    teacher_logits = passes.teacher(teacher, target, head=head, text=jax.lax.stop_gradient(text))
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    pseudo, pseudo_weight, quality = losses.pseudo_labels(
        teacher_logits,
        size,
        threshold=uda.pseudo_threshold,
        ignore_top=uda.ignore_top,
        ignore_bottom=uda.ignore_bottom,
    )
    if "target_valid" in batch:  # pseudo-label margins from the data pipeline (HRDA)
        pseudo_weight = pseudo_weight * batch["target_valid"].astype(pseudo_weight.dtype)
    confidence = jnp.max(
        jax.nn.softmax(losses.at_least_f32(losses.upsample_logits(teacher_logits, size)), -1), -1
    )
    if uda.target_supervised:
        pseudo = batch["target_label"]
        pseudo_weight = jnp.ones(pseudo.shape, jnp.float32)
    aux.update(
        pseudo_label=pseudo,
        pseudo_confidence=confidence,
        pseudo_weight=pseudo_weight,
        quality=quality,
        ema_batch_stats=nnx.state(teacher, nnx.BatchStat).to_pure_dict(),
    )

    # Step 7: ClassMix with the source's batch-level classes, then the strong transform.
    mix_mask = classmix.classmix_mask(label, draws["classmix_choice"], k)
    mixed = classmix.mix(mix_mask, source, target)
    mixed_image = augment.strong_transform(mixed, draws["mix_aug"], *NORMALIZATION)
    mixed_label = classmix.mix(mix_mask, label, pseudo)
    mixed_weight = classmix.mix(mix_mask, jnp.ones_like(pseudo_weight), pseudo_weight)
    aux.update(
        classmix_mask=mix_mask,
        mixed_image=mixed_image,
        mixed_label=mixed_label,
        mixed_weight=mixed_weight,
    )

    # Step 8: mixed CE through the DAFormer head.
    def mix_pass(net, text, mixed_image):
        loss, logits, _ = passes.student(
            net, mixed_image, mixed_label, mixed_weight, head="decode", text=text,
            rng=key(_MIX), box=draws.get("mix_box"),
        )  # fmt: skip
        return loss, jnp.argmax(losses.upsample_logits(logits, size), axis=-1)

    terms["mix"], aux["mix_prediction"] = student.run(mix_pass, mixed_image)

    # Step 9: masked, re-augmented mixed image through the LC-MSM head, same labels/weights.
    if uda.masked_mix:
        masked = _masked(mixed_image, draws["masked_mix_aug"], draws["masked_mix_mask"])
        terms["masked_mix"] = student.run(
            lambda net, text, masked: _weighted(uda.mask_weight, passes.student(
                net, masked, mixed_label, mixed_weight, head="lcmsm", text=text,
                rng=key(_MASKED_MIX), box=draws.get("masked_mix_box"),
            )), masked,
        )[0]  # fmt: skip
        aux["masked_mix_image"] = masked

    # MIC: masked, augmented target through the DAFormer head with the pseudo-labels.
    if uda.masked_target:
        masked = _masked(target, draws["masked_target_aug"], draws["masked_target_mask"])
        terms["masked_target"] = student.run(
            lambda net, text, masked: _weighted(uda.mask_weight, passes.student(
                net, masked, pseudo, pseudo_weight, head="decode", text=text,
                rng=key(_MASKED_TARGET), box=draws.get("masked_target_box"),
            )), masked,
        )[0]  # fmt: skip
        aux["masked_target_image"] = masked


def make_train_step(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    imnet_graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: Callable[[jax.Array], jax.Array],
    *,
    with_images: bool = False,
) -> Callable:
    """Build `train_step(state, batch, rng) -> (state, metrics)` (pure; jit it outside).

    `with_images` adds metrics["images"]: the step's intermediate pictures (pseudo-labels,
    ClassMix mask, mixed and masked inputs, the student's prediction on the mixed image).

    Order as the reference: the teacher is first updated from the current student
    (alpha_0 = 0 copies it), then all terms are computed and summed (one gradient equals
    the reference's per-term backward passes), then one AdamW step.
    """
    per_pass = config.train.get("backward", "joint") == "per_pass"
    loss_fn = make_loss_fn(config, graphdef, imnet_graphdef, per_pass=per_pass)
    if per_pass:  # the passes' gradients are taken inside, one pass at a time

        def grad_fn(params, batch, rest, key):
            total, aux = loss_fn(params, batch, rest, key)
            return (total, aux), aux.pop("grads")

    else:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, batch, rng):
        step = state["step"]
        key = jax.random.fold_in(rng, step)
        ema_params = ema.ema_update(state["ema_params"], state["params"], step, config.uda.alpha)
        rest = {
            "batch_stats": state["batch_stats"],
            "ema_params": ema_params,
            "ema_batch_stats": state["ema_batch_stats"],
            "imnet_params": state["imnet_params"],
            "text_embeddings": state["text_embeddings"],
        }
        (total, aux), grads = grad_fn(state["params"], batch, rest, key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            **state,
            "step": step + 1,
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": aux["batch_stats"],
            "ema_params": ema_params,
            "ema_batch_stats": aux["ema_batch_stats"],
            "opt_state": opt_state,
        }
        metrics = {f"loss/{name}": value for name, value in aux["losses"].items()}
        metrics["loss/total"] = total
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["lr"] = schedule(step)
        if "quality" in aux:
            metrics["pseudo_label_quality"] = aux["quality"]
        if with_images:
            metrics["images"] = {k: aux[k] for k in IMAGE_KEYS if k in aux}
        return new_state, metrics

    return train_step
