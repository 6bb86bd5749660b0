"""Depthwise convolution with a "dy as kernel" backward: a candidate algorithm for the speed work.

The weight gradient is one grouped convolution of the padded input with the output gradient as the
kernel, and the input gradient a depthwise conv with the flipped kernel, so the backward never takes
oneDNN's generic depthwise weight-gradient path. Forward, and everything in eval / no-grad mode, is
plain `F.conv2d`. It equals `nn.Conv2d` (tests/test_dwconv.py).

Not used by the model: on the project's 2-core CPU with torch 2.13, measured quiet with
`benchmarks/dwconv_backward.py`, it is no faster than stock at UniRepLKNet-T's 13x13 shapes
(0.9-1.1x) and slower at 31x31 (0.6x); it wins only when the CPU is oversubscribed. A per-shape
algorithm choice (the speed issue) decides where it pays.
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
            # dW[c,i,j] = sum_{n,y,x} xpad[n,c,y+i*d,x+j*d] * dy[n,c,y,x]: a grouped conv with
            # C groups of N "channels" (the batch), the output gradient as kernel, stride = dilation
            xp = F.pad(x, (pw, pw, ph, ph))
            ho, wo = dy.shape[-2:]
            xp = xp[..., : (kh - 1) * dh + ho, : (kw - 1) * dw + wo]
            dweight = F.conv2d(xp.transpose(0, 1).reshape(1, c * n, *xp.shape[-2:]),
                               dy.transpose(0, 1), None, (dh, dw), 0, 1, c)
            dweight = dweight.view(c, 1, kh, kw)
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
