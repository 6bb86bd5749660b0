"""Exponential moving average of model weights (buffers copied), evaluated as a separate model."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    """`ema = decay * ema + (1 - decay) * model` for floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(m.to(e.dtype), 1.0 - self.decay)
            else:
                e.copy_(m)

    def forward(self, x):
        return self.module(x)
