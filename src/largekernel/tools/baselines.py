"""Baselines for the speed benchmarks: the authors' forward with stock PyTorch ops, and ConvNeXt-T.

`reference_forward(model, x)` runs a largekernel UniRepLKNet (train or deploy form) with its own
parameters through the op sequence of the authors' code (F.conv2d per branch, BatchNorm, SE,
NCHW<->NHWC permutes around Linear layers, GELU, GRN with `torch.norm`, layer scale). It does not
call the model's modules, so it stays the plain reference whatever the modules are optimised into;
`Reference(model)` wraps it as a module (same parameters, trainable). ConvNeXt-T is built from stock
ops with the published structure (4x4 stem, 7x7 depthwise, LayerNorm, 4x MLP, layer scale).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import GRN, DilatedReparamBlock, LayerNorm2d
from ..models.unireplknet import UniRepLKNet


def _conv(m: nn.Conv2d, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    return F.conv2d(x, m.weight, m.bias if bias else None, m.stride, m.padding, m.dilation, m.groups)


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        bn.training, bn.momentum, bn.eps)


def _layer_norm_cf(ln: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + ln.eps)
    return ln.weight[:, None, None] * x + ln.bias[:, None, None]


def _sequential(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for m in layers:
        if isinstance(m, LayerNorm2d):
            x = _layer_norm_cf(m, x)
        elif isinstance(m, nn.Conv2d):
            x = _conv(m, x)
        elif isinstance(m, nn.GELU):
            x = F.gelu(x)
        else:
            raise TypeError(f"reference_forward: unexpected {type(m).__name__} in a downsample layer")
    return x


def _dwconv(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(m, DilatedReparamBlock):
        return _conv(m, x)
    if m.deploy:
        return _conv(m.lk_origin, x)
    out = _bn(m.origin_bn, _conv(m.lk_origin, x))
    for k, r in zip(m.kernel_sizes, m.dilates):
        out = out + _bn(getattr(m, f"dil_bn_k{k}_{r}"), _conv(getattr(m, f"dil_conv_k{k}_{r}"), x))
    return out


def _grn(grn: GRN, x: torch.Tensor) -> torch.Tensor:
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    out = grn.gamma * (x * nx) + x
    return out if grn.beta is None else out + grn.beta


def _block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = _dwconv(blk.dwconv, x)
    if isinstance(blk.norm, nn.BatchNorm2d):
        y = _bn(blk.norm, y)
    s = F.adaptive_avg_pool2d(y, 1)
    y = y * torch.sigmoid(_conv(blk.se.up, F.relu(_conv(blk.se.down, s))))
    y = y.permute(0, 2, 3, 1)
    y = F.linear(y, blk.pwconv1[1].weight, blk.pwconv1[1].bias)
    y = _grn(blk.act[1], F.gelu(y))
    y = F.linear(y, blk.pwconv2[0].weight, blk.pwconv2[0].bias).permute(0, 3, 1, 2)
    if len(blk.pwconv2) > 2:
        y = _bn(blk.pwconv2[2], y)
    if blk.gamma is not None:
        y = blk.gamma.view(1, -1, 1, 1) * y
    return x + y


def reference_forward(model: UniRepLKNet, x: torch.Tensor) -> torch.Tensor:
    """Logits (or pooled features) of a classifier-form `model` computed the authors' way."""
    if model.features_only:
        raise ValueError("reference_forward covers the classifier form; build without features_only")
    for down, stage in zip(model.downsample_layers, model.stages):
        x = _sequential(down, x)
        for blk in stage:
            x = _block(blk, x)
    x = F.layer_norm(x.mean((2, 3)), (x.shape[1],), model.norm.weight, model.norm.bias, model.norm.eps)
    return F.linear(x, model.head.weight, model.head.bias) if isinstance(model.head, nn.Linear) else x


class Reference(nn.Module):
    """A module running `reference_forward` on (and training) the wrapped model's parameters."""

    def __init__(self, model: UniRepLKNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference_forward(self.model, x)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al., 2022) from stock ops; the defaults are ConvNeXt-T (28.6 M params)."""

    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_classes: int = 1000):
        super().__init__()
        self.downsample = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4),
                                                       LayerNorm2d(dims[0]))])
        for i in range(1, 4):
            self.downsample.append(nn.Sequential(LayerNorm2d(dims[i - 1]),
                                                 nn.Conv2d(dims[i - 1], dims[i], 2, stride=2)))
        self.stages = nn.ModuleList(nn.Sequential(*[_ConvNeXtBlock(d) for _ in range(n)])
                                    for n, d in zip(depths, dims))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((2, 3))))
