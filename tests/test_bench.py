"""Benchmark baselines and `largekernel bench`: the baselines compute what they claim; the command
reports every part with the machine facts (numbers themselves are benchmarks, not tests)."""
import json
import subprocess
import sys

import pytest
import torch

import largekernel as lk
from largekernel.layers.reparam import simulate_trained_statistics
from largekernel.tools.baselines import ConvNeXt, Reference, reference_forward
from largekernel.tools.bench import format_bench, interleaved, run_bench


@pytest.fixture(scope="module")
def trained_a():
    torch.manual_seed(0)
    return simulate_trained_statistics(lk.create_model("unireplknet_a", num_classes=10))


def test_reference_forward_equals_model_in_both_forms(trained_a):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = trained_a.eval()
    with torch.no_grad():
        out = model(x)
        assert (reference_forward(model, x) - out).abs().max() <= 1e-5 * out.abs().max()
        deploy = lk.reparameterize(model)
        assert (reference_forward(deploy, x) - out).abs().max() <= 1e-5 * out.abs().max()


def test_reference_trains_the_same_parameters(trained_a):
    """The reference shares the model's parameters and gives the same float32 gradients. In eval mode
    (fixed BN statistics) the gradient is a well-conditioned composition of ~30 layers: float32
    rounding (eps 6e-8, sums of <= 10^4 terms) stays far below 1e-4 of the largest entry on any CPU.
    Train mode's batch statistics of a tiny batch are ill-conditioned in float32, so the training
    path's gradients are compared in float64 (next test)."""
    model = trained_a.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref = Reference(model)
    assert list(ref.parameters()) == list(model.parameters())
    weight = model.stages[1][0].dwconv.lk_origin.weight
    g_ref = torch.autograd.grad(ref(x).square().sum(), weight)[0]
    g = torch.autograd.grad(model(x).square().sum(), weight)[0]
    assert (g - g_ref).abs().max() <= 1e-4 * g.abs().max() and g.abs().max() > 0
    with pytest.raises(ValueError, match="features_only"):
        reference_forward(lk.create_model("unireplknet_a", features_only=True), x)


def test_every_gradient_equals_the_reference_in_float64(trained_a):
    """The whole training path (the depthwise autograd, the hand-written GRN, the branches and their
    BNs) against the authors' op sequence with stock autograd: every parameter and the input, in
    float64 so that only the algorithms, not rounding, could make them differ."""
    model = lk.create_model("unireplknet_a", num_classes=10).double()
    model.load_state_dict(trained_a.state_dict())
    model.train()
    ref = Reference(model)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for net in (model, ref):
        xi = x.clone().requires_grad_()
        loss = net(xi).square().sum()
        grads.append(torch.autograd.grad(loss, [xi, *params]))
    assert any(type(m).__name__ == "GRN" for m in model.modules())
    # some gradients are zero up to rounding: a per-channel constant before a batch-statistics BN
    # (the branch BNs' biases before the block's BN, GRN's beta before the second Linear and its BN):
    # measure every difference against the largest gradient, and each real one against itself
    scale = max(float(g.norm()) for g in grads[1])
    for i, (g, g_ref) in enumerate(zip(*grads)):
        err = float((g - g_ref).norm())
        assert err <= 1e-9 * max(float(g_ref.norm()), 1e-6 * scale), (i, err, float(g_ref.norm()))
    assert sum(float(g.norm()) > 1e-6 * scale for g in grads[1]) > 0.75 * len(grads[1])


def test_convnext_t_has_the_published_size():
    model = ConvNeXt()
    assert sum(p.numel() for p in model.parameters()) == 28_589_128
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_interleaved_medians():
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3 and set(t) == {"a", "b"} and min(t.values()) >= 0


def test_run_bench_reports_all_parts():
    r = run_bench("unireplknet_a", size=32, batch=2, train_batch=2, rounds=1,
                  parts=("dwconv", "models"), dw_batch=1)
    assert r["machine"]["threads"] == torch.get_num_threads() and r["machine"]["dtype"] == "float32"
    assert r["roof"]["gemm_gflops"] > 0 and r["roof"]["bandwidth_gbs"] > 0
    assert [(d["channels"], d["size"], d["kernel"]) for d in r["dwconv"]] == \
        [(80, 56, 13), (160, 28, 13), (320, 14, 13), (640, 7, 13)]
    for part in ("inference", "train"):
        assert set(r["models"][part]) == {"largekernel", "reference", "convnext_t"}
        assert all(v["img_s"] > 0 for v in r["models"][part].values())
    assert all(d["fwd_bwd_largekernel_ms"] > 0 and d["fwd_bwd_speedup_vs_nchw"] > 0 for d in r["dwconv"])
    text = format_bench(r)
    assert "x reference" in text and "GFLOP/s" in text and "paths:" in text


def test_bench_cli_json_and_bad_parts():
    cmd = [sys.executable, "-m", "largekernel", "bench", "--model", "unireplknet_a", "--size", "32",
           "--batch", "1", "--train-batch", "2", "--rounds", "1", "--parts", "models,memory", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert set(r["memory_mb"]) == {"largekernel", "reference"} and all(v > 0 for v in r["memory_mb"].values())
    bad = subprocess.run(cmd[:-3] + ["--parts", "gpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown ['gpu']" in bad.stderr
