"""Depthwise convolution whose training backward avoids oneDNN's slow weight-gradient path.

oneDNN has no depthwise weight-gradient kernel for K >= 5 on CPU and falls back to a generic one.
Here the weight gradient is a depthwise conv over the N*C planes of the padded input with each
plane's output gradient as its kernel, summed over the batch, and the input gradient a depthwise conv
with the flipped kernel: both run on oneDNN's depthwise forward kernel. Forward, and everything in
eval / no-grad / compile / export mode, is plain `F.conv2d`. It equals `nn.Conv2d`
(tests/test_dwconv.py); `benchmarks/dwconv_backward.py` and `largekernel bench` measure it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class _DepthwiseConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, bias, 1, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        # under autocast the forward ran in dy's dtype: compute the gradients in it too (autograd
        # casts each gradient back to its input's dtype)
        x, weight, dy = x.to(dy.dtype), weight.to(dy.dtype), dy.contiguous()
        (ph, pw), (dh, dw) = ctx.padding, ctx.dilation
        c, _, kh, kw = weight.shape
        n, _, h, w = x.shape
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            # transpose of a stride-1 conv: the flipped kernel with the complementary padding
            dx = F.conv2d(dy, weight.flip(-1, -2), None, 1,
                          ((kh - 1) * dh - ph, (kw - 1) * dw - pw), (dh, dw), c)
            dx = dx[..., :h, :w]
        if ctx.needs_input_grad[1]:
            # dW[c,i,j] = sum_{n,y,x} xpad[n,c,y+i*d,x+j*d] * dy[n,c,y,x]: a depthwise conv over
            # N*C planes with each plane's output gradient as its kernel (stride = dilation), then a
            # sum over the batch; oneDNN runs it with its depthwise kernel, not the slow wgrad path
            xp = F.pad(x, (pw, pw, ph, ph))
            ho, wo = dy.shape[-2:]
            xp = xp[..., : (kh - 1) * dh + ho, : (kw - 1) * dw + wo].contiguous()
            dweight = F.conv2d(xp.reshape(1, n * c, *xp.shape[-2:]), dy.reshape(n * c, 1, ho, wo),
                               None, (dh, dw), 0, 1, n * c)
            dweight = dweight.view(n, c, kh, kw).sum(0).unsqueeze(1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = dy.sum((0, 2, 3))
        return dx, dweight, dbias, None, None


class DepthwiseConv2d(nn.Conv2d):
    """`nn.Conv2d` (stride 1, groups = channels) with the fast backward; same parameters and keys."""

    def __init__(self, channels: int, kernel_size: int, padding: int = 0, dilation: int = 1,
                 bias: bool = False, device=None, dtype=None):
        super().__init__(channels, channels, kernel_size, stride=1, padding=padding,
                         dilation=dilation, groups=channels, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.device.type == "cpu" and not torch.jit.is_scripting()
                and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
                and (x.requires_grad or self.weight.requires_grad)):
            return _DepthwiseConvFn.apply(x, self.weight, self.bias, _pair(self.padding),
                                          _pair(self.dilation))
        return F.conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)
