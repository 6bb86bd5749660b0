"""The Triton depthwise kernels (layers/triton_dw.py) equal F.conv2d, run by Triton's CPU interpreter.

TRITON_INTERPRET=1 must be set before triton is imported and would leak into every other test of
the pytest process, so the kernels run in one subprocess: this file, run as a script (`--worker`),
computes every case and prints the relative errors as JSON; the tests below assert on them. Also:
importing largekernel and using DepthwiseConv2d on CPU never imports triton.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--worker" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import json
import subprocess

import pytest

# (name, N, C, H, W, K, dilation, padding (None: 'same'), bias, dtype)
CASES = [
    ("k3", 2, 3, 9, 9, 3, 1, None, True, "float32"),
    ("k5_d2_even", 2, 4, 8, 11, 5, 2, None, True, "float32"),
    ("k7_nobias", 2, 5, 12, 7, 7, 1, None, False, "float32"),
    ("k13", 2, 3, 10, 10, 13, 1, None, True, "float32"),
    ("k13_plane7", 2, 4, 7, 7, 13, 1, None, True, "float32"),
    ("k3_d3", 2, 4, 11, 12, 3, 3, None, True, "float32"),
    ("k5_d2_pad1x2", 2, 3, 10, 9, 5, 2, (1, 2), True, "float32"),
    ("k3_pad3_grows", 2, 3, 8, 9, 3, 1, 3, True, "float32"),
    ("bf16_k13", 2, 4, 10, 10, 13, 1, None, True, "bfloat16"),
    ("bf16_k5_d2", 2, 3, 9, 12, 5, 2, None, True, "bfloat16"),
]
# bf16 inputs, fp32 sums, bf16 outputs/gradients: the reference is F.conv2d in float64 on the same
# bf16 values, so the error is the final rounding to bf16 (2^-9 relative), not accumulated error.
TOL = {"float32": 1e-5, "bfloat16": 1e-2}


def _rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _case(T, name, n, c, h, w, k, d, padding, bias, dtype):
    import torch
    import torch.nn.functional as F

    dt = getattr(torch, dtype)
    torch.manual_seed(sum(map(ord, name)))
    pad = padding if padding is not None else d * (k - 1) // 2
    x, weight = torch.randn(n, c, h, w).to(dt), torch.randn(c, 1, k, k).to(dt)
    b = torch.randn(c).to(dt) if bias else None
    leaves = [[t.clone().requires_grad_() if t is not None else None for t in (x, weight, b)]
              for _ in range(2)]
    y = T.depthwise_conv2d_triton(*leaves[0], pad, d)
    ref = F.conv2d(*[t.double() if t is not None else None for t in leaves[1]], 1, pad, d, c)
    g = torch.randn(ref.shape).to(dt)
    y.backward(g)
    ref.backward(g.double())
    out = {"shape_ok": tuple(y.shape) == tuple(ref.shape), "dtype_ok": y.dtype == dt,
           "y": _rel(y, ref), "dx": _rel(leaves[0][0].grad, leaves[1][0].grad),
           "dw": _rel(leaves[0][1].grad, leaves[1][1].grad)}
    if bias:
        out["db"] = _rel(leaves[0][2].grad, leaves[1][2].grad)
    return out


def _worker() -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from largekernel.layers import dwconv
    from largekernel.layers import triton_dw as T

    res = {"interpreting": T.interpreting(), "available": T.available()}
    for case in CASES:
        res[case[0]] = _case(T, *case)

    # several spatial splits and tap blocks in the weight-gradient reduction (the default picks one
    # split at these sizes): 3x16x16 output pixels in chunks of 256, 49 taps in blocks of <= 64
    torch.manual_seed(1)
    x, dy = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    xd = x.double().requires_grad_()
    wd = torch.zeros(4, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    bd = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    F.conv2d(xd, wd, bd, 1, 6, 2, 4).backward(dy.double())
    dw, db = T.weight_bias_grad(x, dy, (7, 7), (6, 6), (2, 2), True, splits=3)
    res["splits3"] = {"dw": _rel(dw, wd.grad), "db": _rel(db, bd.grad)}

    # DepthwiseConv2d's CUDA branch, forced on for CPU tensors: training and eval, channels_last
    dwconv._use_triton = lambda x: True
    torch.manual_seed(2)
    fast = dwconv.DepthwiseConv2d(4, 7, padding=3, bias=True)
    ref = nn.Conv2d(4, 4, 7, padding=3, groups=4, bias=True)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 4, 9, 10).to(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fast(x1), ref(x2)
    g = torch.randn(y2.shape)
    y1.backward(g)
    y2.backward(g)
    with torch.no_grad():
        y3 = fast.eval()(x)
    res["module"] = {"y": _rel(y1, y2), "dx": _rel(x1.grad, x2.grad),
                     "dw": _rel(fast.weight.grad, ref.weight.grad),
                     "db": _rel(fast.bias.grad, ref.bias.grad), "eval": _rel(y3, y2),
                     "channels_last": y1.is_contiguous(memory_format=torch.channels_last)}

    # autocast: computed in the autocast dtype, like F.conv2d
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = T.depthwise_conv2d_triton(x, fast.weight, fast.bias, 3, 1)
    res["autocast"] = {"dtype": str(ya.dtype), "y": _rel(ya, y2)}

    errors = {}
    for label, call in [
        ("weight", lambda: T.depthwise_conv2d_triton(x, torch.randn(5, 1, 3, 3), None, 1, 1)),
        ("dim", lambda: T.depthwise_conv2d_triton(x[0], fast.weight, None, 3, 1)),
    ]:
        try:
            call()
            errors[label] = None
        except ValueError as e:
            errors[label] = str(e)
    res["errors"] = errors
    return res


@pytest.fixture(scope="module")
def results():
    env = {k: v for k, v in os.environ.items() if k != "LARGEKERNEL_TRITON"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runs_in_the_interpreter(results):
    assert results["interpreting"] is True and results["available"] is True


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradients_equal_conv2d(results, case):
    r, tol = results[case[0]], TOL[case[-1]]
    assert r["shape_ok"] and r["dtype_ok"]
    for key in ("y", "dx", "dw", "db"):
        if key in r:
            assert r[key] <= tol, (key, r[key])
    assert ("db" in r) == case[-2]


def test_weight_gradient_over_several_splits(results):
    assert results["splits3"]["dw"] <= 1e-5 and results["splits3"]["db"] <= 1e-5


def test_module_routes_cuda_branch_through_triton(results):
    r = results["module"]
    for key in ("y", "dx", "dw", "db", "eval"):
        assert r[key] <= 1e-5, (key, r[key])
    assert r["channels_last"] is True


def test_autocast_computes_in_bf16(results):
    assert results["autocast"]["dtype"] == "torch.bfloat16" and results["autocast"]["y"] <= 1e-2


def test_bad_shapes_raise_clear_errors(results):
    assert "weight must be [4, 1, KH, KW]" in results["errors"]["weight"]
    assert "expects a 4-D NCHW input" in results["errors"]["dim"]


def test_cpu_path_never_imports_triton():
    code = (
        "import sys, torch, largekernel\n"
        "from largekernel.layers.dwconv import DepthwiseConv2d\n"
        "conv = DepthwiseConv2d(3, 5, padding=2, bias=True)\n"
        "x = torch.randn(1, 3, 8, 8, requires_grad=True)\n"
        "conv(x).sum().backward()\n"
        "with torch.no_grad():\n"
        "    conv(x)\n"
        "print('triton' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LARGEKERNEL_TRITON")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


if __name__ == "__main__" and "--worker" in sys.argv:
    print(json.dumps(_worker()))
