"""GPU depthwise conv: largekernel's Triton kernels vs cuDNN (F.conv2d), forward and forward+backward.

Shapes are UniRepLKNet-T's 13x13 stages at batch 64 (80@56, 160@28, 320@14, 640@7) plus 31x31
cases (RepLKNet-31B's first stage, 128@56, and the CPU benchmark's 160@14), in fp32 and bf16.
Each case is first checked against cuDNN (relative error of y, dx, dW, db), then timed with
`triton.testing.do_bench` (median; the Triton autotuning runs before timing). Ratios are
cuDNN time / Triton time: above 1 means the Triton kernel is faster. fp32 runs with TF32 off
(both sides compute in fp32) unless --tf32; cudnn.benchmark is on unless --no-cudnn-benchmark.

    python benchmarks/triton_dw.py [--batch 64] [--dtypes float32,bfloat16] [--bias] [--json]
    python benchmarks/triton_dw.py --smoke   # no GPU: runs the script's code on CPU through
                                             # Triton's interpreter at tiny shapes (timings meaningless)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

SHAPES = [  # (channels, size, kernel)
    (80, 56, 13), (160, 28, 13), (320, 14, 13), (640, 7, 13), (128, 56, 31), (160, 14, 31),
]
SMOKE_SHAPES = [(4, 9, 5), (3, 7, 13)]


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--bias", action="store_true", help="convs with a bias (UniRepLKNet's have none)")
    p.add_argument("--tf32", action="store_true", help="let cuDNN use TF32 for fp32")
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes")
    return p.parse_args()


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> None:
    args = parse()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch
    import torch.nn.functional as F

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("benchmarks/triton_dw.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "use --smoke to run it on CPU through Triton's interpreter")
    try:
        import triton
        import triton.testing
    except ImportError:
        sys.exit('benchmarks/triton_dw.py needs triton: pip install "largekernel[gpu]"')
    from largekernel.layers import triton_dw as T

    device = "cpu" if args.smoke else "cuda"
    shapes, batch = (SMOKE_SHAPES, 2) if args.smoke else (SHAPES, args.batch)
    if device == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32

    def bench(fn, grads) -> float:
        """Median milliseconds of fn()."""
        if device == "cuda":
            return triton.testing.do_bench(fn, grad_to_none=grads, return_mode="median")
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for c, size, k in shapes:
            torch.manual_seed(0)
            pad = k // 2
            x = torch.randn(batch, c, size, size, device=device, dtype=dtype, requires_grad=True)
            w = (torch.randn(c, 1, k, k, device=device, dtype=dtype) / k).requires_grad_()
            b = torch.randn(c, device=device, dtype=dtype, requires_grad=True) if args.bias else None
            g = torch.randn(batch, c, size, size, device=device, dtype=dtype)
            leaves = [t for t in (x, w, b) if t is not None]

            def cudnn(x=x, w=w, b=b, c=c, pad=pad):
                return F.conv2d(x, w, b, 1, pad, 1, c)

            def tri(x=x, w=w, b=b, pad=pad):
                return T.depthwise_conv2d_triton(x, w, b, pad, 1)

            # correctness against cuDNN (bf16: both round their output to bf16; the sums are fp32)
            check = {}
            for name, fn in (("cudnn", cudnn), ("triton", tri)):
                for t in leaves:
                    t.grad = None
                y = fn()
                y.backward(g)
                check[name] = [y] + [t.grad.clone() for t in leaves]
            errs = dict(zip(["y", "dx", "dw", "db"],
                            (rel(a, b_) for a, b_ in zip(check["triton"], check["cudnn"]))))
            fwd_cfg = T._fwd_kernel.best_config.kwargs if hasattr(T._fwd_kernel, "best_config") else {}
            wgrad_cfg = T._wgrad_kernel.best_config.kwargs if hasattr(T._wgrad_kernel, "best_config") else {}

            def step(fn, g=g):
                fn().backward(g)

            with torch.no_grad():
                t_fwd = {name: bench(fn, None) for name, fn in (("cudnn", cudnn), ("triton", tri))}
            t_step = {name: bench(lambda fn=fn: step(fn), leaves)
                      for name, fn in (("cudnn", cudnn), ("triton", tri))}
            rows.append(dict(
                dtype=dtype_name, batch=batch, channels=c, size=size, kernel=k,
                cudnn_fwd_ms=t_fwd["cudnn"], triton_fwd_ms=t_fwd["triton"],
                fwd_ratio=t_fwd["cudnn"] / t_fwd["triton"],
                cudnn_step_ms=t_step["cudnn"], triton_step_ms=t_step["triton"],
                step_ratio=t_step["cudnn"] / t_step["triton"],
                rel_err=errs, fwd_config=dict(fwd_cfg), wgrad_config=dict(wgrad_cfg)))
            del x, w, b, g, check
    info = dict(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter, smoke)",
        torch=torch.__version__, triton=triton.__version__,
        cudnn=torch.backends.cudnn.version() if device == "cuda" else None,
        cudnn_benchmark=not args.no_cudnn_benchmark, tf32=args.tf32, bias=args.bias,
        host=platform.node(), layout="NCHW", stride=1, dilation=1, padding="same")
    if args.json:
        print(json.dumps(dict(info, results=rows), indent=2))
        return
    print(f"{info['device']}  torch {info['torch']}  triton {info['triton']}  cudnn {info['cudnn']}  "
          f"tf32={args.tf32}  bias={args.bias}")
    print("ratio = cuDNN ms / Triton ms (> 1: Triton faster); step = forward + backward (dx, dW[, db])")
    head = (f"{'dtype':9} {'shape':>16} {'K':>3} | {'cudnn fwd':>9} {'triton':>8} {'ratio':>6} | "
            f"{'cudnn step':>10} {'triton':>8} {'ratio':>6} | max rel err")
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = f"{r['batch']}x{r['channels']}@{r['size']}"
        print(f"{r['dtype']:9} {shape:>16} {r['kernel']:>3} | {r['cudnn_fwd_ms']:9.3f} "
              f"{r['triton_fwd_ms']:8.3f} {r['fwd_ratio']:6.2f} | {r['cudnn_step_ms']:10.3f} {r['triton_step_ms']:8.3f} "
              f"{r['step_ratio']:6.2f} | {max(r['rel_err'].values()):.1e}")


if __name__ == "__main__":
    main()
