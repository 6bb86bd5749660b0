"""The evaluation loop: run the model over a dataset and hand outputs and targets to a task's metrics."""
from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import collate
from .metrics import ClassificationMetrics

if TYPE_CHECKING:
    from .plugin import Metrics


def autocast_context(amp: str | None, device: torch.device):
    if amp is None:
        return nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be bf16, fp16 or none, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs CUDA; on CPU use --amp bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def run_evaluation(model: nn.Module, dataset: Dataset, metrics: Metrics, batch_size: int,
                   device: torch.device, amp: str | None = None, workers: int = 0,
                   copies: bool = False) -> dict:
    """`metrics.compute()` after feeding it every batch (inputs, float32 outputs, targets on the CPU);
    unreadable samples are listed under `skipped` with the reason.

    With `copies`, each sample is a stack of V test-time copies (V x input); the outputs reach the
    metrics as B x V x ...
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, generator=torch.Generator())
    was_training = model.training
    model.eval()
    skipped, n = [], 0
    for batch in loader:
        skipped += batch["skipped"]
        if batch["x"] is None:
            continue
        x = batch["x"].to(device)
        with autocast_context(amp, device):
            if copies:
                b, v = x.shape[:2]
                out = model(x.flatten(0, 1)).float()
                out = out.view(b, v, *out.shape[1:])
            else:
                out = model(x).float()
        metrics.update(batch["x"], out.cpu(), batch["y"])
        n += len(x)
    model.train(was_training)
    if n == 0:
        raise ValueError("no readable samples to evaluate")
    return dict(metrics.compute(), skipped=[dict(path=s.path, reason=s.reason) for s in skipped])


def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, batch_size: int,
             device: torch.device, amp: str | None = None, workers: int = 0,
             copies: bool = False) -> dict:
    """Classification metrics of `model` on `dataset` (percentages for accuracies): the loop with
    `ClassificationMetrics`; with `copies` the softmax scores are averaged over the V copies."""
    return run_evaluation(model, dataset, ClassificationMetrics(num_classes, copies), batch_size,
                          device, amp, workers, copies)
