"""Triton kernels for a stride-1 depthwise conv 2D (NCHW), forward and backward.

The GPU counterpart of `dwconv.py`, opt-in: `DepthwiseConv2d` routes CUDA tensors here only when
`LARGEKERNEL_TRITON=1` (or `dwconv.TRITON = True`) and Triton is installed (`pip install
"largekernel[gpu]"`); by default CUDA tensors use cuDNN, until these kernels are timed on a GPU. It is never
imported on the CPU path; with `TRITON_INTERPRET=1` the kernels also run on CPU tensors (slowly),
which is how tests/test_triton_dw.py checks their numerics without a GPU.

Kernels (all accumulate in fp32, whatever the input dtype):
- `_fwd_kernel`: one program per (sample, block of BLOCK_C channels, BLOCK_H x BLOCK_W output
  tile); loops over the kernel rows (runtime loop) and columns (unrolled), loading a shifted,
  masked input block per tap and multiplying by the tap's per-channel weight. BLOCK_C > 1 only
  for small planes (14x14, 7x7), so their programs are not mostly idle lanes. Any padding (also
  negative), any dilation.
- input gradient: `_fwd_kernel` on the output gradient with the flipped weight and the
  complementary padding ((K-1)*d - p), which yields the input's size directly.
- `_wgrad_kernel`: dW[c, t] = sum over (n, y, x) of xpad[n, c, y + i*d, x + j*d] * dy[n, c, y, x].
  The grid is channels x tap blocks (BLOCK_T taps) x spatial splits: each program walks its
  split of the flattened (n, y, x) range in BLOCK_P chunks, loads dy once per chunk and reuses
  it for all its taps, and writes its partial sums to a [splits, C, K*K] fp32 buffer; the second
  pass is a `sum(0)` in torch (deterministic, no atomics). The bias gradient is fused: tap block 0
  also sums dy into a [splits, C] buffer.
Block sizes are `triton.autotune`d per shape (key: shapes, kernel, dilation; dtype is added by
Triton); configs far larger than the output are pruned first, and under the interpreter one config
is kept so nothing is benchmarked.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:  # optional: largekernel works without triton; dwconv.py imports this module only for CUDA
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None
    tl = None

HAS_TRITON = triton is not None
_INSTALL = 'the Triton depthwise kernels need triton: pip install "largekernel[gpu]"'


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    if not HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Whether the kernels can run in this process (triton importable and a CUDA device, or the
    interpreter)."""
    return HAS_TRITON and (torch.cuda.is_available() or interpreting())


def _pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


if HAS_TRITON:
    # (BLOCK_C channels, BLOCK_H x BLOCK_W output tile, warps): one channel per program for big
    # planes, several for small ones (a 7x7 plane alone would leave most lanes idle)
    _FWD_CONFIGS = [
        triton.Config({"BLOCK_C": bc, "BLOCK_H": bh, "BLOCK_W": bw}, num_warps=nw)
        for bc, bh, bw, nw in [
            (1, 16, 64, 4), (1, 32, 64, 8), (1, 8, 64, 4), (1, 16, 32, 4), (1, 32, 32, 4),
            (2, 32, 32, 8), (4, 16, 32, 8), (1, 16, 16, 1), (2, 16, 16, 2), (4, 16, 16, 4),
            (8, 16, 16, 8), (4, 8, 8, 1), (8, 8, 8, 2), (16, 8, 8, 4), (32, 8, 8, 8)]
    ]

    def _prune_fwd(configs, nargs, **kwargs):
        nargs = {**nargs, **kwargs}
        c, ho, wo = _pow2(nargs["C"]), _pow2(nargs["Ho"]), _pow2(nargs["Wo"])
        fit = [cf for cf in configs if cf.kwargs["BLOCK_C"] <= c
               and cf.kwargs["BLOCK_H"] <= max(8, ho) and cf.kwargs["BLOCK_W"] <= max(8, wo)]
        fit = fit or configs[-4:-3]
        if interpreting():  # no benchmarking on CPU: the largest block means the fewest programs
            return [max(fit, key=lambda cf: cf.kwargs["BLOCK_C"] * cf.kwargs["BLOCK_H"]
                        * cf.kwargs["BLOCK_W"])]
        return fit

    @triton.autotune(configs=_FWD_CONFIGS, key=["N", "C", "H", "W", "Ho", "Wo", "KH", "KW", "DH", "DW"],
                     prune_configs_by={"early_config_prune": _prune_fwd})
    @triton.jit
    def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, C, H, W, Ho, Wo, PH, PW, DH, DW,
                    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        pid = tl.program_id(0)  # n * channel_blocks + channel block
        tile = tl.program_id(1)
        c_blocks = tl.cdiv(C, BLOCK_C)
        n = pid // c_blocks
        cc = (pid % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None, None]
        c_ok = cc < C
        tiles_w = tl.cdiv(Wo, BLOCK_W)
        oh = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :, None]
        ow = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, None, :]
        plane = (n * C + cc).to(tl.int64)
        x_base = x_ptr + plane * H * W
        w_base = w_ptr + cc * (KH * KW)
        acc = tl.zeros((BLOCK_C, BLOCK_H, BLOCK_W), dtype=tl.float32)
        for i in range(KH):
            ih = oh + i * DH - PH
            row_ok = c_ok & (ih >= 0) & (ih < H)
            row_ptr = x_base + ih * W
            for j in tl.static_range(KW):
                iw = ow + j * DW - PW
                v = tl.load(row_ptr + iw, mask=row_ok & (iw >= 0) & (iw < W), other=0.0)
                wt = tl.load(w_base + (i * KW + j), mask=c_ok, other=0.0)
                acc += v.to(tl.float32) * wt.to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cc, mask=c_ok, other=0.0).to(tl.float32)
        y_ptrs = y_ptr + plane * Ho * Wo + oh * Wo + ow
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=c_ok & (oh < Ho) & (ow < Wo))

    _WGRAD_CONFIGS = [
        triton.Config({"BLOCK_T": bt, "BLOCK_P": bp}, num_warps=nw)
        for bt, bp, nw in [(16, 64, 2), (16, 128, 4), (16, 256, 4), (32, 64, 4), (32, 128, 4),
                           (32, 256, 8), (64, 64, 4), (64, 128, 8)]
    ]

    def _prune_wgrad(configs, nargs, **kwargs):
        nargs = {**nargs, **kwargs}
        taps = _pow2(nargs["KH"] * nargs["KW"])
        fit = [c for c in configs
               if c.kwargs["BLOCK_T"] <= max(16, taps) and c.kwargs["BLOCK_P"] <= nargs["CHUNK"]]
        fit = fit or configs[:1]
        if interpreting():
            return [max(fit, key=lambda c: c.kwargs["BLOCK_T"] * c.kwargs["BLOCK_P"])]
        return fit

    @triton.autotune(configs=_WGRAD_CONFIGS,
                     key=["N", "C", "H", "W", "Ho", "Wo", "KH", "KW", "DH", "DW", "CHUNK"],
                     prune_configs_by={"early_config_prune": _prune_wgrad})
    @triton.jit
    def _wgrad_kernel(x_ptr, dy_ptr, dw_ptr, db_ptr, N, C, H, W, Ho, Wo, PH, PW, DH, DW, CHUNK,
                      KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
        c = tl.program_id(0)
        tb = tl.program_id(1)
        s = tl.program_id(2)
        taps = tb * BLOCK_T + tl.arange(0, BLOCK_T)
        tap_ok = taps < KH * KW
        off_h = ((taps // KW) * DH - PH)[:, None]
        off_w = ((taps % KW) * DW - PW)[:, None]
        hw_o = Ho * Wo
        total = N * hw_o
        start = s * CHUNK
        end = tl.minimum(start + CHUNK, total)
        acc = tl.zeros((BLOCK_T, BLOCK_P), dtype=tl.float32)
        bacc = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for p0 in range(start, end, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            p_ok = p < end
            n = p // hw_o
            r = p % hw_o
            oy = (r // Wo)[None, :]
            ox = (r % Wo)[None, :]
            plane = (n * C + c).to(tl.int64)
            g = tl.load(dy_ptr + plane * hw_o + r, mask=p_ok, other=0.0).to(tl.float32)
            ih = oy + off_h
            iw = ox + off_w
            m = p_ok[None, :] & tap_ok[:, None] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_ptr + plane[None, :] * H * W + ih * W + iw, mask=m, other=0.0)
            acc += v.to(tl.float32) * g[None, :]
            if HAS_BIAS:
                bacc += g
        out = (s * C + c) * (KH * KW) + taps
        tl.store(dw_ptr + out, tl.sum(acc, axis=1), mask=tap_ok)
        if HAS_BIAS:
            if tb == 0:
                tl.store(db_ptr + s * C + c, tl.sum(bacc, axis=0))


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _check_runnable(x: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise ImportError(_INSTALL)
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"the Triton depthwise kernels need a CUDA tensor, got one on {x.device} "
                         "(set TRITON_INTERPRET=1 before importing triton to run them on CPU)")


def conv_forward(x, weight, bias, padding, dilation, out_size=None):
    """y = depthwise conv of contiguous NCHW `x` with `weight` [C, 1, KH, KW], stride 1; output
    [N, C, *out_size] in x's dtype (default size: the conv's)."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    (ph, pw), (dh, dw) = padding, dilation
    ho, wo = out_size if out_size is not None else (h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1))
    y = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    weight = weight.contiguous()
    b = bias.contiguous() if bias is not None else weight  # dummy pointer when there is no bias

    def grid(meta):
        return (n * triton.cdiv(c, meta["BLOCK_C"]),
                triton.cdiv(ho, meta["BLOCK_H"]) * triton.cdiv(wo, meta["BLOCK_W"]))

    with _device_ctx(x):
        _fwd_kernel[grid](x, weight, b, y, n, c, h, w, ho, wo, ph, pw, dh, dw,
                          KH=kh, KW=kw, HAS_BIAS=bias is not None)
    return y


def _sm_count(x: torch.Tensor) -> int:
    if x.device.type == "cuda":
        return torch.cuda.get_device_properties(x.device).multi_processor_count
    return 2


def weight_bias_grad(x, dy, kernel_size, padding, dilation, with_bias: bool, splits=None):
    """(dW [C, 1, KH, KW] fp32, db [C] fp32 or None) for contiguous NCHW x and dy."""
    n, c, h, w = x.shape
    ho, wo = dy.shape[-2:]
    kh, kw = kernel_size
    (ph, pw), (dh, dw) = padding, dilation
    total = n * ho * wo
    if splits is None:  # enough programs to fill the GPU: ~8 per SM at 32 taps per program
        want = 8 * _sm_count(x) // max(1, c * triton.cdiv(kh * kw, 32))
        splits = max(1, min(want, triton.cdiv(total, 1024)))
    chunk = triton.cdiv(triton.cdiv(total, splits), 256) * 256  # a multiple of every BLOCK_P
    splits = triton.cdiv(total, chunk)
    dw_part = torch.empty((splits, c, kh * kw), device=x.device, dtype=torch.float32)
    db_part = torch.empty((splits, c), device=x.device, dtype=torch.float32) if with_bias else dw_part

    def grid(meta):
        return (c, triton.cdiv(kh * kw, meta["BLOCK_T"]), splits)

    with _device_ctx(x):
        _wgrad_kernel[grid](x, dy, dw_part, db_part, n, c, h, w, ho, wo, ph, pw, dh, dw, chunk,
                            KH=kh, KW=kw, HAS_BIAS=with_bias)
    dweight = dw_part.sum(0).view(c, 1, kh, kw)
    return dweight, (db_part.sum(0) if with_bias else None)


class TritonDepthwiseConvFn(torch.autograd.Function):
    """Autograd function over the Triton kernels (inputs: contiguous NCHW x, weight, bias)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.padding, ctx.dilation = padding, dilation
        return conv_forward(x, weight, bias, padding, dilation)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy = dy.contiguous()
        (ph, pw), (dh, dw) = ctx.padding, ctx.dilation
        kh, kw = weight.shape[-2:]
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            # transpose of a stride-1 conv: the flipped kernel with the complementary padding
            dx = conv_forward(dy, weight.flip(-1, -2), None, ((kh - 1) * dh - ph, (kw - 1) * dw - pw),
                              (dh, dw), out_size=x.shape[-2:]).to(x.dtype)
        want_w, want_b = ctx.needs_input_grad[1], ctx.bias_dtype is not None and ctx.needs_input_grad[2]
        if want_w:
            dweight, dbias = weight_bias_grad(x, dy, (kh, kw), ctx.padding, ctx.dilation, want_b)
            dweight = dweight.to(weight.dtype)
        elif want_b:
            dbias = dy.sum((0, 2, 3), dtype=torch.float32)
        if dbias is not None:
            dbias = dbias.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)


def depthwise_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                            padding=0, dilation=1) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)` on the Triton kernels.

    x: [N, C, H, W] (any memory format; channels_last comes back channels_last), weight
    [C, 1, KH, KW], bias [C] or None. The output has x's dtype (under autocast: the autocast
    dtype); sums are fp32. Differentiable in x, weight and bias.
    """
    _check_runnable(x)
    if x.dim() != 4:
        raise ValueError(f"depthwise_conv2d_triton expects a 4-D NCHW input, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if weight.dim() != 4 or weight.shape[:2] != (c, 1):
        raise ValueError(f"weight must be [{c}, 1, KH, KW] for a depthwise conv over {c} channels, "
                         f"got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (c,):
        raise ValueError(f"bias must be [{c}], got {tuple(bias.shape)}")
    padding, dilation = _pair(padding), _pair(dilation)
    if min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"dilation must be >= 1 and padding >= 0, got {dilation} and {padding}")
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    y = TritonDepthwiseConvFn.apply(x.contiguous(), weight, bias, padding, dilation)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y
