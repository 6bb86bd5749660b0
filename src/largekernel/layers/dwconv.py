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

# "direct": F.conv2d in the input's layout; "swap": the other layout (NCHW <-> channels_last) and
# back. oneDNN's choice of kernel depends on layout and K (NCHW with K > 13 falls to im2col, 20-100x
# slower), so the fastest is picked per (shapes, stride, padding, dilation, dtype, layout).
POLICIES = ("autotune", "rule", "direct", "swap")
_policy = "autotune"
_choices: dict[tuple, str] = {}


def set_policy(policy: str) -> None:
    """How depthwise convs pick a layout: "autotune" (time both once per shape, cache the winner),
    "rule" (swap NCHW to channels_last for kernels wider than 13, else direct), or a forced
    "direct" / "swap". Deterministic mode (`torch.use_deterministic_algorithms`) uses "rule", so
    every process computes the same sums."""
    global _policy
    if policy not in POLICIES:
        raise ValueError(f"unknown depthwise policy {policy!r}; use one of {', '.join(POLICIES)}")
    _policy = policy
    _choices.clear()


def choices() -> dict[tuple, str]:
    """The cached layout choice per conv signature (for `largekernel bench` and debugging)."""
    return dict(_choices)


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _run(choice: str, x, weight, bias, stride, padding, dilation, groups):
    if choice == "direct":
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    back = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    other = torch.contiguous_format if back is torch.channels_last else torch.channels_last
    out = F.conv2d(x.contiguous(memory_format=other), weight, bias, stride, padding, dilation, groups)
    return out.contiguous(memory_format=back)


def _timed(fn, reps: int = 3) -> float:
    import time

    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding, dilation,
           groups: int) -> torch.Tensor:
    """`F.conv2d` for depthwise-style convs on CPU, in the layout that is fastest for the shape."""
    if x.device.type != "cpu" or x.dim() != 4 or torch.compiler.is_compiling():
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    policy = "rule" if torch.are_deterministic_algorithms_enabled() and _policy == "autotune" else _policy
    if policy in ("direct", "swap"):
        return _run(policy, x, weight, bias, stride, padding, dilation, groups)
    key = (tuple(x.shape), tuple(weight.shape), _pair(stride), _pair(padding), _pair(dilation),
           x.dtype, _is_channels_last(x), policy)
    choice = _choices.get(key)
    if choice is None:
        span = max(d * (k - 1) + 1 for d, k in zip(_pair(dilation), weight.shape[-2:]))
        if policy == "rule":
            choice = "swap" if span > 13 and not _is_channels_last(x) else "direct"
        else:
            with torch.no_grad():
                times = {c: _timed(lambda c=c: _run(c, x, weight, bias, stride, padding, dilation, groups))
                         for c in ("direct", "swap")}
            choice = min(times, key=times.get)
        _choices[key] = choice
    return _run(choice, x, weight, bias, stride, padding, dilation, groups)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class _DepthwiseConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.padding, ctx.dilation = padding, dilation
        return conv2d(x, weight, bias, 1, padding, dilation, weight.shape[0])

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
            # transpose of a stride-1 conv: the flipped kernel with the complementary padding; a
            # forward padding wider than the kernel's span makes that negative: pad 0 and crop
            qh, qw = (kh - 1) * dh - ph, (kw - 1) * dw - pw
            dx = conv2d(dy, weight.flip(-1, -2), None, 1, (max(qh, 0), max(qw, 0)), (dh, dw), c)
            oh, ow = max(-qh, 0), max(-qw, 0)
            dx = dx[..., oh:oh + h, ow:ow + w]
        if ctx.needs_input_grad[1]:
            # dW[c,i,j] = sum_{n,y,x} xpad[n,c,y+i*d,x+j*d] * dy[n,c,y,x]: a depthwise conv over
            # N*C planes with each plane's output gradient as its kernel (stride = dilation, the
            # forward's padding), then a sum over the batch; oneDNN runs it with its depthwise
            # kernel, not the slow wgrad path. Padding inside the conv, not by F.pad: same sums,
            # 1.2-4x faster (no zero-filled copy of the input)
            ho, wo = dy.shape[-2:]
            dweight = conv2d(x.reshape(1, n * c, h, w), dy.reshape(n * c, 1, ho, wo),
                             None, (dh, dw), (ph, pw), 1, n * c)
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
        if _use_triton(x):  # CUDA: Triton kernels (layers/triton_dw.py)
            return _triton_dw().depthwise_conv2d_triton(x, self.weight, self.bias, self.padding,
                                                        self.dilation)
        if (torch.is_grad_enabled() and x.device.type == "cpu" and not torch.jit.is_scripting()
                and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
                and (x.requires_grad or self.weight.requires_grad)):
            return _DepthwiseConvFn.apply(x, self.weight, self.bias, _pair(self.padding),
                                          _pair(self.dilation))
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_scripting():
            return F.conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)
        return conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)


# CUDA: the Triton kernels of layers/triton_dw.py, imported only when a CUDA tensor first comes
# through (never on the CPU path). Opt-in until they are measured against cuDNN on a GPU
# (docs/performance.md): LARGEKERNEL_TRITON=1 (or `dwconv.TRITON = True`); otherwise cuDNN.
import os as _os  # noqa: E402

TRITON = _os.environ.get("LARGEKERNEL_TRITON", "0") == "1"
_triton_module = None


def _triton_dw():
    """The `triton_dw` module when its kernels can run here, else False (checked once)."""
    global _triton_module
    if _triton_module is None:
        try:
            from largekernel.layers import triton_dw
            _triton_module = triton_dw if triton_dw.available() else False
        except Exception:  # triton missing or broken: stay on F.conv2d
            _triton_module = False
    return _triton_module


def _use_triton(x: torch.Tensor) -> bool:
    return (x.device.type == "cuda" and TRITON and x.dim() == 4 and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting() and not torch.jit.is_scripting()
            and not torch.jit.is_tracing() and bool(_triton_dw()))
