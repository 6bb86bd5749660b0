"""`largekernel bench`: model and depthwise-conv speed, side by side with baselines in the same run.

Every comparison is a ratio of medians over interleaved rounds (A, B, C, A, B, C, ...), so machine
load hits all candidates alike. Baselines: the authors' forward with stock ops on the same weights
(`baselines.reference_forward`) and ConvNeXt-T from stock ops. The machine's fp32 GEMM peak and
memory bandwidth are measured in the same run, and depthwise convs are reported as a share of the
roofline min(peak, AI x bandwidth).

Precision axis (`precision="bf16"` or `"all"`): largekernel prepared by `set_precision`, against the
authors' forward and ConvNeXt-T each in fp32 and under `torch.autocast(bfloat16)` (their bf16), the
ratios taken against each baseline's faster precision; the bf16 GEMM roof is measured in the same run.
"""
from __future__ import annotations

import copy
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import malloc
from ..layers.dwconv import DepthwiseConv2d
from ..layers.reparam import reparameterize
from ..models.registry import create_model
from ..precision import bf16_emulated, cpu_bf16_units, resolve_precision, set_precision
from .baselines import ConvNeXt, Reference

DW_SHAPES = ((80, 56, 13), (160, 28, 13), (320, 14, 13), (640, 7, 13))  # UniRepLKNet-T's 13x13 stages


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate, rounds interleaved across candidates."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(), dtype="float32",
                malloc=("keep_freed_memory (trim/mmap thresholds raised)" if malloc._done else "glibc default")
                + (f"; GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}" if "GLIBC_TUNABLES" in os.environ else ""))


def measure_roof(rounds: int = 5, bf16: bool = False) -> dict:
    """fp32 GEMM peak (GFLOP/s, the better of 1024^3 and 2048^3 matmuls), memory bandwidth (GB/s,
    a 256 MB copy: read + write) and, with `bf16`, the bf16 GEMM peak (fp32 accumulation)."""
    fp32_sizes = (1024, 2048)
    mats = {n: (torch.randn(n, n), torch.randn(n, n)) for n in fp32_sizes}
    cands = {n: (lambda a=a, b=b: torch.mm(a, b)) for n, (a, b) in mats.items()}
    # bf16: the square products where the CPU has bf16 units, and always UniRepLKNet-T's first
    # Linear at 224 (3136 x 320 @ 320 x 1280): emulated bf16 (no units) takes another, slower
    # path for square products than for the model's shapes, so that alone would misstate the roof
    shapes = {f"bf16_{n}": (n, n, n) for n in (fp32_sizes if cpu_bf16_units() else ())}
    shapes["bf16_t"] = (3136, 320, 1280)
    if bf16:
        for k, (m, kk, n) in shapes.items():
            a, b = torch.randn(m, kk).bfloat16(), torch.randn(n, kk).bfloat16()
            cands[k] = lambda a=a, b=b: F.linear(a, b)
    src, dst = torch.empty(64 * 2**20), torch.empty(64 * 2**20)
    src.normal_()
    t = interleaved({**cands, "copy": lambda: dst.copy_(src)}, rounds, warmup=2)
    roof = dict(gemm_gflops=max(2 * n**3 / t[n] / 1e9 for n in fp32_sizes),
                bandwidth_gbs=2 * src.numel() * 4 / t["copy"] / 1e9)
    if bf16:
        roof["bf16_gemm_gflops"] = max(2 * m * kk * n / t[k] / 1e9 for k, (m, kk, n) in shapes.items())
    return roof


def bench_dwconv(batch: int, rounds: int, roof: dict, shapes=DW_SHAPES) -> list[dict]:
    """Depthwise conv forward and forward+backward per stage shape (NCHW input): stock `F.conv2d` in
    NCHW and in channels_last, and largekernel's `DepthwiseConv2d`; ms, share of the roofline
    (FLOPs count every tap, padding included) and the speed-up over stock NCHW."""
    rows = []
    for c, size, k in shapes:
        ours = DepthwiseConv2d(c, k, padding=k // 2)
        w = ours.weight.detach()
        x = torch.randn(batch, c, size, size)
        xcl = x.contiguous(memory_format=torch.channels_last)

        def stock(inp, wi=w):
            return F.conv2d(inp, wi, None, 1, k // 2, 1, c)

        def fwd_bwd(fn, inp):
            def run():
                fn(inp.detach().requires_grad_()).sum().backward()
            return run

        def stock_train(inp):
            weight = w.detach().requires_grad_()
            return F.conv2d(inp, weight, None, 1, k // 2, 1, c)

        with torch.inference_mode():
            tf = interleaved({"nchw": lambda: stock(x), "channels_last": lambda: stock(xcl),
                              "largekernel": lambda: ours(x)}, rounds)
        tb = interleaved({"nchw": fwd_bwd(stock_train, x), "channels_last": fwd_bwd(stock_train, xcl),
                          "largekernel": fwd_bwd(ours, x)}, rounds)
        flops = 2 * batch * c * size * size * k * k
        bytes_moved = 2 * 4 * batch * c * size * size
        roof_s = max(flops / (roof["gemm_gflops"] * 1e9), bytes_moved / (roof["bandwidth_gbs"] * 1e9))
        row = dict(channels=c, size=size, kernel=k, batch=batch)
        for name in tf:
            row[f"fwd_{name}_ms"] = 1e3 * tf[name]
            row[f"fwd_{name}_roofline_pct"] = 100 * roof_s / tf[name]
            row[f"fwd_bwd_{name}_ms"] = 1e3 * tb[name]
            row[f"fwd_bwd_{name}_roofline_pct"] = 100 * 3 * roof_s / tb[name]  # fwd + dgrad + wgrad
        row["fwd_bwd_speedup_vs_nchw"] = tb["nchw"] / tb["largekernel"]
        rows.append(row)
    return rows


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def build_candidates(name: str, only: str | None = None) -> dict[str, nn.Module]:
    """The train-form model, the reference on a copy of its weights, and ConvNeXt-T (or `only` one)."""
    ours = create_model(name)
    if only == "largekernel":
        return {only: ours}
    if only == "reference":
        return {only: Reference(ours)}
    if only == "convnext_t":
        return {only: ConvNeXt()}
    return {"largekernel": ours, "reference": Reference(copy.deepcopy(ours)), "convnext_t": ConvNeXt()}


def precisions_of(precision: str) -> tuple[str, ...]:
    """The precisions a bench run compares: "all" -> fp32 and bf16; "auto" -> what auto picks here."""
    if precision == "all":
        return ("fp32", "bf16")
    return (resolve_precision(precision).precision,)


def _autocast_bf16(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()
    return run


def _variants(models: dict[str, nn.Module], precisions: tuple[str, ...]) -> dict[str, tuple[nn.Module, str]]:
    """Candidate name -> (module, how it runs). fp32 alone keeps the plain names; otherwise each
    name carries its precision: largekernel's via `set_precision`, the baselines' bf16 is
    `torch.autocast` (what their code offers), and they always run in fp32 too (their best here may
    be either)."""
    if precisions == ("fp32",):
        return {k: (m, "fp32") for k, m in models.items()}
    out = {}
    for p in precisions:
        m = models["largekernel"] if len(precisions) == 1 else copy.deepcopy(models["largekernel"])
        out[f"largekernel:{p}"] = (set_precision(m, p), p)
    for k in ("reference", "convnext_t"):
        out[f"{k}:fp32"] = (models[k], "fp32")
        out[f"{k}:bf16"] = (models[k], "autocast")
    return out


def gemm_gflop_per_image(name: str, size: int) -> float:
    """GFLOP of the Linear layers (the blocks' C -> 4C -> C MLPs and the head) for one image of
    `size` x `size`: 2 multiply-adds per weight per pixel."""
    m = create_model(name)
    flops = 0
    for i, stage in enumerate(m.stages):
        pixels = (size // (4 * 2 ** i)) ** 2
        for block in stage:
            flops += 2 * pixels * (block.pwconv1[1].weight.numel() + block.pwconv2[0].weight.numel())
    if isinstance(m.head, nn.Linear):
        flops += 2 * m.head.weight.numel()
    return flops / 1e9


def bench_models(name: str, size: int, batch: int, train_batch: int, rounds: int,
                 precision: str = "fp32") -> dict:
    """Inference img/s (deploy form vs the reference on the deploy weights vs ConvNeXt-T) and
    training-step img/s (train form with its branches, AdamW), in each precision of `precision`."""
    torch.manual_seed(0)
    precisions = precisions_of(precision)
    models = build_candidates(name)
    out: dict = {}
    if batch:
        deploy = reparameterize(models["largekernel"].eval())
        infer = _variants({"largekernel": deploy, "reference": Reference(deploy),
                           "convnext_t": models["convnext_t"].eval()}, precisions)
        x = torch.randn(batch, 3, size, size)
        calls = {k: (lambda m=m: m(x)) for k, (m, _) in infer.items()}
        calls = {k: _autocast_bf16(fn) if infer[k][1] == "autocast" else fn for k, fn in calls.items()}
        with torch.inference_mode():
            t = interleaved(calls, rounds)
        out["inference"] = {k: dict(img_s=batch / v, ms=1e3 * v) for k, v in t.items()}
        out["gemm_gflop_per_image"] = gemm_gflop_per_image(name, size)
    if train_batch:
        x = torch.randn(train_batch, 3, size, size)
        y = torch.randint(0, 1000, (train_batch,))
        steps = {}
        for k, (m, how) in _variants(models, precisions).items():
            m.train()
            if how == "autocast":  # its own copy: AdamW state is per parameter set
                m = copy.deepcopy(m)
            step = _train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4), x, y)
            steps[k] = _autocast_bf16(step) if how == "autocast" else step
        t = interleaved(steps, rounds)
        out["train"] = {k: dict(img_s=train_batch / v, ms=1e3 * v) for k, v in t.items()}
    return out


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM). Unlike `ru_maxrss`, which a child
    inherits from its parent at fork, VmHWM belongs to the process image and starts fresh at exec."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_train_memory(name: str, which: str, size: int, batch: int, precision: str = "fp32") -> float:
    """MB of resident memory a training step adds (peak after 2 steps minus the peak before the
    first), measured in a fresh process so candidates do not share an allocator."""
    code = ("import torch; from largekernel.tools import bench as b; "
            "from largekernel.precision import set_precision; "
            f"m = set_precision(b.build_candidates({name!r}, {which!r})[{which!r}].train(), {precision!r}); "
            f"x = torch.randn({batch}, 3, {size}, {size}); y = torch.randint(0, 1000, ({batch},)); "
            "s = b._train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4), x, y); "
            "r0 = b.peak_rss_mb(); s(); s(); print(b.peak_rss_mb() - r0)")
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe for {which} failed:\n{res.stderr[-2000:]}")
    return float(res.stdout.strip().splitlines()[-1])


def run_bench(model: str = "unireplknet_t", size: int = 224, batch: int = 16, train_batch: int = 8,
              rounds: int = 5, parts: tuple[str, ...] = ("roof", "dwconv", "models", "memory"),
              dw_batch: int = 8, precision: str = "fp32") -> dict:
    precisions = precisions_of(precision)
    result: dict = dict(machine=machine_info(), model=model, size=size, batch=batch,
                        train_batch=train_batch, rounds=rounds, precision=precision,
                        precisions=list(precisions),
                        paths=dict(depthwise="DepthwiseConv2d: oneDNN forward in the layout chosen per "
                                             "shape; weight gradient as a depthwise conv with dy as "
                                             "kernel", grn="spatial sums by vecdot; training through its "
                                             "hand-written autograd", compile=False))
    if precision != "fp32":
        result["machine"]["bf16_units"] = cpu_bf16_units() or (
            "none (largekernel's bf16 runs emulated: bf16-rounded values in fp32 arithmetic, slower "
            "than fp32)")
        result["machine"]["auto"] = resolve_precision("auto").reason
        result["machine"]["bf16_emulated"] = bf16_emulated()
    roof = measure_roof(rounds, bf16="bf16" in precisions)
    result["roof"] = roof
    if "dwconv" in parts:
        result["dwconv"] = bench_dwconv(dw_batch, rounds, roof)
    if "models" in parts:
        result["models"] = bench_models(model, size, batch, train_batch, rounds, precision)
    if "memory" in parts and train_batch:
        mem = {w: peak_train_memory(model, w, size, train_batch) for w in ("largekernel", "reference")}
        if "bf16" in precisions:
            mem["largekernel:bf16"] = peak_train_memory(model, "largekernel", size, train_batch, "bf16")
        result["memory_mb"] = mem
    return result


def format_bench(r: dict) -> str:
    m = r["machine"]
    roof = r["roof"]
    lines = [f"{m['cpu']}; {m['cores']} cores, {m['threads']} threads; torch {m['torch']}; "
             f"{m['dtype']}; malloc: {m['malloc']}"]
    if "bf16_units" in m:
        lines.append(f"bf16 units: {m['bf16_units']}; auto: {m['auto']}")
    lines += [f"roof: fp32 GEMM {roof['gemm_gflops']:.0f} GFLOP/s"
              + (f", bf16 GEMM {roof['bf16_gemm_gflops']:.0f} GFLOP/s" if "bf16_gemm_gflops" in roof else "")
              + f", memory {roof['bandwidth_gbs']:.1f} GB/s",
             f"paths: {', '.join(f'{k}={v}' for k, v in r['paths'].items())}", ""]
    if "dwconv" in r:
        lines.append(f"depthwise conv, batch {r['dwconv'][0]['batch']}, ms (% of roofline): "
                     "stock NCHW | stock channels_last | largekernel")
        for d in r["dwconv"]:
            cells = {part: " | ".join(f"{d[f'{part}_{n}_ms']:.2f} ({d[f'{part}_{n}_roofline_pct']:.0f}%)"
                                      for n in ("nchw", "channels_last", "largekernel"))
                     for part in ("fwd", "fwd_bwd")}
            lines.append(f"  {d['kernel']}x{d['kernel']} {d['channels']}@{d['size']}  fwd {cells['fwd']}")
            lines.append(f"      fwd+bwd {cells['fwd_bwd']}  -> {d['fwd_bwd_speedup_vs_nchw']:.1f}x stock NCHW")
        lines.append("")
    for part, title in (("inference", f"inference, deploy form, batch {r['batch']}"),
                        ("train", f"training step, train form + AdamW, batch {r['train_batch']}")):
        if part not in r.get("models", {}):
            continue
        t = r["models"][part]
        ref = max((k for k in t if k.split(":")[0] == "reference"), key=lambda k: t[k]["img_s"])
        base = t[ref]["img_s"]
        lines.append(f"{r['model']} {title}, {r['size']}x{r['size']}:")
        ours = [k for k in t if k.split(":")[0] == "largekernel"]
        for k, v in t.items():
            vs = "".join(f", {t[o]['img_s'] / v['img_s']:.2f}x of it is {o}" for o in ours
                         if k.split(":")[0] == "convnext_t")
            lines.append(f"  {k:18s} {v['img_s']:7.2f} img/s  ({v['img_s'] / base:.2f}x {ref}{vs})")
        if part == "inference" and "gemm_gflop_per_image" in r["models"]:
            g = r["models"]["gemm_gflop_per_image"]
            for o in ours:
                prec = o.split(":")[1] if ":" in o else "fp32"
                if prec == "bf16" and r["machine"].get("bf16_emulated"):
                    prec = "fp32"  # emulated bf16 runs its GEMMs in fp32
                peak = roof["bf16_gemm_gflops" if prec == "bf16" else "gemm_gflops"]
                lines.append(f"  {o}: its Linear layers ({g:.2f} GFLOP/image) alone would take "
                             f"{100 * g * t[o]['img_s'] / peak:.0f}% of its time at the {prec} GEMM roof"
                             + (" (bf16 emulated)" if o.endswith(":bf16") and prec == "fp32" else ""))
        if "bf16_gemm_gflops" in roof and part == "inference":
            lines.append("  (bf16 baselines run under torch.autocast; ratios against the faster reference)")
        lines.append("")
    if "memory_mb" in r:
        lines.append("peak memory added by a training step: " + ", ".join(
            f"{k} {v:.0f} MB" for k, v in r["memory_mb"].items()))
    return "\n".join(lines).rstrip() + "\n"
