"""Mixup / CutMix with label smoothing, producing soft targets; randomness from a given generator."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(
        1, y[:, None], 1.0 - smoothing + off)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float,
              prob: float, smoothing: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply mixup (alpha=`mixup`) or cutmix (alpha=`cutmix`), chosen 50/50 when both are on, with
    probability `prob`; the batch is mixed with its reverse (as timm does)."""
    target = smooth_one_hot(y, num_classes, smoothing)
    use = (mixup > 0 or cutmix > 0) and torch.rand((), generator=gen).item() < prob
    if not use:
        return x, target
    cut = cutmix > 0 and (mixup <= 0 or torch.rand((), generator=gen).item() < 0.5)
    alpha = cutmix if cut else mixup
    lam = _beta(alpha, gen)
    if cut:
        h, w = x.shape[-2:]
        ratio = (1 - lam) ** 0.5
        ch, cw = int(h * ratio), int(w * ratio)
        cy = int(torch.randint(h, (), generator=gen))
        cx = int(torch.randint(w, (), generator=gen))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + x.flip(0) * (1 - lam)
    return x, target * lam + target.flip(0) * (1 - lam)


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) sample from two Gamma samples drawn with `gen` (reproducible)."""
    a = torch._standard_gamma(torch.full((2,), alpha), generator=gen)
    return float(a[0] / a.sum())


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def classification_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """`ce`: softmax cross-entropy with soft targets; `bce`: sigmoid binary cross-entropy per class
    (the authors' audio loss), averaged over classes and samples."""
    if kind == "ce":
        return soft_cross_entropy(logits, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), target)
    raise ValueError(f"unknown loss {kind!r}; use ce or bce")
