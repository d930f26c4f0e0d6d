"""Plain-PyTorch transcription of HRDA's multi-resolution forward and loss weighting.

Source: github.com/lhoyer/HRDA (the same code is in github.com/lhoyer/MIC under `seg/`):
`mmseg/models/segmentors/hrda_encoder_decoder.py` and
`mmseg/models/decode_heads/hrda_head.py`. Each function or class names what it mirrors.
Left out: debug outputs, the DLV2 head, `blur_hr_crop`, `feature_scale='all'`, the
auxiliary head. The backbone is a callable supplied by the caller (NCHW images -> list of
four NCHW maps); the single-scale heads are the transcriptions in `official_heads.py`.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import torch
import torch.nn.functional as F
from official_heads import resize
from torch import nn


def get_crop_bbox(img_h, img_w, crop_size, divisible=1, rng=np.random):
    """Mirrors `hrda_encoder_decoder.py: get_crop_bbox` (numpy's global RNG there)."""
    assert crop_size[0] > 0 and crop_size[1] > 0
    if img_h == crop_size[-2] and img_w == crop_size[-1]:
        return (0, img_h, 0, img_w)
    margin_h = max(img_h - crop_size[-2], 0)
    margin_w = max(img_w - crop_size[-1], 0)
    offset_h = rng.randint(0, (margin_h + 1) // divisible) * divisible
    offset_w = rng.randint(0, (margin_w + 1) // divisible) * divisible
    crop_y1, crop_y2 = offset_h, offset_h + crop_size[0]
    crop_x1, crop_x2 = offset_w, offset_w + crop_size[1]
    return crop_y1, crop_y2, crop_x1, crop_x2


def crop(img, crop_bbox):
    """Mirrors `hrda_encoder_decoder.py: crop`."""
    crop_y1, crop_y2, crop_x1, crop_x2 = crop_bbox
    if img.dim() == 4:
        img = img[:, :, crop_y1:crop_y2, crop_x1:crop_x2]
    elif img.dim() == 3:
        img = img[:, crop_y1:crop_y2, crop_x1:crop_x2]
    elif img.dim() == 2:
        img = img[crop_y1:crop_y2, crop_x1:crop_x2]
    else:
        raise NotImplementedError(img.dim())
    return img


def scale_box(box, scale):
    """Mirrors `hrda_head.py: scale_box`."""
    y1, y2, x1, x2 = box
    return int(y1 / scale), int(y2 / scale), int(x1 / scale), int(x2 / scale)


def attention_head_cfg(head_cfg: dict, attention_embed_dim=256, attention_classwise=True):
    """The `attn_cfg` of `hrda_head.py: HRDAHead.__init__` for `single_scale_head=
    'DAFormerHead'`: a copy of the head's config with width `attention_embed_dim` and an
    ASPP fusion replaced by one 1x1 ConvModule (BN, ReLU); one output if not classwise."""
    attn_cfg = deepcopy(head_cfg)
    attn_cfg["channels"] = attention_embed_dim
    attn_cfg["decoder_params"]["embed_dims"] = attention_embed_dim
    if attn_cfg["decoder_params"]["fusion_cfg"]["type"] == "aspp":
        attn_cfg["decoder_params"]["fusion_cfg"] = dict(
            type="conv",
            kernel_size=1,
            act_cfg=dict(type="ReLU"),
            norm_cfg=attn_cfg["decoder_params"]["fusion_cfg"]["norm_cfg"],
        )
    attn_cfg["type"] = "DAFormerHead"
    if not attention_classwise:
        attn_cfg["num_classes"] = 1
    return attn_cfg


class TextConditioned(nn.Module):
    """Glue, not HRDA code: an LC-MSM head called as `head(features)` with fixed text."""

    def __init__(self, head, text_features):
        super().__init__()
        self.head = head
        self.text_features = text_features

    def forward(self, features):
        return self.head(features, self.text_features)


class HRDAHead(nn.Module):
    """Mirrors `hrda_head.py: HRDAHead` for a stride-4 single-scale head (`self.os = 4`):
    `set_hr_crop_box`, `hr_crop_slice`, `resize`, `decode_hr`, `get_scale_attention`,
    `forward`, `reset_crop`, and the weighting in `losses` (the base loss is
    `base_decode_losses`). `head` and `scale_attention` are built by the caller."""

    def __init__(
        self,
        head,
        scale_attention,
        num_classes,
        scales=(1, 0.5),
        hr_loss_weight=0.1,
        lr_loss_weight=0,
        enable_hr_crop=True,
        fixed_attention=None,
    ):
        super().__init__()
        self.head = head
        self.scale_attention = scale_attention
        self.fixed_attention = fixed_attention
        self.num_classes = num_classes
        self.os = 4
        self.align_corners = False
        self.scales = sorted(scales)  # HRDAEncoderDecoder.__init__ sorts them
        self.hr_loss_weight = hr_loss_weight
        self.lr_loss_weight = lr_loss_weight
        self.enable_hr_crop = enable_hr_crop
        self.hr_crop_box = None

    def set_hr_crop_box(self, boxes):
        self.hr_crop_box = boxes

    def hr_crop_slice(self, scale):
        crop_y1, crop_y2, crop_x1, crop_x2 = scale_box(self.hr_crop_box, scale)
        return slice(crop_y1, crop_y2), slice(crop_x1, crop_x2)

    def resize(self, input, scale_factor):
        return resize(
            input=input,
            scale_factor=scale_factor,
            mode="bilinear",
            align_corners=self.align_corners,
        )

    def decode_hr(self, inp, bs):
        if isinstance(inp, dict) and "boxes" in inp.keys():
            features = inp["features"]  # level, crop * bs, c, h, w
            boxes = inp["boxes"]
            dev = features[0][0].device
            h_img, w_img = 0, 0
            for i in range(len(boxes)):
                boxes[i] = scale_box(boxes[i], self.os)
                y1, y2, x1, x2 = boxes[i]
                if h_img < y2:
                    h_img = y2
                if w_img < x2:
                    w_img = x2
            preds = torch.zeros((bs, self.num_classes, h_img, w_img), device=dev)
            count_mat = torch.zeros((bs, 1, h_img, w_img), device=dev)

            crop_seg_logits = self.head(features)
            for i in range(len(boxes)):
                y1, y2, x1, x2 = boxes[i]
                crop_seg_logit = crop_seg_logits[i * bs : (i + 1) * bs]
                preds += F.pad(
                    crop_seg_logit,
                    (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)),
                )
                count_mat[:, :, y1:y2, x1:x2] += 1

            assert (count_mat == 0).sum() == 0
            preds = preds / count_mat
            return preds
        else:
            return self.head(inp)

    def get_scale_attention(self, inp):
        if self.scale_attention is not None:
            att = torch.sigmoid(self.scale_attention(inp))
        else:
            att = self.fixed_attention
        return att

    def forward(self, inputs):
        assert len(inputs) == 2
        hr_inp = inputs[1]
        hr_scale = self.scales[1]
        lr_inp = inputs[0]
        lr_sc_att_inp = inputs[0]
        lr_scale = self.scales[0]
        batch_size = lr_inp[0].shape[0]
        assert lr_scale <= hr_scale

        has_crop = self.hr_crop_box is not None

        lr_seg = self.head(lr_inp)
        hr_seg = self.decode_hr(hr_inp, batch_size)

        att = self.get_scale_attention(lr_sc_att_inp)
        if has_crop:
            mask = lr_seg.new_zeros([lr_seg.shape[0], 1, *lr_seg.shape[2:]])
            sc_os = self.os / lr_scale
            slc = self.hr_crop_slice(sc_os)
            mask[:, :, slc[0], slc[1]] = 1
            att = att * mask
        lr_seg = (1 - att) * lr_seg
        up_lr_seg = self.resize(lr_seg, hr_scale / lr_scale)
        if torch.is_tensor(att):
            att = self.resize(att, hr_scale / lr_scale)

        if has_crop:
            hr_seg_inserted = torch.zeros_like(up_lr_seg)
            slc = self.hr_crop_slice(self.os)
            hr_seg_inserted[:, :, slc[0], slc[1]] = hr_seg
        else:
            hr_seg_inserted = hr_seg

        fused_seg = att * hr_seg_inserted + up_lr_seg
        return fused_seg, lr_seg, hr_seg

    def reset_crop(self):
        self.hr_crop_box = None

    def losses(self, seg_logit, seg_label, seg_weight=None):
        """The weighting of `HRDAHead.losses` (dict keys as there)."""
        fused_seg, lr_seg, hr_seg = seg_logit
        loss = {"loss_seg": base_decode_losses(fused_seg, seg_label, seg_weight)}
        if self.hr_loss_weight == 0 and self.lr_loss_weight == 0:
            return loss
        if self.lr_loss_weight > 0:
            loss["lr.loss_seg"] = base_decode_losses(lr_seg, seg_label, seg_weight)
        if self.hr_loss_weight > 0 and self.enable_hr_crop:
            cropped_seg_label = crop(seg_label, self.hr_crop_box)
            cropped_seg_weight = None if seg_weight is None else crop(seg_weight, self.hr_crop_box)
            loss["hr.loss_seg"] = base_decode_losses(hr_seg, cropped_seg_label, cropped_seg_weight)
        elif self.hr_loss_weight > 0:
            loss["hr.loss_seg"] = base_decode_losses(hr_seg, seg_label, seg_weight)
        loss["loss_seg"] *= 1 - self.lr_loss_weight - self.hr_loss_weight
        if self.lr_loss_weight > 0:
            loss["lr.loss_seg"] *= self.lr_loss_weight
        if self.hr_loss_weight > 0:
            loss["hr.loss_seg"] *= self.hr_loss_weight
        return loss


def base_decode_losses(seg_logit, seg_label, seg_weight=None, ignore_index=255):
    """`decode_head.py: BaseDecodeHead.losses` with mmseg's CrossEntropyLoss: logits resized
    (bilinear, align_corners False) to the label size, per-pixel CE with ignore, times the
    weight, mean over all pixels. Labels `[B, H, W]` (the `squeeze(1)` done)."""
    seg_logit = resize(seg_logit, size=seg_label.shape[1:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(seg_logit, seg_label.long(), reduction="none", ignore_index=ignore_index)
    if seg_weight is not None:
        loss = loss * seg_weight
    return loss.mean()


class HRDAEncoderDecoder(nn.Module):
    """Mirrors `hrda_encoder_decoder.py: HRDAEncoderDecoder` (`extract_unscaled_feat`,
    `extract_slide_feat`, `resize`, `encode_decode`, `_forward_train_features`,
    `forward_with_aux`). `encode_decode` returns the fused logits before the final resize to
    the image size; the training forward takes the crop box as an argument (the original
    draws it with `get_crop_bbox`, `crop_coord_divisible=8`)."""

    def __init__(self, backbone, decode_head: HRDAHead, hr_crop_size, hr_slide_overlapping=True):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.scales = decode_head.scales
        self.crop_size = hr_crop_size
        self.hr_slide_inference = True
        self.hr_slide_overlapping = hr_slide_overlapping
        self.align_corners = False

    def extract_unscaled_feat(self, img):
        return self.backbone(img)

    def extract_slide_feat(self, img):
        if self.hr_slide_overlapping:
            h_stride, w_stride = [e // 2 for e in self.crop_size]
        else:
            h_stride, w_stride = self.crop_size
        h_crop, w_crop = self.crop_size
        bs, _, h_img, w_img = img.size()
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1

        crop_imgs, crop_boxes = [], []
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1 = h_idx * h_stride
                x1 = w_idx * w_stride
                y2 = min(y1 + h_crop, h_img)
                x2 = min(x1 + w_crop, w_img)
                y1 = max(y2 - h_crop, 0)
                x1 = max(x2 - w_crop, 0)
                crop_imgs.append(img[:, :, y1:y2, x1:x2])
                crop_boxes.append([y1, y2, x1, x2])
        crop_imgs = torch.cat(crop_imgs, dim=0)
        crop_feats = self.extract_unscaled_feat(crop_imgs)
        return {"features": crop_feats, "boxes": crop_boxes}

    def resize(self, img, s):
        if s == 1:
            return img
        with torch.no_grad():
            return resize(input=img, scale_factor=s, mode="bilinear", align_corners=False)

    def encode_decode(self, img):
        mres_feats = []
        for i, s in enumerate(self.scales):
            scaled_img = self.resize(img, s)
            if i >= 1 and self.hr_slide_inference:
                mres_feats.append(self.extract_slide_feat(scaled_img))
            else:
                mres_feats.append(self.extract_unscaled_feat(scaled_img))
        return self.decode_head(mres_feats)

    def _forward_train_features(self, img, crop_box):
        mres_feats = []
        for i, s in enumerate(self.scales):
            scaled_img = resize(input=img, scale_factor=s, mode="bilinear", align_corners=False)
            if self.crop_size is not None and i >= 1:
                self.decode_head.set_hr_crop_box(crop_box)
                scaled_img = crop(scaled_img, crop_box)
            mres_feats.append(self.extract_unscaled_feat(scaled_img))
        return mres_feats

    def forward_with_aux(self, img, crop_box):
        """(fused, attenuated lr, hr) of a training forward; the box stays set for `losses`."""
        return self.decode_head(self._forward_train_features(img, crop_box))
