"""Segmentation inference as mmseg 0.x does it: whole image, sliding window, rescale to the original
size, multi-scale + flip test-time augmentation (probabilities averaged), and the losses.

Every function takes a segmenter whose eval-mode `model(x)` returns logits at x's size (`UPerNet`)
and a normalised image batch (B x C x H x W); all resizes are bilinear with align_corners=False.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .segmentation import IGNORE_INDEX, resize

Size = tuple[int, int]


def _pair(v: int | Sequence[int], what: str) -> Size:
    pair = (int(v), int(v)) if isinstance(v, int) else tuple(int(s) for s in v)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what} must be N or (H, W) with positive sizes, got {v!r}")
    return pair


def slide_windows(height: int, width: int, crop: int | Sequence[int],
                  stride: int | Sequence[int]) -> list[tuple[int, int, int, int]]:
    """The (y1, y2, x1, x2) windows of mmseg's slide inference, row by row.

    A grid of max(H - hc + hs - 1, 0) // hs + 1 rows (same rule for columns); the last window of a
    row/column is shifted back to end at the border with the full crop size; an image smaller than
    the crop is one smaller window.
    """
    (hc, wc), (hs, ws) = _pair(crop, "crop"), _pair(stride, "stride")
    rows = max(height - hc + hs - 1, 0) // hs + 1
    cols = max(width - wc + ws - 1, 0) // ws + 1
    windows = []
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * hs + hc, height), min(j * ws + wc, width)
            windows.append((max(y2 - hc, 0), y2, max(x2 - wc, 0), x2))
    return windows


@torch.no_grad()
def slide_inference(model: nn.Module, x: torch.Tensor, crop: int | Sequence[int],
                    stride: int | Sequence[int]) -> torch.Tensor:
    """Logits at x's size from overlapping windows: the sum of window logits / the window count."""
    b, _, h, w = x.shape
    preds = None
    count = x.new_zeros((b, 1, h, w))
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        logits = model(x[:, :, y1:y2, x1:x2])
        if preds is None:
            preds = x.new_zeros((b, logits.shape[1], h, w))
        preds[:, :, y1:y2, x1:x2] += logits
        count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def infer_logits(model: nn.Module, x: torch.Tensor, mode: str = "whole",
                 crop: int | Sequence[int] | None = None,
                 stride: int | Sequence[int] | None = None) -> torch.Tensor:
    """Eval-mode logits at x's size: `mode` "whole" (one forward) or "slide" (crop and stride)."""
    if mode == "whole":
        return model(x)
    if mode == "slide":
        if crop is None or stride is None:
            raise ValueError("slide inference needs crop and stride (e.g. crop=512, stride=341)")
        return slide_inference(model, x, crop, stride)
    raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")


def rescale_logits(logits: torch.Tensor, img_shape: Sequence[int], ori_shape: Sequence[int]) -> torch.Tensor:
    """Cut logits to the resized image's `img_shape` (dropping bottom/right padding), then resize
    them to the original image's `ori_shape` (mmseg's rescale=True)."""
    h, w = _pair(tuple(img_shape), "img_shape")
    if h > logits.shape[-2] or w > logits.shape[-1]:
        raise ValueError(f"img_shape {(h, w)} is larger than the logits' {tuple(logits.shape[-2:])}")
    return resize(logits[:, :, :h, :w], _pair(tuple(ori_shape), "ori_shape"))


def network_input_size(height: int, width: int, scale: Sequence[int] = (2048, 512), ratio: float = 1.0,
              size_divisor: int | None = 32) -> Size:
    """The network input size of the authors' test pipeline for an H x W image, as (h, w).

    Keep-ratio resize to fit `scale` x ratio (long, short) = (int(2048 r), int(512 r)): factor
    min(long / max(H, W), short / min(H, W)), each side int(side * factor + 0.5); then (T/S/B/L
    configs) each side up to the next multiple of `size_divisor`.
    """
    long_side, short_side = int(max(scale) * ratio), int(min(scale) * ratio)
    factor = min(long_side / max(height, width), short_side / min(height, width))
    h, w = int(height * factor + 0.5), int(width * factor + 0.5)
    if size_divisor:
        h, w = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    return h, w


@torch.no_grad()
def predict_probs(model: nn.Module, image: torch.Tensor, ratios: Sequence[float] = (1.0,),
                  flip: bool = False, scale: Sequence[int] | None = (2048, 512),
                  size_divisor: int | None = 32, mode: str = "whole",
                  crop: int | Sequence[int] | None = None,
                  stride: int | Sequence[int] | None = None) -> torch.Tensor:
    """Class probabilities (B x classes x H x W) for a normalised image batch at its original size.

    Each view (every ratio, each with and without horizontal flip when `flip`) is resized by
    `network_input_size` (`scale=None`: only the ratio, no divisor rounding), run (whole or slide), its
    logits resized back to H x W and softmaxed; flipped views are flipped back; the views'
    probabilities are averaged (mmseg's aug_test). The authors' multi-scale setting:
    ratios (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) with flip.
    """
    ori = tuple(image.shape[-2:])
    total, views = None, 0
    for r in ratios:
        if scale is None:
            size = (int(ori[0] * r + 0.5), int(ori[1] * r + 0.5))
        else:
            size = network_input_size(ori[0], ori[1], scale, r, size_divisor)
        view = image if size == ori else resize(image, size)
        for flipped in ((False, True) if flip else (False,)):
            x = view.flip(-1) if flipped else view
            logits = infer_logits(model, x, mode, crop, stride)
            probs = F.softmax(rescale_logits(logits, size, ori) if size != ori else logits, dim=1)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
            views += 1
    return total / views


def segmentation_loss(outputs: dict | torch.Tensor, label: torch.Tensor, aux_weight: float = 0.4,
                      ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """mmseg's decode + auxiliary losses: each head's logits resized to the label, softmax CE
    averaged over ALL pixels (ignored ones count as 0), aux weighted by `aux_weight`.

    `outputs`: the train-mode dict of `UPerNet` (`logits`, `aux_logits`) or logits alone. Returns
    `loss` (the sum to backpropagate), `loss_decode`, `loss_aux`, and each head's pixel accuracy
    over non-ignored pixels in percent (`acc_decode`, `acc_aux`; no gradient).
    """
    if isinstance(outputs, torch.Tensor):
        outputs = {"logits": outputs, "aux_logits": None}
    if label.ndim != 3:
        raise ValueError(f"label must be B x H x W class indices, got shape {tuple(label.shape)}")
    label = label.long()
    result: dict[str, torch.Tensor] = {}
    total = None
    for key, name, weight in (("logits", "decode", 1.0), ("aux_logits", "aux", aux_weight)):
        logits = outputs.get(key)
        if logits is None:
            continue
        logits = logits.float()  # CE in float32 also under bf16/fp16 autocast
        if logits.shape[-2:] != label.shape[-2:]:
            logits = resize(logits, label.shape[-2:])
        loss = weight * F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none").mean()
        result[f"loss_{name}"] = loss
        result[f"acc_{name}"] = pixel_accuracy(logits.detach(), label, ignore_index)
        total = loss if total is None else total + loss
    result["loss"] = total
    return result


def pixel_accuracy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Percent of non-ignored pixels whose argmax class equals the label (mmseg's acc_seg, its
    float32 epsilon in the denominator included)."""
    valid = label != ignore_index
    correct = (logits.argmax(dim=1) == label)[valid].float().sum()
    return correct * (100.0 / (int(valid.sum()) + torch.finfo(torch.float32).eps))
