"""Semantic-segmentation metrics with mmseg 0.x's definitions (aAcc, per-class IoU/Acc, mIoU, mAcc).

Counts are summed over the whole set before dividing (not averaged per image). Pixels labelled
`ignore_index` are removed first; predicted values outside 0..C-1 are not counted as a prediction
of any class. IoU_c = I_c / U_c, Acc_c = I_c / L_c, 0/0 is nan (IoU: class in neither map; Acc:
class not in the labels), and the means leave nan out. Inputs are never modified.
"""
from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = 255


def _as_long_tensor(x, what: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer class indices, got dtype {t.dtype}")
    return t.detach().to("cpu", torch.long)


def reduce_zero_label(label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ADE20K's label shift, on a copy: 0 ("other") -> ignore, v -> v - 1, ignore stays ignore."""
    out = label.long() - 1
    out[(label == 0) | (label == ignore_index)] = ignore_index
    return out


def area_counts(pred, label, num_classes: int, ignore_index: int = IGNORE_INDEX,
                reduce_zero_label_: bool = False) -> torch.Tensor:
    """Per-class pixel counts of one image (or a batch): a 4 x C int64 tensor of
    intersection, union, prediction and label areas."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred, label = _as_long_tensor(pred, "pred"), _as_long_tensor(label, "label")
    if pred.shape != label.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    if reduce_zero_label_:
        label = reduce_zero_label(label, ignore_index)
    valid = label != ignore_index
    pred, label = pred[valid], label[valid]
    bad = (label < 0) | (label >= num_classes)
    if bool(bad.any()):
        values = sorted(set(label[bad].unique().tolist()))[:8]
        raise ValueError(f"label values {values} are outside 0..{num_classes - 1} and not the ignore "
                         f"index {ignore_index}: check num_classes and reduce_zero_label")
    in_range = (pred >= 0) & (pred < num_classes)
    area_pred = torch.bincount(pred[in_range], minlength=num_classes)
    area_label = torch.bincount(label, minlength=num_classes)
    area_inter = torch.bincount(label[pred == label], minlength=num_classes)
    return torch.stack([area_inter, area_pred + area_label - area_inter, area_pred, area_label])


def metrics_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor | float]:
    """aAcc, IoU, Acc (per class, float64 with nan), mIoU and mAcc (nan-means) from summed counts."""
    inter, union, _, label = counts.double()
    iou, acc = inter / union, inter / label  # 0/0 -> nan
    total = float(label.sum())
    return {
        "aAcc": float(inter.sum()) / total if total else math.nan,
        "IoU": iou,
        "Acc": acc,
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
    }


def _nanmean(x: torch.Tensor) -> float:
    valid = x[~torch.isnan(x)]
    return float(valid.mean()) if valid.numel() else math.nan


class IoUAccumulator:
    """Sums per-class intersection/union/prediction/label areas over a set, image by image."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 reduce_zero_label: bool = False) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.counts = torch.zeros(4, num_classes, dtype=torch.long)
        self.images = 0

    def update(self, pred, label) -> None:
        """Add one image's (H x W) or a batch's (B x H x W) prediction and label."""
        self.counts += area_counts(pred, label, self.num_classes, self.ignore_index,
                                   self.reduce_zero_label)
        self.images += 1 if np.ndim(pred) <= 2 else int(np.shape(pred)[0])

    def compute(self) -> dict[str, torch.Tensor | float]:
        """The metrics of everything added so far (see `mean_iou`)."""
        return metrics_from_counts(self.counts)


def mean_iou(pred, label, num_classes: int, ignore_index: int = IGNORE_INDEX,
             reduce_zero_label: bool = False) -> dict[str, torch.Tensor | float]:
    """mmseg's mean_iou over a set: `pred`/`label` are one H x W map, a B x H x W batch, or lists
    of maps (sizes may differ); counts are summed over all of them.

    Returns `aAcc` (float), `IoU` and `Acc` (float64 tensors of length num_classes, nan where
    undefined), `mIoU`, `mAcc` (nan-means, fractions: multiply by 100 for mmseg's percent).
    `reduce_zero_label` applies ADE20K's label shift to the labels (on a copy).
    """
    acc = IoUAccumulator(num_classes, ignore_index, reduce_zero_label)
    if isinstance(pred, (list, tuple)) != isinstance(label, (list, tuple)):
        raise ValueError("give pred and label both as lists of maps, or both as arrays/tensors")
    if isinstance(pred, (list, tuple)):
        if len(pred) != len(label):
            raise ValueError(f"{len(pred)} predictions but {len(label)} labels")
        for p, t in zip(pred, label):
            acc.update(p, t)
    else:
        acc.update(pred, label)
    return acc.compute()
