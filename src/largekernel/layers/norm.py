"""Normalisation layers of UniRepLKNet: channels-first LayerNorm and GRN."""
from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW tensor (biased variance, as the authors' code)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GRN(nn.Module):
    """Global Response Normalisation on NHWC input; `beta` is folded away in the deploy form.

    out = (gamma * Nx + 1) * x + beta, with Nx = ||x||_HW / (mean_C ||x||_HW + 1e-6).
    """

    def __init__(self, dim: int, use_bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim, device=device, dtype=dtype))
        if use_bias:
            self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim, device=device, dtype=dtype))
        else:
            self.register_parameter("beta", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale(x)
        return x * scale if self.beta is None else torch.addcmul(self.beta, x, scale)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample, per-channel factor (N, 1, 1, C) that GRN multiplies x by."""
        gx = spatial_l2_norm(x)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * nx + 1

    def extra_repr(self) -> str:
        return f"{self.gamma.shape[-1]}, use_bias={self.beta is not None}"


def spatial_l2_norm(x: torch.Tensor) -> torch.Tensor:
    """||x||_2 over H and W of an NHWC tensor, as (N, 1, 1, C).

    `torch.norm(x, dim=(1, 2))` on a contiguous NHWC tensor takes a slow strided reduction on CPU
    (2-15x slower than needed at UniRepLKNet's shapes); a column sum of each sample's (HW, C) matrix
    is the fast one. Compiled graphs and other devices use `vector_norm`, which they handle well.
    """
    if x.device.type != "cpu" or not x.is_contiguous() or torch.compiler.is_compiling():
        return torch.linalg.vector_norm(x, 2, dim=(1, 2), keepdim=True)
    n, h, w, c = x.shape
    sq = torch.stack([(s * s).sum(0) for s in x.view(n, h * w, c)])
    # an all-zero channel (e.g. GELU of very negative values on a small map) has norm 0: keep its
    # gradient 0 as vector_norm does, not sqrt's inf (which turned the loss into NaN)
    nonzero = sq > 0
    return torch.where(nonzero, torch.where(nonzero, sq, 1.0).sqrt(), 0.0).view(n, 1, 1, c)
