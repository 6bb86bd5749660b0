"""Depthwise conv forward+backward: stock nn.Conv2d vs largekernel's DepthwiseConv2d, same run.

Shapes are UniRepLKNet-T's large-kernel stages (13x13) plus a 31x31 case. Rounds are interleaved
(stock, fast, stock, fast, ...) and medians compared, so machine load hits both alike.

    python benchmarks/dwconv_backward.py [--batch 8] [--rounds 5] [--threads 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from largekernel.layers.dwconv import DepthwiseConv2d

SHAPES = [  # (channels, size, kernel)
    (80, 56, 13), (160, 28, 13), (320, 14, 13), (640, 7, 13), (160, 14, 31),
]


def step_time(conv: nn.Module, x: torch.Tensor) -> float:
    x = x.detach().requires_grad_()
    start = time.perf_counter()
    conv(x).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for c, size, k in SHAPES:
        fast = DepthwiseConv2d(c, k, padding=k // 2)
        stock = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
        stock.load_state_dict(fast.state_dict())
        x = torch.randn(args.batch, c, size, size)
        step_time(stock, x), step_time(fast, x)  # warm-up
        times = {"stock": [], "fast": []}
        for _ in range(args.rounds):
            times["stock"].append(step_time(stock, x))
            times["fast"].append(step_time(fast, x))
        med = {k_: statistics.median(v) for k_, v in times.items()}
        rows.append(dict(channels=c, size=size, kernel=k, batch=args.batch,
                         stock_ms=1000 * med["stock"], fast_ms=1000 * med["fast"],
                         speedup=med["stock"] / med["fast"]))
    info = dict(machine=platform.processor() or platform.machine(), threads=args.threads,
                torch=torch.__version__, dtype="float32", layout="NCHW", rounds=args.rounds)
    if args.json:
        print(json.dumps(dict(info, results=rows), indent=2))
        return
    print(f"depthwise fwd+bwd, {info}")
    print(f"{'shape':>22}  {'stock ms':>9}  {'fast ms':>8}  {'speedup':>7}")
    for r in rows:
        shape = f"{r['batch']}x{r['channels']}x{r['size']}x{r['size']} k{r['kernel']}"
        print(f"{shape:>22}  {r['stock_ms']:9.1f}  {r['fast_ms']:8.1f}  {r['speedup']:6.1f}x")


if __name__ == "__main__":
    main()
