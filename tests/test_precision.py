"""Precision policy (`largekernel.precision`): bf16 accuracy bound, fp32 masters, exact undo, training
in bf16, `auto`'s choice, the depthwise dtype policy.

Error bound for bf16 against fp32 (relative, norm-wise, on the logits). bf16 keeps 8 significant
bits, so each rounding to bf16 (round to nearest) has relative error at most u = 2^-9. A block of
the train form rounds, in series: its C-wide input, W1, b1, the first GEMM's output, GELU's output,
GRN's scale, GRN's output, beta, W2 and the second GEMM's output: R_block = 10 roundings (products
inside each GEMM accumulate in fp32 and add nothing at this order); the head rounds its input,
weight, bias and output: 4. To first order each rounding reaches the logits with gain <= 1 (the
residual stream and the LayerNorms do not amplify relative errors; an assumption, checked by the
measured margin). Worst case, the errors add: R u; rounding errors of round-to-nearest are
unbiased and independent across roundings, so they add in quadrature: sqrt(R) u. The tests assert
the latter: for the tiny fixture (5 blocks) R = 54, sqrt(54) u = 1.44e-2 (worst case 54 u = 0.105);
measured 3.6e-3 (train form) and 4.2e-3 (deploy form). They also assert the error exceeds 1e-4, so
a model that silently stayed fp32 (errors ~1e-7) fails.

Emulated bf16 (CPUs without bf16 units) rounds the same values to bf16 and runs the GEMMs in fp32 on
them. A product of two bf16 numbers is exact in fp32 and the native kernels accumulate in fp32, so
an emulated GEMM's output differs from the native one only by the order of summation: at most about
K fp32 ulps (2^-24 relative) of the sum of |terms| over K terms. After both are rounded to bf16 they
are equal unless that difference straddles a rounding boundary (spaced 2^-8 relative), so they
differ on a fraction of about K * 2^-16 of the elements and there by one bf16 ulp. That is asserted
op by op. Through a whole network one differing element changes the inputs of later roundings,
which then round independently, so two bf16 runs can drift apart up to the bf16 noise itself: the
whole-model check is the triangle inequality, each run within `bound` of the exact result, so
emulated vs native <= 2 * bound (on an AVX2 EPYC they agree exactly in inference).
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import largekernel as lk
from largekernel import precision as P
from largekernel.layers import reparameterize, simulate_trained_statistics
from goldens import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

U = 2.0 ** -9  # unit roundoff of bf16
R_BLOCK, R_HEAD = 10, 4


def bound(blocks: int, head: bool = True) -> float:
    return math.sqrt(R_BLOCK * blocks + (R_HEAD if head else 0)) * U


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(autouse=True)
def rule_policy():
    """Depthwise convs by the fixed rule (fp32), so results do not depend on a timing."""
    P.set_depthwise_policy("rule")
    yield
    P.set_depthwise_policy("autotune")


@pytest.fixture(scope="module")
def tiny():
    model = TINY.create()
    lk.load_checkpoint(model, TINY.file("train.pth"))
    io = TINY.load("io.pt")
    return model.eval(), io["input"]


def reference(model, x):
    """The model's output in float64 (fp32 rounding ~1e-7 is negligible against bf16's)."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        out = m(x.double())
    return out


@pytest.mark.parametrize("emulate", [False, True], ids=["native", "emulated"])
def test_bf16_logits_within_bound_on_the_authors_fixture(tiny, emulate):
    model, x = tiny
    ref = reference(model, x)
    m = lk.set_precision(copy.deepcopy(model), "bf16", emulate=emulate)
    with torch.no_grad():
        out = m(x)
    assert out.dtype == torch.float32
    err = rel_err(out, ref)
    assert 1e-4 < err <= bound(5), err
    assert all(p.dtype == torch.float32 for p in m.parameters())
    choice = lk.get_precision(m)
    assert (choice.requested, choice.precision, choice.emulated) == ("bf16", "bf16", emulate)
    assert choice.reason == ("requested; emulated: bf16-rounded values in fp32 arithmetic (bf16's "
                             "numerics, not its speed)" if emulate else "requested")


@pytest.mark.parametrize("emulate", [False, True], ids=["native", "emulated"])
def test_bf16_deploy_form_within_bound_and_fused_path_used(tiny, emulate):
    model, x = tiny
    ref = reference(model, x)
    deploy = reparameterize(lk.set_precision(copy.deepcopy(model), "bf16", emulate=emulate))
    assert all(isinstance(b.__dict__["forward"], P._BlockBf16) for s in deploy.stages for b in s)
    with torch.no_grad():
        out = deploy(x)
    err = rel_err(out, ref)
    assert out.dtype == torch.float32 and 1e-4 < err <= bound(5), err
    # the deploy path with grad enabled (module ops, GRN not folded) agrees within the same bound
    out_grad = deploy(x).detach()
    assert rel_err(out_grad, ref) <= bound(5)


def test_emulated_bf16_ops_equal_native_up_to_summation_order():
    torch.manual_seed(0)
    k = 512
    cases = {"linear": (nn.Linear(k, 96), torch.randn(4, 7, k)),
             "conv1x1": (nn.Conv2d(k, 48, 1), torch.randn(2, k, 5, 6))}
    for name, (mod, x) in cases.items():
        with torch.no_grad():
            native = lk.set_precision(copy.deepcopy(mod), "bf16", emulate=False)(x)
            emulated = lk.set_precision(copy.deepcopy(mod), "bf16", emulate=True)(x)
        assert torch.equal(native.bfloat16().float(), native), name  # bf16 values, fp32 out
        assert torch.equal(emulated.bfloat16().float(), emulated), name
        differ = native != emulated
        assert differ.float().mean() <= 2 * k * 2.0 ** -16, name
        # where they differ: one bf16 ulp of the value (2^-7 relative at most)
        assert ((native - emulated).abs() <= emulated.abs() * 2.0 ** -7).all(), name


def test_emulated_bf16_equals_native_bf16_forward_and_gradients(tiny):
    """The whole model, emulated vs native, forward and every parameter's gradient: each within
    `bound` of the exact result, so within 2 * bound of each other (see the module's doc)."""
    model, x = tiny
    y = torch.arange(len(x)) % model.head.out_features
    out, grads = {}, {}
    for emulate in (False, True):
        # eval mode: BN's running statistics (batch statistics over 2 samples would amplify any
        # difference by 1/std of near-constant channels), no dropout; autograd through every forward
        m = lk.set_precision(copy.deepcopy(model).eval(), "bf16", emulate=emulate)
        logits = m(x)
        F.cross_entropy(logits, y).backward()
        out[emulate] = logits.detach()
        grads[emulate] = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert rel_err(out[True], out[False]) <= 2 * bound(5)
    assert rel_err(grads[True], grads[False]) <= 2 * bound(5)
    assert not torch.equal(grads[True], torch.zeros_like(grads[True]))


def test_emulation_is_chosen_where_the_cpu_has_no_bf16_units(monkeypatch):
    monkeypatch.delenv(P.EMULATION_ENV, raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "fma"})
    assert P.bf16_emulated("cpu") and not P.bf16_emulated("cuda")
    m = lk.set_precision(nn.Linear(3, 2), "bf16")
    assert lk.get_precision(m).emulated and "has no bf16 units" in lk.get_precision(m).reason
    assert m.__dict__["forward"].emulate
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert not P.bf16_emulated("cpu")
    monkeypatch.setenv(P.EMULATION_ENV, "emulate")
    assert P.bf16_emulated("cpu") and not P.bf16_emulated("cpu", emulate=False)
    assert lk.get_precision(lk.set_precision(nn.Linear(3, 2), "bf16")).reason.endswith(
        "(bf16's numerics, not its speed: LARGEKERNEL_BF16=emulate)")
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setenv(P.EMULATION_ENV, "Native")
    assert not P.bf16_emulated("cpu") and P.bf16_emulated("cpu", emulate=True)
    monkeypatch.setenv(P.EMULATION_ENV, "fast")
    with pytest.raises(ValueError, match="LARGEKERNEL_BF16='fast': use 'native' or 'emulate'"):
        lk.set_precision(nn.Linear(3, 2), "bf16")
    assert lk.get_precision(lk.set_precision(nn.Linear(3, 2), "fp32")).emulated is False


def test_fp32_undoes_bit_exactly(tiny):
    model, x = tiny
    untouched = copy.deepcopy(model)
    m = lk.set_precision(lk.set_precision(copy.deepcopy(model), "bf16"), "fp32")
    assert not any("forward" in mod.__dict__ for mod in m.modules())
    with torch.no_grad():
        assert torch.equal(m(x), untouched(x))
    d = reparameterize(m)
    with torch.no_grad():  # re-parameterization equivalence, checked in fp32 as everywhere
        assert rel_err(d(x), untouched(x)) <= 1e-5
    assert m.state_dict().keys() == untouched.state_dict().keys()


def test_dense_backbone_and_wrapping_model():
    torch.manual_seed(0)
    backbone = lk.create_model("unireplknet_a", **TINY.layout, features_only=True)
    simulate_trained_statistics(backbone, 1)
    x = torch.randn(2, 3, 64, 96)
    ref = reference(backbone.eval(), x)
    m = lk.set_precision(copy.deepcopy(backbone).eval(), "bf16")
    with torch.no_grad():
        outs = m(x)
    assert len(outs) == 4 and all(o.dtype == torch.float32 for o in outs)
    for i, (o, r) in enumerate(zip(outs, ref)):
        assert rel_err(o, r) <= bound(sum(TINY.layout["depths"][:i + 1]), head=False), i

    class Modality(nn.Module):  # a modality model: a backbone and a head of its own
        def __init__(self):
            super().__init__()
            self.backbone = copy.deepcopy(backbone)
            self.head = nn.Linear(128, 5)

        def forward(self, x):
            return self.head(self.backbone(x)[-1].mean((2, 3)))

    torch.manual_seed(2)
    mod = Modality().eval()
    ref = reference(mod, x)
    lk.set_precision(mod, "bf16")
    assert isinstance(mod.head.__dict__["forward"], P._LinearBf16)
    assert not any("forward" in b.pwconv1[1].__dict__ for s in mod.backbone.stages for b in s)
    with torch.no_grad():
        out = mod(x)
    assert out.dtype == torch.float32 and rel_err(out, ref) <= bound(5)


def test_training_in_bf16_reaches_fp32_masters_and_learns():
    torch.manual_seed(0)
    model = lk.create_model("unireplknet_a", **TINY.layout, num_classes=4)
    lk.set_precision(model, "bf16").train()
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        assert loss.dtype == torch.float32
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
                   for g in grads.values()), [n for n, g in grads.items() if g is None]
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())


def test_cached_bf16_weights_follow_optimizer_steps():
    """Under no-grad the bf16 weight copies are cached; an optimizer step (an in-place update,
    which bumps the parameters' version counters) must invalidate them."""
    torch.manual_seed(0)
    model = lk.set_precision(lk.create_model("unireplknet_a", **TINY.layout, num_classes=4), "bf16")
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    opt.step()
    model.eval()
    fresh = lk.set_precision(lk.set_precision(copy.deepcopy(model), "fp32"), "bf16")
    with torch.no_grad():
        after, expected = model(x), fresh(x)
    assert torch.equal(after, expected)
    assert not torch.equal(after, before)


def test_depthwise_policy_bf16_forced_and_autotuned(tiny):
    model, x = tiny
    ref = reference(model, x)
    P.set_depthwise_policy("bf16")
    m = lk.set_precision(copy.deepcopy(model), "bf16", emulate=False)  # autotune times native kernels
    with torch.no_grad():
        out = m(x)
    # the depthwise convs round their input and weight too: 2 more roundings per block
    assert rel_err(out, ref) <= math.sqrt((R_BLOCK + 2) * 5 + R_HEAD) * U
    P.set_depthwise_policy("autotune")
    with torch.no_grad():
        m(x)
    choices = P.depthwise_choices()
    assert choices and set(choices.values()) <= {"fp32", "bf16"}
    torch.use_deterministic_algorithms(True)
    try:
        P.set_depthwise_policy("autotune")
        with torch.no_grad():
            m(x)
        assert P.depthwise_choices() == {}  # deterministic: the fixed rule, nothing timed
    finally:
        torch.use_deterministic_algorithms(False)
    with pytest.raises(ValueError, match="autotune, rule, fp32, bf16"):
        P.set_depthwise_policy("fast")


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "fma", "sse4_2"})
    choice = P.resolve_precision("auto", "cpu")
    assert choice.precision == "fp32" and "neither amx_bf16 nor avx512_bf16" in choice.reason
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16", "amx_tile", "avx512_bf16"})
    choice = P.resolve_precision("auto", "cpu")
    assert choice.precision == "bf16" and "amx_bf16 and avx512_bf16" in choice.reason
    monkeypatch.setattr(P, "cpu_flags", lambda: set())  # unreadable /proc/cpuinfo: torch's probes
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert P.resolve_precision("auto", "cpu").precision == "bf16"
    model = lk.set_precision(nn.Linear(3, 2), "auto")
    assert isinstance(model.__dict__["forward"], P._LinearBf16)
    assert lk.get_precision(model).reason.endswith("has avx512_bf16")


def test_auto_on_this_machine_matches_its_flags(caplog):
    flags = P.cpu_flags()
    model = nn.Sequential(nn.Linear(3, 2))
    with caplog.at_level("INFO", logger="largekernel.precision"):
        lk.set_precision(model, "auto")
    expected = "bf16" if flags & {"amx_bf16", "avx512_bf16"} else "fp32"
    assert lk.get_precision(model).precision == expected
    assert f"precision auto -> {expected}" in caplog.text


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown precision 'int8'; use one of fp32, bf16, auto"):
        lk.set_precision(nn.Linear(2, 2), "int8")
    with pytest.raises(TypeError, match="needs an nn.Module"):
        lk.set_precision(torch.zeros(2), "bf16")


def test_conv1x1_and_pickling(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 4, 3))
    x = torch.randn(2, 8, 6, 6)
    ref = reference(m, x)
    lk.set_precision(m, "bf16")
    assert isinstance(m[0].__dict__["forward"], P._Conv1x1Bf16) and "forward" not in m[2].__dict__
    with torch.no_grad():
        out = m(x)
    assert rel_err(out, ref) <= math.sqrt(4) * U  # input, weight, bias, output of the 1x1 conv
    torch.save(m, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


# ---- the precision axis of `largekernel bench`, and the CLI ------------------------------------

def test_bench_precision_bf16_inference_and_the_bf16_roof():
    from largekernel.tools.bench import format_bench, run_bench

    r = run_bench("unireplknet_a", size=32, batch=1, train_batch=0, rounds=1, parts=("models",),
                  precision="bf16")
    assert r["precisions"] == ["bf16"] and r["roof"]["bf16_gemm_gflops"] > 0
    assert set(r["models"]["inference"]) == {"largekernel:bf16", "reference:fp32", "reference:bf16",
                                             "convnext_t:fp32", "convnext_t:bf16"}
    text = format_bench(r)
    assert "bf16 GEMM" in text and "x reference:" in text and "bf16 units:" in text
    # our bf16 against the roof it runs at: fp32 GEMMs where bf16 is emulated
    assert r["machine"]["bf16_emulated"] == P.bf16_emulated()
    roof = "fp32 GEMM roof (bf16 emulated)" if P.bf16_emulated() else "bf16 GEMM roof"
    assert f"of its time at the {roof}" in text.split("largekernel:bf16: its Linear layers")[1].split("\n")[0]
    with pytest.raises(ValueError, match="unknown precision"):
        run_bench("unireplknet_a", size=32, batch=1, train_batch=0, rounds=1, parts=(), precision="fp16")


@pytest.mark.slow
def test_bench_precision_all_reports_every_variant():
    from largekernel.tools.bench import format_bench, run_bench

    r = run_bench("unireplknet_a", size=32, batch=1, train_batch=2, rounds=1, parts=("models",),
                  precision="all")
    assert r["precisions"] == ["fp32", "bf16"] and r["roof"]["bf16_gemm_gflops"] > 0
    names = {f"{m}:{p}" for m in ("largekernel", "reference", "convnext_t") for p in ("fp32", "bf16")}
    for part in ("inference", "train"):
        assert set(r["models"][part]) == names and all(v["img_s"] > 0 for v in r["models"][part].values())
    text = format_bench(r)
    assert "largekernel:bf16" in text and "auto:" in text


def _write_data(root):
    """3 classes x 4 grayscale 32x32 images (stripes whose orientation is the class)."""
    from PIL import Image
    import numpy as np

    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:32, 0:32]
    for name, coord in (("diag", xx + yy), ("horiz", yy), ("vert", xx)):
        (root / name).mkdir(parents=True)
        for i in range(4):
            img = ((coord + i) // 3) % 2 * 180 + 30 + rng.randint(0, 40, (32, 32))
            Image.fromarray(img.astype(np.uint8), "L").save(root / name / f"{i}.png")
    return root


def test_cli_train_eval_predict_in_bf16(tmp_path):
    import json

    from clitools import run_cli

    data = _write_data(tmp_path / "data")
    common = ["--data", data, "--model", "unireplknet_a", "--in-chans", "1", "--input-size", "32",
              "--randaug", "none", "--reprob", "0", "--epochs", "1", "--batch-size", "3",
              "--max-steps", "2", "--val-split", "0.25", "--warmup-epochs", "0"]
    code, _, err = run_cli(["train", *common, "--output", tmp_path / "run", "--precision", "bf16"])
    assert code == 0, err[-2000:]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["precision"] == "bf16" and "precision bf16 -> bf16" in err
    code, _, err = run_cli(["train", *common, "--output", tmp_path / "alias", "--amp", "bf16"])
    assert code == 0, err[-2000:]
    cfg = json.loads((tmp_path / "alias" / "config.json").read_text())
    assert cfg["precision"] == "bf16" and cfg["amp"] is None  # --amp bf16 is an alias
    ckpt = tmp_path / "run" / "last.safetensors"
    code, out, err = run_cli(["eval", ckpt, "--data", data, "--precision", "bf16", "--json"])
    assert code == 0, err[-2000:]
    assert json.loads(out)["n"] == 12 and "precision bf16 -> bf16" in err
    code, out, err = run_cli(["predict", data / "vert" / "0.png", "--checkpoint", ckpt,
                              "--precision", "auto", "--json"])
    assert code == 0, err[-2000:]
    assert len(json.loads(out)[0]["top"]) == 3
    code, _, err = run_cli(["train", *common, "--output", tmp_path / "bad", "--precision", "fp8"])
    assert code == 2 and "unknown precision 'fp8'" in err


@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("grad", [False, True])
def test_bf16_forwards_compute_the_blocks_math(tiny, monkeypatch, form, grad):
    """The policy's own forwards (train form, deploy form with autograd, the fused deploy path) with
    bf16 replaced by fp32 must give the model's fp32 outputs up to fp32 rounding: this checks that
    they compute every term of the block (a dropped GRN beta, say, is below the bf16 bound)."""
    model, x = tiny
    ref_model = reparameterize(model) if form == "deploy" else model
    with torch.no_grad():
        ref = ref_model(x)
    monkeypatch.setattr(P, "BF16", torch.float32)
    m = lk.set_precision(copy.deepcopy(ref_model), "bf16")
    with torch.set_grad_enabled(grad):
        out = m(x).detach()
    assert rel_err(out, ref) <= 1e-5


def test_info_report_measures_throughput_in_the_requested_precision(tmp_path, capsys):
    import re

    from largekernel.cli import main

    path = tmp_path / "a.md"
    assert main(["info", "unireplknet_a", "--report", str(path), "--input-size", "32",
                 "--precision", "bf16"]) == 0
    text = path.read_text()
    assert re.search(r"deploy form [\d.]+ images/s.*batch 8 at 32x32, bf16, ", text)
    rel = float(re.search(r"Max relative error between train form and deploy form: (\S+) ", text).group(1))
    assert 0 < rel <= 1e-5  # the re-parameterization check stays fp32


def test_auto_on_cuda_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision("auto", "cuda") == P.PrecisionChoice("auto", "bf16", "this CUDA device supports bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.resolve_precision("auto", "cuda").precision == "fp32"
    assert P.resolve_precision("auto", "meta").reason == "no bf16 policy for device type 'meta'"
