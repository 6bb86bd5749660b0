"""Precision policy: `set_precision(model, "bf16" | "fp32" | "auto")` prepares a model in place.

bf16 is chosen per op, not by a global autocast: the GEMMs (each block's two Linear layers, other
Linear layers and 1x1 convs) run in bf16 with fp32 accumulation; each depthwise conv runs in fp32
or bf16, whichever a per-shape timing says is faster (a fixed rule, fp32, in deterministic mode or
under `set_depthwise_policy("rule")`); BatchNorm/LayerNorm statistics, GRN's norm, the SE gate, the
residual stream, softmax and the loss stay fp32. Inputs and outputs are fp32 and parameters stay
fp32 masters (optimizers and checkpoints are unchanged): bf16 copies of the weights are made in the
forward, differentiably when autograd records, and cached per parameter version under no-grad.

The mechanism is an instance-level `forward` on each prepared module (UniRepLKNet blocks, Linear
and 1x1 conv layers outside them), so the class code, the state dict and the fp32 path are
untouched; `set_precision(model, "fp32")` deletes them and gives outputs bit-identical to a model
never prepared. Because a block's bf16 forward reads its submodules at call time, it survives
`reparameterize()` (the folded block runs the bf16 deploy path, with GRN's scale folded into the
per-sample down-projection weights as the fp32 deploy path does).

On a CPU without bf16 units (no `amx_bf16` / `avx512_bf16`), PyTorch's bf16 kernels are emulated
and slow (a bf16 GEMM ~12x slower than the fp32 one on an AVX2 EPYC). There, "bf16" runs the same
policy *emulated*: every value the bf16 path would hold in bf16 is rounded to bf16 (round to
nearest even) but kept in fp32 storage, and the GEMMs and convolutions run in fp32 on those
bf16-valued operands. A product of two bf16 numbers is exact in fp32 and the native kernels
accumulate in fp32 too, so the results equal the native bf16 ones up to the order of summation
(and a rare one-ulp double rounding): bf16's numerics at about fp32's speed, for checking a
model's bf16 accuracy on any CPU. It is not a speed-up. `LARGEKERNEL_BF16=native|emulate` (or
`set_precision(..., emulate=True|False)`) overrides the choice.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers.dwconv import DepthwiseConv2d, _DepthwiseConvFn, _pair, _timed
from .layers.dwconv import conv2d as dw_conv2d
from .layers.norm import EPS, GRN
from .layers.reparam import DilatedReparamBlock
from .models.unireplknet import UniRepLKNetBlock, fast_inference

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
BF16 = torch.bfloat16


# ---- what the hardware offers --------------------------------------------------------------------

def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_bf16_units() -> list[str]:
    """Which of the CPU's bf16 matrix/vector units exist: `amx_bf16`, `avx512_bf16` (from
    /proc/cpuinfo; where that is unreadable, from PyTorch's own CPU feature checks)."""
    flags = cpu_flags()
    if flags:
        return [f for f in BF16_CPU_FLAGS if f in flags]
    found = []
    cpu = getattr(torch, "cpu", None)
    for flag, probe in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        fn = getattr(cpu, probe, None)
        if callable(fn) and fn():
            found.append(flag)
    return found


# ---- the choice ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrecisionChoice:
    """What `set_precision` was asked for, what it applied, and why."""

    requested: str
    precision: str
    reason: str
    emulated: bool = False  # bf16 numerics computed in fp32 arithmetic (see the module's doc)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> PrecisionChoice:
    """`precision` ("fp32", "bf16" or "auto") resolved for `device`, with the reason.

    `auto`: bf16 on a CPU with `amx_bf16` or `avx512_bf16` (bf16 GEMMs there run several times
    faster than fp32 ones), or on a CUDA device that supports bf16; fp32 everywhere else, where bf16
    is emulated and slower than fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision != "auto":
        return PrecisionChoice(precision, precision, "requested")
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return PrecisionChoice("auto", "bf16" if ok else "fp32",
                               "this CUDA device supports bf16" if ok
                               else "this CUDA device does not support bf16")
    if device.type != "cpu":
        return PrecisionChoice("auto", "fp32", f"no bf16 policy for device type {device.type!r}")
    units = cpu_bf16_units()
    if units:
        return PrecisionChoice("auto", "bf16", f"the CPU ({cpu_name()}) has {' and '.join(units)}")
    return PrecisionChoice("auto", "fp32", f"the CPU ({cpu_name()}) has neither amx_bf16 nor "
                           "avx512_bf16: bf16 would run emulated, slower than fp32")


FP32 = PrecisionChoice("fp32", "fp32", "requested")
EMULATION_ENV = "LARGEKERNEL_BF16"


def bf16_emulated(device: torch.device | str = "cpu", emulate: bool | None = None) -> bool:
    """Whether bf16 runs emulated on `device`: `emulate` if given, else the LARGEKERNEL_BF16
    environment variable ("native" or "emulate"), else on a CPU without bf16 units. Never on CUDA."""
    return _emulation(device, emulate) is not None


def _emulation(device: torch.device | str, emulate: bool | None) -> str | None:
    """None where bf16 runs natively, else why it is emulated."""
    if torch.device(device).type != "cpu":
        return None
    if emulate is not None:
        return "requested" if emulate else None
    env = os.environ.get(EMULATION_ENV, "").strip().lower()
    if env in ("native", "emulate"):
        return f"{EMULATION_ENV}=emulate" if env == "emulate" else None
    if env:
        raise ValueError(f"{EMULATION_ENV}={env!r}: use 'native' or 'emulate' (or leave it unset)")
    return None if cpu_bf16_units() else f"the CPU ({cpu_name()}) has no bf16 units"


def get_precision(model: nn.Module) -> PrecisionChoice | None:
    """The choice `set_precision` last applied to `model` (None if it never ran on it)."""
    return getattr(model, "largekernel_precision", None)


def set_precision(model: nn.Module, precision: str = "auto",
                  device: torch.device | str | None = None, emulate: bool | None = None) -> nn.Module:
    """Prepare `model` in place for `precision` ("fp32", "bf16" or "auto") and return it.

    Works for any module tree holding UniRepLKNet blocks (classifiers, features_only backbones, the
    modality models). "fp32" removes a previous preparation exactly. The choice and its reason are
    stored (`get_precision(model)`) and logged. bf16 on a CPU without bf16 units runs emulated
    (fp32 arithmetic on bf16-rounded values: bf16's numerics, not its speed); `emulate` (or
    LARGEKERNEL_BF16=native|emulate) forces either way."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"set_precision needs an nn.Module, got {type(model).__name__}")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    choice = resolve_precision(precision, device)
    why = _emulation(device, emulate) if choice.precision == "bf16" else None
    if why is not None:
        choice = PrecisionChoice(choice.requested, "bf16", choice.reason + "; emulated: bf16-rounded "
                                 "values in fp32 arithmetic (bf16's numerics, not its speed"
                                 + ("" if why == "requested" else f": {why}") + ")", emulated=True)
    for m in model.modules():
        if isinstance(m.__dict__.get("forward"), _Bf16Forward):
            del m.forward
    if choice.precision == "bf16":
        _install(model, choice.emulated)
    model.largekernel_precision = choice
    (log.debug if choice == FP32 else log.info)("precision %s -> %s (%s)", choice.requested,
                                                 choice.precision, choice.reason)
    return model


def _install(model: nn.Module, emulate: bool) -> None:
    inside_blocks = set()
    for m in model.modules():
        if isinstance(m, UniRepLKNetBlock):
            m.forward = _BlockBf16(m, emulate)
            inside_blocks.update(id(s) for s in m.modules())
    for m in model.modules():
        if id(m) in inside_blocks:
            continue
        if isinstance(m, nn.Linear):
            m.forward = _LinearBf16(m, emulate)
        elif (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1
              and m.padding_mode == "zeros"):
            m.forward = _Conv1x1Bf16(m, emulate)


# ---- bf16 copies of the fp32 master weights ------------------------------------------------------

def to_bf16(t: torch.Tensor, emulate: bool) -> torch.Tensor:
    """`t` rounded to bf16 (to nearest even): natively a bf16 tensor (a no-op on one), emulated a
    tensor of `t`'s dtype holding the bf16 values. The bf16 forwards call it on each result the
    native path's op writes in bf16, so both paths round at the same places."""
    if not emulate:
        return t.to(BF16)
    return t.to(BF16).to(t.dtype)


class _WeightCache:
    """bf16 copies of parameters. With autograd recording, a fresh differentiable cast per forward
    (the gradient reaches the fp32 master; a copy kept across steps would go stale after
    `optimizer.step()`). Under no-grad, one copy per parameter, reused while its version counter
    (bumped by every in-place update: optimizer steps, `load_state_dict`, `copy_`) and storage are
    unchanged."""

    def __init__(self, emulate: bool = False):
        self.emulate = emulate
        self._copies: dict[int, tuple[tuple, torch.Tensor]] = {}

    def get(self, p: torch.Tensor | None) -> torch.Tensor | None:
        if p is None:
            return None
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return to_bf16(p, self.emulate)
        key = (p._version, p.data_ptr(), p.device, tuple(p.shape))
        hit = self._copies.get(id(p))
        if hit is not None and hit[0] == key:
            return hit[1]
        copy = to_bf16(p.detach(), self.emulate)
        self._copies[id(p)] = (key, copy)
        return copy

    def __getstate__(self) -> dict:  # copies and pickles start with an empty cache
        return {"emulate": self.emulate, "_copies": {}}

    def __deepcopy__(self, memo) -> "_WeightCache":
        return _WeightCache(self.emulate)


class _Bf16Forward:
    """Base of the instance-level forwards `set_precision` installs (and removes). `self.bf16(t)`
    rounds a value the native path holds in bf16 (a no-op on a native bf16 result)."""

    def __init__(self, module: nn.Module, emulate: bool = False):
        self.module = module
        self.emulate = emulate
        self.cache = _WeightCache(emulate)

    def bf16(self, t: torch.Tensor) -> torch.Tensor:
        return to_bf16(t, self.emulate)


class _LinearBf16(_Bf16Forward):
    """nn.Linear in bf16 (fp32 accumulation inside the GEMM); fp32 in, fp32 out."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return self.bf16(F.linear(self.bf16(x), self.cache.get(m.weight),
                                  self.cache.get(m.bias))).to(x.dtype)


class _Conv1x1Bf16(_Bf16Forward):
    """A 1x1 nn.Conv2d (a GEMM over pixels) in bf16; fp32 in, fp32 out."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return self.bf16(F.conv2d(self.bf16(x), self.cache.get(m.weight), self.cache.get(m.bias),
                                  m.stride, m.padding, m.dilation, m.groups)).to(x.dtype)


# ---- depthwise convs: fp32 or bf16, per shape ----------------------------------------------------

DEPTHWISE_POLICIES = ("autotune", "rule", "fp32", "bf16")
_dw_policy = "autotune"
_dw_choices: dict[tuple, str] = {}


def set_depthwise_policy(policy: str) -> None:
    """How bf16-prepared models run depthwise convs: "autotune" (time fp32 and bf16 once per
    shape, casts included, and cache the faster), "rule" (fp32: exact, and never the slow bf16
    depthwise kernels some CPUs fall onto), or a forced "fp32" / "bf16". Deterministic mode
    (`torch.use_deterministic_algorithms`) uses "rule", so every process computes the same sums."""
    global _dw_policy
    if policy not in DEPTHWISE_POLICIES:
        raise ValueError(f"unknown depthwise precision policy {policy!r}; use one of "
                         f"{', '.join(DEPTHWISE_POLICIES)}")
    _dw_policy = policy
    _dw_choices.clear()


def depthwise_choices() -> dict[tuple, str]:
    """The cached dtype choice per depthwise conv signature (for `largekernel bench`, debugging)."""
    return dict(_dw_choices)


def _depthwise_dtype(conv: nn.Conv2d, x: torch.Tensor, cache: _WeightCache) -> str:
    policy = _dw_policy
    if policy == "autotune" and (torch.are_deterministic_algorithms_enabled() or cache.emulate
                                 or torch.compiler.is_compiling() or x.device.type != "cpu"):
        policy = "rule"
    if policy in ("fp32", "bf16"):
        return policy
    if policy == "rule":
        return "fp32"
    key = (tuple(x.shape), tuple(conv.weight.shape), _pair(conv.padding), _pair(conv.dilation),
           x.is_contiguous(), conv.bias is not None)
    choice = _dw_choices.get(key)
    if choice is None:
        with torch.no_grad():
            times = {"fp32": _timed(lambda: _depthwise_run(conv, x, "fp32", cache)),
                     "bf16": _timed(lambda: _depthwise_run(conv, x, "bf16", cache))}
        choice = _dw_choices[key] = min(times, key=times.get)
        log.debug("depthwise %s: fp32 %.2f ms, bf16 %.2f ms -> %s", key, 1e3 * times["fp32"],
                  1e3 * times["bf16"], choice)
    return choice


def _depthwise_run(conv: nn.Conv2d, x: torch.Tensor, dtype: str, cache: _WeightCache) -> torch.Tensor:
    if dtype == "fp32":
        return conv(x)
    xb, wb, bb = to_bf16(x, cache.emulate), cache.get(conv.weight), cache.get(conv.bias)
    pad, dil = _pair(conv.padding), _pair(conv.dilation)
    if (isinstance(conv, DepthwiseConv2d) and torch.is_grad_enabled() and x.device.type == "cpu"
            and not torch.compiler.is_compiling()):
        out = _DepthwiseConvFn.apply(xb, wb, bb, pad, dil)
    elif x.device.type == "cpu" and not torch.compiler.is_compiling():
        out = dw_conv2d(xb, wb, bb, 1, pad, dil, conv.groups)
    else:
        out = F.conv2d(xb, wb, bb, 1, pad, dil, conv.groups)
    return to_bf16(out, cache.emulate).to(x.dtype)


def _depthwise(conv: nn.Conv2d, x: torch.Tensor, cache: _WeightCache) -> torch.Tensor:
    return _depthwise_run(conv, x, _depthwise_dtype(conv, x, cache), cache)


def _dwconv_block(m: nn.Module, x: torch.Tensor, cache: _WeightCache) -> torch.Tensor:
    """A block's `dwconv` (Dilated Reparam Block, train or deploy form, or one conv); fp32 out,
    BatchNorm in fp32."""
    if not isinstance(m, DilatedReparamBlock):
        return _depthwise(m, x, cache)
    if m.deploy:
        return _depthwise(m.lk_origin, x, cache)
    out = m.origin_bn(_depthwise(m.lk_origin, x, cache))
    for k, r in zip(m.kernel_sizes, m.dilates):
        out = out + getattr(m, f"dil_bn_k{k}_{r}")(_depthwise(getattr(m, f"dil_conv_k{k}_{r}"), x, cache))
    return out


# ---- the block ------------------------------------------------------------------------------------

def grn_scale_fp32(grn: GRN, t: torch.Tensor) -> torch.Tensor:
    """GRN's per-sample, per-channel factor (N, 1, 1, C) of a bf16 NHWC tensor, in fp32: the
    spatial sums of squares accumulate in fp32 (`vector_norm` with dtype=float32), as do the
    channel mean and the division."""
    n, h, w, c = t.shape
    g = torch.linalg.vector_norm(t.reshape(n, h * w, c), 2, dim=1, dtype=torch.float32).view(n, 1, 1, c)
    nx = g / (g.mean(dim=-1, keepdim=True) + EPS)
    return grn.gamma.float() * nx + 1


_fused_bf16_linear_gelu = (hasattr(torch.ops.mkldnn, "_linear_pointwise")
                           and torch.backends.mkldnn.is_available())


def _linear_gelu_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """GELU(x W^T + b) in bf16, in oneDNN's GEMM epilogue where this CPU has a bf16 kernel for it
    (AVX2-only CPUs have none: plain ops there)."""
    global _fused_bf16_linear_gelu
    if _fused_bf16_linear_gelu and x.is_contiguous():
        try:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
        except (RuntimeError, NotImplementedError):
            _fused_bf16_linear_gelu = False
    return F.gelu(F.linear(x, weight, bias))


class _BlockBf16(_Bf16Forward):
    """UniRepLKNetBlock's forward under the bf16 policy (train and deploy forms).

    x (fp32) -> depthwise (dtype per shape; fp32 out) -> BN (fp32) -> SE (fp32; it acts on pooled
    vectors) -> cast to bf16 once, NHWC -> Linear(C, 4C) -> GELU -> GRN (scale in fp32) ->
    Linear(4C, C), all bf16 -> back to fp32 before the BN, layer scale and residual. The 4C-wide
    activation is never cast."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        blk, cache, bf16 = self.module, self.cache, self.bf16
        if blk.deploy and fast_inference(x):
            return self._deploy_cpu(x)
        y = blk.se(blk.norm(_dwconv_block(blk.dwconv, x, cache)))
        lin1, grn, lin2 = blk.pwconv1[1], blk.act[1], blk.pwconv2[0]
        t = bf16(F.linear(bf16(y.permute(0, 2, 3, 1)), cache.get(lin1.weight), cache.get(lin1.bias)))
        t = bf16(F.gelu(t))
        scale = bf16(grn_scale_fp32(grn, t))
        t = bf16(t * scale if grn.beta is None else torch.addcmul(cache.get(grn.beta), t, scale))
        t = bf16(F.linear(t, cache.get(lin2.weight), cache.get(lin2.bias))).permute(0, 3, 1, 2).to(x.dtype)
        if len(blk.pwconv2) > 2:
            t = blk.pwconv2[2](t)
        if blk.gamma is not None:
            t = blk.gamma.view(1, -1, 1, 1) * t
        return x + blk.drop_path(t)

    def _deploy_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """The fp32 deploy path's schedule in bf16: the SE gate writes the bf16 NHWC tensor the
        first GEMM reads; GELU in its epilogue; GRN's fp32 scale folded into per-sample bf16
        down-projection weights where HW > 2C."""
        blk, cache, bf16 = self.module, self.cache, self.bf16
        y = _dwconv_block(blk.dwconv, x, cache)
        n, c, h, w = y.shape
        s = torch.sigmoid(blk.se.up(F.relu(blk.se.down(F.adaptive_avg_pool2d(y, 1)))))
        t = torch.empty((n, h, w, c), dtype=y.dtype if self.emulate else BF16, device=y.device)
        t = bf16(torch.mul(y.permute(0, 2, 3, 1), s.view(n, 1, 1, c), out=t))
        lin1, grn, down = blk.pwconv1[1], blk.act[1], blk.pwconv2[0]
        if self.emulate:  # as the unfused native path: the GEMM's output is rounded before GELU
            t = bf16(F.gelu(bf16(F.linear(t, cache.get(lin1.weight), cache.get(lin1.bias)))))
        else:
            t = _linear_gelu_bf16(t, cache.get(lin1.weight), cache.get(lin1.bias))
        scale = grn_scale_fp32(grn, t)
        if h * w > 2 * c:
            weight = bf16(down.weight * scale.view(n, 1, -1))
            t = bf16(torch.baddbmm(cache.get(down.bias).view(1, 1, c), t.view(n, h * w, -1),
                                   weight.transpose(1, 2)))
            t = t.view(n, h, w, c)
        else:
            t = bf16(t * bf16(scale))
            t = bf16(F.linear(t, cache.get(down.weight), cache.get(down.bias)))
        return x + t.permute(0, 3, 1, 2)
