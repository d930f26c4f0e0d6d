"""Independent references for the evaluation command lines: mmseg's test-time pipeline on a
`transformers` SegFormer in PyTorch, and mmseg's metrics in numpy.

PyTorch is imported where it is used, so the window grid is available without it.
Nothing here runs lcmsm_jax code; images are resized by OpenCV itself, as mmcv does. The
test images are resized by a factor of 2, where `cv2.resize` and lcmsm-jax's resize agree
bit for bit (tests/test_data_transforms.py). Sizes are (height, width).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# cityscapesScripts `labels.py`: labelId -> trainId (every other id is ignored, 255).
CITYSCAPES_LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
# cityscapesScripts colours of trainIds 0..18.
CITYSCAPES_COLOURS = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
], np.uint8)  # fmt: skip
NUM_CLASSES = 19
IGNORE = 255
# mmseg's `img_norm_cfg` (ImageNet statistics, RGB).
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def read_train_ids(path) -> np.ndarray:
    """A Cityscapes `_gtFine_labelIds.png` -> trainIds [H, W] uint8 (255 = ignore)."""
    lut = np.full(256, IGNORE, np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    with Image.open(path) as im:
        return lut[np.asarray(im)]


def read_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv `rescale_size` with keep_ratio: fit inside (long edge, short edge) of `scale`."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_bilinear_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`cv2.resize(image, (w, h), interpolation=INTER_LINEAR)` (mmcv's `imresize`)."""
    import cv2

    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def test_input(image: np.ndarray, scale: tuple[int, int]):
    """mmseg's test pipeline: keep-ratio resize to `scale`, normalise -> torch [1, 3, h, w]."""
    import torch

    resized = resize_bilinear_uint8(image, rescale_size(*image.shape[:2], scale))
    normalised = (resized.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy())[None]


def mmseg_windows(h, w, crop, stride):
    """Transcription of mmseg 0.16 `slide_inference`'s window loop: [(y1, y2, x1, x2)]."""
    (hc, wc), (hs, ws) = crop, stride
    h_grids = max(h - hc + hs - 1, 0) // hs + 1
    w_grids = max(w - wc + ws - 1, 0) // ws + 1
    boxes = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * hs, wi * ws
            y2, x2 = min(y1 + hc, h), min(x1 + wc, w)
            y1, x1 = max(y2 - hc, 0), max(x2 - wc, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


def encode_decode(net, img):
    """mmseg `EncoderDecoder.encode_decode`: head logits resized (bilinear, align_corners
    False) to the input's size."""
    import torch.nn.functional as F

    return F.interpolate(net(img), size=img.shape[2:], mode="bilinear", align_corners=False)


def slide_inference(net, img, crop, stride):
    """mmseg 0.16 `EncoderDecoder.slide_inference` before the rescale: [B, K, h, w]."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = img.shape
    preds, count = None, torch.zeros(b, 1, h, w)
    for y1, y2, x1, x2 in mmseg_windows(h, w, crop, stride):
        crop_logit = encode_decode(net, img[:, :, y1:y2, x1:x2])
        preds = preds if preds is not None else torch.zeros(b, crop_logit.shape[1], h, w)
        preds += F.pad(crop_logit, (x1, w - x2, y1, h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    assert (count == 0).sum() == 0
    return preds / count


def segment(net, image: np.ndarray, *, scale, mode, crop, stride) -> np.ndarray:
    """mmseg `inference` with rescale: one uint8 image [H, W, 3] -> logits [K, H, W] at its
    own resolution (their arg-max is the prediction). `net`: images [B, 3, h, w] -> head
    logits at stride 4."""
    import torch
    import torch.nn.functional as F

    # Tensors this small run fastest on one thread (no hand-offs between busy cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            img = test_input(image, scale)
            if mode == "slide":
                logits = slide_inference(net, img, crop, stride)
            elif mode == "whole":
                logits = encode_decode(net, img)
            else:
                raise ValueError(f"unknown inference mode {mode!r}")
            size = image.shape[:2]
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    finally:
        torch.set_num_threads(threads)
    return logits[0].numpy()


def unit_gain_(module, generator) -> None:
    """Every weight matrix / kernel to N(0, 1 / fan_in), so activations keep their scale
    through the network and the logits vary over the image (small default initialisations
    leave logits that are nearly constant, dominated by the biases)."""
    import torch

    with torch.no_grad():
        for weight in module.parameters():
            if weight.ndim >= 2:
                fan_in = weight[0].numel()
                weight.copy_(torch.randn(weight.shape, generator=generator) / fan_in**0.5)


def confusion(pred: np.ndarray, label: np.ndarray, k: int = NUM_CLASSES) -> np.ndarray:
    """[K, K] int64 counts, rows = ground truth, columns = prediction; 255 is left out."""
    keep = label != IGNORE
    flat = label[keep].astype(np.int64) * k + pred[keep].astype(np.int64)
    return np.bincount(flat, minlength=k * k).reshape(k, k)


def metrics(conf: np.ndarray) -> dict:
    """mmseg `eval_metrics`: per-class IoU and Acc (NaN where the class has no union / no
    ground truth), their NaN-means and the overall accuracy, in percent."""
    conf = conf.astype(np.float64)
    inter = np.diag(conf)
    gt, pred = conf.sum(axis=1), conf.sum(axis=0)
    union = gt + pred - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
        acc = np.where(gt > 0, inter / gt, np.nan)
    return {
        "IoU": 100 * iou,
        "Acc": 100 * acc,
        "mIoU": 100 * np.nanmean(iou),
        "mAcc": 100 * np.nanmean(acc),
        "aAcc": 100 * inter.sum() / conf.sum(),
    }


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """[K, ...] logits -> [...] gap between the largest and the second-largest."""
    top = np.sort(logits, axis=0)
    return top[-1] - top[-2]


def near_argmax(pred: np.ndarray, logits: np.ndarray, tie: float) -> np.ndarray:
    """[H, W] bool: `pred`'s class has a reference logit within `tie` of the largest, i.e.
    `pred` is the reference's arg-max up to a near-tie."""
    chosen = np.take_along_axis(logits, pred[None].astype(np.int64), axis=0)[0]
    return chosen >= logits.max(axis=0) - tie
