"""Classification metrics: loss, top-1/top-5, per-class accuracy and the confusion matrix."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..modalities import collate


def autocast_context(amp: str | None, device: torch.device):
    if amp is None:
        return nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be bf16, fp16 or none, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs CUDA; on CPU use --amp bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, batch_size: int,
             device: torch.device, amp: str | None = None, workers: int = 0,
             copies: bool = False) -> dict:
    """Metrics of `model` on `dataset` (percentages for accuracies); unreadable samples are listed
    under `skipped` with the reason.

    With `copies`, each sample is a stack of V test-time copies (V x input: clips x crops, rotated
    point clouds); the softmax scores are averaged over the copies, and `copy_top1` lists each
    copy's own top-1.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, generator=torch.Generator())
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, top5, n, skipped = 0.0, 0, 0, []
    copy_correct = None
    k = min(5, num_classes)
    for batch in loader:
        skipped += batch["skipped"]
        if batch["x"] is None:
            continue
        x, y = batch["x"].to(device), batch["y"].to(device)
        if copies:
            b, v = x.shape[:2]
            with autocast_context(amp, device):
                logits = model(x.flatten(0, 1)).float().view(b, v, -1)
            hits = (logits.argmax(-1) == y[:, None]).sum(0).cpu()
            copy_correct = hits if copy_correct is None else copy_correct + hits
            logits = logits.softmax(-1).mean(1).log()  # averaged scores, as log-probabilities
        else:
            with autocast_context(amp, device):
                logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.topk(k, dim=1).indices
        top5 += (pred == y[:, None]).any(dim=1).sum().item()
        confusion += torch.bincount(y.cpu() * num_classes + pred[:, 0].cpu(),
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
        n += y.numel()
    model.train(was_training)
    if n == 0:
        raise ValueError("no readable samples to evaluate")
    correct = confusion.diag()
    per_class = (correct.double() / confusion.sum(1).clamp(min=1) * 100).tolist()
    metrics = dict(loss=loss_sum / n, top1=correct.sum().item() / n * 100, top5=top5 / n * 100, n=n,
                   mean_class_acc=_mean_class_accuracy(confusion), per_class=per_class,
                   confusion=confusion.tolist(),
                   skipped=[dict(path=s.path, reason=s.reason) for s in skipped])
    if copy_correct is not None:
        metrics["copy_top1"] = (copy_correct.double() / n * 100).tolist()
    return metrics


def _mean_class_accuracy(confusion: torch.Tensor) -> float:
    """Accuracy averaged over the classes that have samples (ModelNet's mAcc), in percent."""
    support = confusion.sum(1)
    present = support > 0
    return (confusion.diag()[present].double() / support[present]).mean().item() * 100
