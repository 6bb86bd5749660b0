"""Optimizer parameter groups (weight decay, layer-wise lr decay) and the per-iteration lr schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW groups: no decay on 1-D params, biases and `model.no_weight_decay()`; with
    `layer_decay`, each group gets `lr_scale = layer_decay ** (max_id - layer_id(name))`."""
    base = model.module if hasattr(model, "module") else model
    skip = base.no_weight_decay() if hasattr(base, "no_weight_decay") else set()
    use_layers = layer_decay is not None and hasattr(base, "layer_id")
    max_id = base.num_layer_ids - 1 if use_layers else 0
    groups: dict[tuple, dict] = {}
    for name, p in base.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip
        layer = base.layer_id(name) if use_layers else 0
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (max_id - layer) if use_layers else 1.0
            groups[key] = dict(params=[], weight_decay=0.0 if no_decay else weight_decay,
                               lr_scale=scale, names=[])
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float,
                    layer_decay: float | None, betas: tuple[float, float]) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, layer_decay)
    for g in groups:
        g.pop("names")
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if opt == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {opt!r}; use adamw, adam or sgd")


def cosine_lr(step: int, total_steps: int, base_lr: float, min_lr: float, warmup_steps: int,
              warmup_lr: float = 0.0) -> float:
    """Linear warmup from `warmup_lr` to `base_lr`, then cosine from `base_lr` to `min_lr`."""
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))


def poly_lr(step: int, total_steps: int, base_lr: float, min_lr: float, warmup_steps: int,
            warmup_lr: float = 0.0, power: float = 1.0) -> float:
    """mmcv's poly schedule with its linear warmup (the authors' segmentation recipe):
    (base_lr - min_lr) (1 - step / total)^power + min_lr over the whole run, multiplied during the
    first `warmup_steps` by 1 - (1 - step / warmup_steps)(1 - warmup_lr / base_lr), so it starts
    at `warmup_lr` and joins the poly curve at the end of the warmup."""
    lr = (base_lr - min_lr) * (1 - min(step, total_steps) / max(1, total_steps)) ** power + min_lr
    if step < warmup_steps and base_lr > 0:
        lr *= 1 - (1 - step / warmup_steps) * (1 - warmup_lr / base_lr)
    return lr


def scheduled_lr(step: int, total_steps: int, steps_per_epoch: int, base_lr: float, min_lr: float,
                 warmup_steps: int, warmup_lr: float = 0.0, sched: str = "cosine",
                 decay: float = 0.85, decay_start: int = 5, power: float = 1.0) -> float:
    """The learning rate at optimizer step `step`.

    `cosine`: `cosine_lr`. `poly`: `poly_lr` with `power`. `step`: warmup as cosine, then
    `base_lr` multiplied by `decay` once per epoch from epoch `decay_start` on (the authors' audio
    recipe: x0.85 per epoch after epoch 5), never below `min_lr`.
    """
    if sched == "cosine":
        return cosine_lr(step, total_steps, base_lr, min_lr, warmup_steps, warmup_lr)
    if sched == "poly":
        return poly_lr(step, total_steps, base_lr, min_lr, warmup_steps, warmup_lr, power)
    if sched == "step":
        if step < warmup_steps:
            return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
        epoch = step // max(1, steps_per_epoch)
        return max(min_lr, base_lr * decay ** max(0, epoch - decay_start + 1))
    raise ValueError(f"unknown lr schedule {sched!r}; use cosine, poly or step")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
