"""Task metrics computed from collected outputs and targets (the evaluation loop is in evaluate.py).

Classification: loss, top-1/top-5, per-class accuracy, mean class accuracy, the confusion matrix,
and with test-time copies each copy's own top-1. Regression (forecasting): MSE/MAE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ClassificationMetrics:
    """Accumulates logits (B x classes, or B x V copies x classes) against class indices.

    With copies, the softmax scores are averaged over the V copies (the prediction), and
    `copy_top1` lists each copy's own top-1.
    """

    def __init__(self, num_classes: int, copies: bool = False) -> None:
        self.num_classes, self.copies = num_classes, copies
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.loss_sum, self.top5, self.n = 0.0, 0, 0
        self.copy_correct: torch.Tensor | None = None

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        y, logits, c = targets.cpu(), outputs, self.num_classes
        if self.copies:
            hits = (logits.argmax(-1) == y[:, None]).sum(0)
            self.copy_correct = hits if self.copy_correct is None else self.copy_correct + hits
            logits = logits.softmax(-1).mean(1).log()  # averaged scores, as log-probabilities
        self.loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.topk(min(5, c), dim=1).indices
        self.top5 += (pred == y[:, None]).any(dim=1).sum().item()
        self.confusion += torch.bincount(y * c + pred[:, 0], minlength=c * c).view(c, c)
        self.n += y.numel()

    def compute(self) -> dict:
        n, confusion = self.n, self.confusion
        correct = confusion.diag()
        per_class = (correct.double() / confusion.sum(1).clamp(min=1) * 100).tolist()
        metrics = dict(loss=self.loss_sum / n, top1=correct.sum().item() / n * 100,
                       top5=self.top5 / n * 100, n=n, mean_class_acc=mean_class_accuracy(confusion),
                       per_class=per_class, confusion=confusion.tolist())
        if self.copy_correct is not None:
            metrics["copy_top1"] = (self.copy_correct.double() / n * 100).tolist()
        return metrics


def mean_class_accuracy(confusion: torch.Tensor) -> float:
    """Accuracy averaged over the classes that have samples (ModelNet's mAcc), in percent."""
    support = confusion.sum(1)
    present = support > 0
    return (confusion.diag()[present].double() / support[present]).mean().item() * 100


def regression_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean squared and mean absolute error over every element."""
    return dict(mse=F.mse_loss(pred, target).item(), mae=F.l1_loss(pred, target).item())
