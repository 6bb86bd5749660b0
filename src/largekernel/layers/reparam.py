"""Structural re-parameterization: the Dilated Reparam Block and the exact fold math.

A depthwise k x k kernel with dilation r is the same operator as a dense kernel of size r(k-1)+1
with r-1 zeros between taps; BatchNorm in eval mode is a per-channel affine map. So a large kernel
plus parallel dilated small kernels, each followed by BN, folds into one K x K depthwise conv with
bias. Every fold here is exact up to floating-point rounding.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .norm import GRN

# Branch tables of the authors' released code: K -> (branch kernels, dilations).
BRANCH_TABLE: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
}


def dilated_branches(kernel_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Branch kernels and dilations of the Dilated Reparam Block for an odd `kernel_size` >= 5.

    K in 7..17 uses the authors' table. Elsewhere (our rule, documented in the README):
    K = 5 -> kernels (3, 3), dilations (1, 2); K >= 19 -> kernels (5, 9, 3, 3, 3), dilations
    (1, 2, round(m/3), round(2m/3), m) with m = (K-1)//2, so the widest 3x3 branch spans exactly K.
    Every branch's equivalent dense size r(k-1)+1 is <= K.
    """
    if kernel_size < 5 or kernel_size % 2 == 0:
        raise ValueError(
            f"the Dilated Reparam Block needs an odd kernel size >= 5, got {kernel_size}"
        )
    if kernel_size in BRANCH_TABLE:
        return BRANCH_TABLE[kernel_size]
    if kernel_size == 5:
        return (3, 3), (1, 2)
    m = (kernel_size - 1) // 2
    return (5, 9, 3, 3, 3), (1, 2, round(m / 3), round(2 * m / 3), m)


def fuse_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """Fold an eval-mode BatchNorm into the conv (or linear) before it: returns (weight, bias)."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return w, bn.bias + (b - bn.running_mean) * scale


def dilated_to_dense(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """A (C,1,k,k) kernel with dilation r as the equivalent dense (C,1,r(k-1)+1, r(k-1)+1) kernel."""
    if dilation == 1:
        return kernel
    c, _, k, _ = kernel.shape
    size = dilation * (k - 1) + 1
    dense = kernel.new_zeros(c, 1, size, size)
    dense[:, :, ::dilation, ::dilation] = kernel
    return dense


def pad_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square kernel to `size` x `size`, centred."""
    p = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [p, p, p, p])


def depthwise_conv(channels: int, kernel_size: int, dilation: int = 1, bias: bool = False,
                   device=None, dtype=None) -> nn.Conv2d:
    """A 'same'-padded depthwise conv, stride 1: an `nn.Conv2d` (same parameters and keys) whose
    training backward avoids oneDNN's slow depthwise weight-gradient path (`layers.dwconv`)."""
    from .dwconv import DepthwiseConv2d

    return DepthwiseConv2d(channels, kernel_size, padding=(dilation * (kernel_size - 1) + 1) // 2,
                           dilation=dilation, bias=bias, device=device, dtype=dtype)


def require_eval(module: nn.Module) -> None:
    if module.training:
        raise RuntimeError(
            f"cannot re-parameterize {type(module).__name__} in train mode: BatchNorm would use "
            "batch statistics, so the folded model would not be equivalent. Call model.eval() first."
        )


class DilatedReparamBlock(nn.Module):
    """Depthwise K x K conv plus parallel dilated depthwise branches, each with its own BN.

    Train form: BN(lk_origin(x)) + sum_b BN_b(dil_conv_k{k}_{r}(x)). Deploy form: lk_origin with bias.
    `kernel_sizes`/`dilations` override the branch table (each r(k-1)+1 must be <= K).
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False,
                 kernel_sizes: tuple[int, ...] | None = None,
                 dilations: tuple[int, ...] | None = None, device=None, dtype=None):
        super().__init__()
        if (kernel_sizes is None) != (dilations is None):
            raise ValueError("give both kernel_sizes and dilations for the branches, or neither")
        if kernel_sizes is None:
            kernel_sizes, dilations = dilated_branches(kernel_size)
        elif len(kernel_sizes) != len(dilations):
            raise ValueError(f"{len(kernel_sizes)} branch kernels but {len(dilations)} dilations")
        for k, r in zip(kernel_sizes, dilations):
            if k % 2 == 0 or r < 1 or r * (k - 1) + 1 > kernel_size:
                raise ValueError(
                    f"branch k={k}, r={r} does not fit: each branch needs an odd k, r >= 1 and "
                    f"r(k-1)+1 <= {kernel_size}"
                )
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.kernel_sizes = tuple(kernel_sizes)
        self.dilates = tuple(dilations)
        self.lk_origin = depthwise_conv(channels, kernel_size, bias=deploy, **dd)
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(channels, **dd)
            for k, r in zip(self.kernel_sizes, self.dilates):
                setattr(self, f"dil_conv_k{k}_{r}", depthwise_conv(channels, k, r, **dd))
                setattr(self, f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels, **dd))

    @property
    def deploy(self) -> bool:
        return not hasattr(self, "origin_bn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in zip(self.kernel_sizes, self.dilates):
            bn = getattr(self, f"dil_bn_k{k}_{r}")
            out = out + bn(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out

    @torch.no_grad()
    def merged_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (weight, bias) of the single K x K depthwise conv equivalent to this block."""
        if self.deploy:
            return self.lk_origin.weight, self.lk_origin.bias
        weight, bias = fuse_bn(self.lk_origin.weight, None, self.origin_bn)
        for k, r in zip(self.kernel_sizes, self.dilates):
            w, b = fuse_bn(getattr(self, f"dil_conv_k{k}_{r}").weight, None,
                           getattr(self, f"dil_bn_k{k}_{r}"))
            weight = weight + pad_to(dilated_to_dense(w, r), self.kernel_size)
            bias = bias + b
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the branches and BNs into `lk_origin` (in place, idempotent, eval mode only)."""
        if self.deploy:
            return
        require_eval(self)
        weight, bias = self.merged_kernel()
        channels = weight.shape[0]
        conv = depthwise_conv(channels, self.kernel_size, bias=True,
                              device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.lk_origin = conv
        del self.origin_bn
        for k, r in zip(self.kernel_sizes, self.dilates):
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, branches={list(zip(self.kernel_sizes, self.dilates))}"


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every re-parameterizable block of `model` into its inference form.

    Works on any module tree (a bare backbone, or a model that contains one): every module with a
    `reparameterize()` method is folded. With `inplace=False` the model is deep-copied first.
    Refuses train mode. Idempotent; device and dtype are kept.
    """
    for m in model.modules():
        if hasattr(m, "reparameterize"):
            require_eval(m)
    if not inplace:
        model = copy.deepcopy(model)
    for m in list(model.modules()):
        if hasattr(m, "reparameterize"):
            m.reparameterize()
    return model


@torch.no_grad()
def simulate_trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN (running stats, affine), GRN and layer scale random non-trivial values.

    A freshly initialised model has identity BNs and zero GRN/near-zero layer scale, so folding them
    is trivially exact; after this every re-parameterization fold does real work.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(t.shape, generator=g) * (hi - lo) + lo).to(t)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(rand(m.running_mean, -0.2, 0.2))
            m.running_var.copy_(rand(m.running_var, 0.5, 2.0))
            m.weight.copy_(rand(m.weight, 0.5, 1.5))
            m.bias.copy_(rand(m.bias, -0.2, 0.2))
        elif isinstance(m, GRN):
            m.gamma.copy_(rand(m.gamma, -0.5, 0.5))
            if m.beta is not None:
                m.beta.copy_(rand(m.beta, -0.1, 0.1))
        if isinstance(getattr(m, "gamma", None), nn.Parameter) and m.gamma.ndim == 1:
            m.gamma.copy_(rand(m.gamma, 0.1, 0.5))
    return model
