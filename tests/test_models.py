"""The UniRepLKNet family held to timm's per-model test bar (ecosystem notes section 2), plus
torch.compile / torch.export / channels_last / autocast / device-dtype checks and clear errors.

Small variants (a, f, p, n, t) run on CPU at small inputs; the big ones (s, b, l, xl) get fast
meta-device tests here and their heavy CPU tests under `-m slow`.
"""
import math

import pytest
import torch
from torch import nn

import largekernel as lk
from largekernel.models.unireplknet import VARIANTS, UniRepLKNet

SMALL = ["unireplknet_a", "unireplknet_f", "unireplknet_p", "unireplknet_n", "unireplknet_t"]
BIG = ["unireplknet_s", "unireplknet_b", "unireplknet_l", "unireplknet_xl"]
ALL = SMALL + BIG
# Small variants run by default, big ones only with -m slow.
HEAVY = [pytest.param(n, id=n) for n in SMALL] + [
    pytest.param(n, id=n, marks=pytest.mark.slow) for n in BIG]
# Graph-level checks (compile, export): S, B, L and XL share one graph (depths 3-3-27-3, the same
# kernels), only the widths differ, so S stands for them; A..T cover the other depth layouts.
GRAPHS = [pytest.param(n, id=n) for n in SMALL] + [
    pytest.param("unireplknet_s", id="unireplknet_s", marks=pytest.mark.slow)]

# The authors' models (exact, 1000-class head): name -> (train params, deploy params).
PARAMS = {
    "unireplknet_a": (4_649_060, 4_437_300),
    "unireplknet_f": (6_489_328, 6_235_216),
    "unireplknet_p": (11_080_520, 10_741_704),
    "unireplknet_n": (18_818_880, 18_318_560),
    "unireplknet_t": (31_693_420, 31_037_980),
    "unireplknet_s": (56_456_704, 55_645_984),
    "unireplknet_b": (99_089_416, 98_008_456),
    "unireplknet_l": (220_076_056, 218_454_616),
    "unireplknet_xl": (388_690_984, 386_529_064),
}
# Spec section 1: depths, C and the kernel layout per stage.
_AFP = ((3, 3), (13, 13), (13,) * 6, (13, 13))
_SXL = ((3, 3, 3), (13, 13, 13), (13, 3, 3) * 9, (13, 13, 13))
SPEC = {
    "unireplknet_a": ((2, 2, 6, 2), 40, _AFP),
    "unireplknet_f": ((2, 2, 6, 2), 48, _AFP),
    "unireplknet_p": ((2, 2, 6, 2), 64, _AFP),
    "unireplknet_n": ((2, 2, 8, 2), 80, ((3, 3), (13, 13), (13,) * 8, (13, 13))),
    "unireplknet_t": ((3, 3, 18, 3), 80, ((3, 3, 3), (13, 13, 13), (13, 3) * 9, (13, 13, 13))),
    "unireplknet_s": ((3, 3, 27, 3), 96, _SXL),
    "unireplknet_b": ((3, 3, 27, 3), 128, _SXL),
    "unireplknet_l": ((3, 3, 27, 3), 192, _SXL),
    "unireplknet_xl": ((3, 3, 27, 3), 256, _SXL),
}

H = W = 64  # stage-4 maps are 2 x 2


def build(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return lk.create_model(name, **kwargs)


def inputs(b=1, h=H, w=W, seed=1, **kw):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed), **kw)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def kernel_of(block):
    k = block.dwconv.kernel_size
    return k if isinstance(k, int) else k[0]


# ---------------------------------------------------------------------------------------------
# Registry, parameter counts and structure (meta device, all nine variants, fast)
# ---------------------------------------------------------------------------------------------
def test_list_models():
    assert sorted(lk.list_models("unireplknet_*")) == sorted(ALL) == sorted(VARIANTS)
    assert sorted(lk.list_models()) == sorted(ALL + [f"upernet_{n}" for n in ALL])
    assert lk.list_models("unireplknet_x*") == ["unireplknet_xl"]
    assert "unireplknet_t" not in lk.list_models(exclude_filters="*_t")
    tagged = lk.list_models(pretrained=True)
    assert "unireplknet_t.in1k" in tagged and "unireplknet_xl.in22k_ft_in1k_384" in tagged


@pytest.mark.parametrize("name", ALL)
def test_param_counts(name):
    train_n, deploy_n = PARAMS[name]
    assert n_params(lk.create_model(name, device="meta")) == train_n
    assert n_params(lk.create_model(name, device="meta", deploy=True)) == deploy_n


def test_state_dict_key_counts_t():
    assert len(lk.create_model("unireplknet_t", device="meta").state_dict()) == 1116
    assert len(lk.create_model("unireplknet_t", device="meta", deploy=True).state_dict()) == 321


@pytest.mark.parametrize("name", ALL)
def test_structure_meta(name):
    """Depths, widths, kernel layout, feature_info, cfg and shapes at 224 on the meta device."""
    depths, c, kernels = SPEC[name]
    dims = [c, 2 * c, 4 * c, 8 * c]
    model = lk.create_model(name, device="meta").eval()
    assert model.depths == depths and list(model.dims) == dims
    assert tuple(len(s) for s in model.stages) == depths
    assert tuple(tuple(kernel_of(b) for b in s) for s in model.stages) == kernels
    assert model.num_classes == 1000
    assert model.num_features == model.head_hidden_size == 8 * c
    fi = model.feature_info
    assert fi.channels() == dims
    assert fi.reduction() == [4, 8, 16, 32]
    assert fi.module_name() == [f"stages.{i}" for i in range(4)]
    modules = dict(model.named_modules())
    assert all(m in modules for m in fi.module_name())
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and model.default_cfg == cfg
    sd = model.state_dict()
    assert cfg["first_conv"] + ".weight" in sd and sd[cfg["first_conv"] + ".weight"].shape[1] == 3
    assert cfg["classifier"] + ".weight" in sd
    assert sd[cfg["classifier"] + ".weight"].shape == (1000, 8 * c)
    x = torch.empty(2, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)
    assert feats.shape == (2, 8 * c, *cfg["pool_size"])
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model(x).shape == (2, 1000)
    backbone = lk.create_model(name, device="meta", features_only=True, out_indices=(1, -1))
    assert backbone.feature_info.channels() == [dims[1], dims[3]]
    assert backbone.feature_info.reduction() == [8, 32]
    outs = backbone(torch.empty(1, 3, 224, 224, device="meta"))
    assert [o.shape for o in outs] == [(1, dims[1], 28, 28), (1, dims[3], 7, 7)]


@pytest.mark.parametrize("name", ALL)
def test_no_weight_decay(name):
    model = lk.create_model(name, device="meta")
    nwd = model.no_weight_decay()
    names = dict(model.named_parameters())
    assert nwd <= set(names)
    blocks = [f"stages.{i}.{j}" for i, d in enumerate(model.depths) for j in range(d)]
    expected = set()
    for b in blocks:
        expected |= {f"{b}.gamma", f"{b}.act.1.gamma", f"{b}.act.1.beta"}
    assert nwd == expected
    assert all(names[n].ndim == 4 for n in nwd if ".act.1." in n)  # GRN params are 4-D


def _spec_layer_id(name: str) -> int:
    """Spec section 6: stem 0, stage0 1, stage1 + ds1 2, ds2 3, stage2 block b 3+b//3,
    stage3 + ds3 12, norm/head 13."""
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: 12}[int(parts[1])]
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        return {0: 1, 1: 2, 3: 12}[stage] if stage != 2 else 3 + block // 3
    assert parts[0] in ("norm", "head"), name
    return 13


def test_layer_id_unireplknet_s():
    model = lk.create_model("unireplknet_s", device="meta")
    assert model.num_layer_ids == 14
    ids = {}
    for n, _ in model.named_parameters():
        ids[n] = model.layer_id(n)
        assert ids[n] == _spec_layer_id(n), n
    assert set(ids.values()) == set(range(14))
    assert ids["downsample_layers.0.0.weight"] == 0
    assert ids["stages.0.2.gamma"] == 1
    assert ids["downsample_layers.1.0.weight"] == ids["stages.1.0.gamma"] == 2
    assert ids["downsample_layers.2.1.bias"] == ids["stages.2.0.gamma"] == 3
    assert ids["stages.2.2.gamma"] == 3 and ids["stages.2.3.gamma"] == 4
    assert ids["stages.2.26.pwconv2.0.weight"] == 11
    assert ids["downsample_layers.3.0.weight"] == ids["stages.3.2.gamma"] == 12
    assert ids["norm.weight"] == ids["head.bias"] == 13


# ---------------------------------------------------------------------------------------------
# timm per-model bar (CPU, small inputs)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEAVY)
def test_model_forward(name):
    model = build(name).eval()
    x = inputs(1)
    out = model(x)
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()
    model.set_grad_checkpointing()
    assert model.grad_checkpointing
    out2 = model(x)
    torch.testing.assert_close(out2, out, rtol=1e-4, atol=1e-5)
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


@pytest.mark.parametrize("name", HEAVY)
def test_model_backward(name, randomize_reparam_state):
    """num_classes=42, train mode, batch 2: every parameter gets a (finite, nonzero) grad; grad
    checkpointing leaves the loss and every gradient unchanged."""
    model = randomize_reparam_state(build(name, num_classes=42)).train()
    x = inputs(2)
    out = model(x)
    assert out.shape == (2, 42)
    assert torch.isfinite(out).all()
    out.mean().backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"{len(missing)} of {len(params)} parameters got no grad: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    zero = [n for n, p in params.items() if not p.grad.any()]
    assert not zero, f"parameters with an all-zero grad: {zero[:5]}"
    grads = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing()
    out2 = model(x)  # train-mode BN uses batch statistics, so the output is the same
    torch.testing.assert_close(out2, out, rtol=1e-4, atol=1e-5)
    out2.mean().backward()
    for n, p in params.items():
        assert p.grad is not None, n
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6 * grads[n].abs().max(),
                                   msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", HEAVY)
def test_model_default_cfg(name):
    model = build(name).eval()
    c = model.num_features
    cfg = model.pretrained_cfg
    assert model.num_classes == cfg["num_classes"] == 1000
    assert c > 0 and model.head_hidden_size > 0
    sd = model.state_dict()
    assert cfg["first_conv"] + ".weight" in sd
    assert cfg["classifier"] + ".weight" in sd
    assert model.get_classifier() is model.head
    x = inputs(1)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, c, H // 32, W // 32)
        assert feats.shape[1] == model.feature_info[-1]["num_chs"]
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        # spec: global average pool -> LayerNorm(eps 1e-6) -> Linear
        ln = torch.nn.functional.layer_norm
        ref = ln(feats.mean((2, 3)), (c,), model.norm.weight, model.norm.bias, 1e-6)
        torch.testing.assert_close(pre, ref)
        torch.testing.assert_close(model(x), model.head(ref))
        torch.testing.assert_close(model.forward_head(feats), model(x))

        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.ndim == 2 and pooled.shape == pre.shape
        torch.testing.assert_close(pooled, pre)

        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.ndim == 4 and unpooled.shape == (1, c, H // 32, W // 32)

        fresh = build(name, seed=1, num_classes=0, global_pool="")
        assert fresh.global_pool == "" and fresh.num_classes == 0
        fresh.load_state_dict(model.state_dict(), strict=True)
        ref = fresh.eval()(x)
        assert ref.shape == unpooled.shape
        assert torch.equal(ref, unpooled)

        model.reset_classifier(0, "max")
        ref = ln(feats.amax((2, 3)), (c,), model.norm.weight, model.norm.bias, 1e-6)
        torch.testing.assert_close(model(x), ref)

        model.reset_classifier(42, "avg")
        assert isinstance(model.get_classifier(), nn.Linear)
        assert model.get_classifier().weight.shape == (42, c)
        assert model(x).shape == (1, 42)


@pytest.mark.parametrize("name", HEAVY)
def test_model_forward_features(name):
    """features_only: levels match feature_info (channels, reductions), out_indices incl. negative."""
    x = inputs(1, 64, 96)  # non-square, so H/W mix-ups show
    cls = build(name).eval()
    dims = cls.feature_info.channels()
    with torch.no_grad():
        _, inter = cls.forward_intermediates(x)
    for out_indices, expect in [((0, 1, 2, 3), [0, 1, 2, 3]), ((1, 3), [1, 3]),
                                ((-1, -2), [2, 3]), ((-4,), [0])]:
        model = build(name, features_only=True, out_indices=out_indices).eval()
        fi = model.feature_info
        assert len(fi) == len(expect)
        assert fi.channels() == [dims[i] for i in expect]
        assert fi.reduction() == [4 * 2 ** i for i in expect]
        assert fi.module_name() == [f"stages.{i}" for i in expect]
        assert not hasattr(model, "head") and not hasattr(model, "norm")
        assert len(model.stages) == max(expect) + 1  # unused stages are not built
        # The backbone's weights are the classifier's (minus norm/head), plus its own norm{i}.
        missing, unexpected = model.load_state_dict(cls.state_dict(), strict=False)
        assert all(k.split(".")[0] in {f"norm{i}" for i in expect} for k in missing)
        assert all(k.split(".")[0] in ("norm", "head") or k.startswith(
            tuple(f"{p}.{i}." for p in ("stages", "downsample_layers") for i in range(max(expect) + 1, 4)))
            for k in unexpected)
        with torch.no_grad():
            outs = model(x)
        assert len(outs) == len(expect)
        for o, i, ch, red in zip(outs, expect, fi.channels(), fi.reduction()):
            assert o.shape == (1, ch, math.ceil(64 / red), math.ceil(96 / red))
            assert torch.isfinite(o).all()
            # norm{i} is a channels-first LayerNorm at init (weight 1, bias 0)
            ref = torch.nn.functional.layer_norm(inter[i].permute(0, 2, 3, 1), (ch,), eps=1e-6)
            torch.testing.assert_close(o, ref.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", HEAVY)
def test_model_forward_intermediates(name):
    model = build(name).eval()
    fi = model.feature_info
    x = inputs(2)
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x)
    assert torch.equal(final, feats)
    assert len(inter) == len(fi) == 4
    for t, ch, red in zip(inter, fi.channels(), fi.reduction()):
        assert t.shape == (2, ch, H // red, W // red)
    assert torch.equal(inter[-1], feats)
    with torch.no_grad():
        _, last2 = model.forward_intermediates(x, indices=2)
        assert [t.shape[1] for t in last2] == fi.channels()[2:]
        assert all(torch.equal(a, b) for a, b in zip(last2, inter[2:]))
        _, neg = model.forward_intermediates(x, indices=[-1, 0])
        assert len(neg) == 2 and torch.equal(neg[0], inter[0]) and torch.equal(neg[1], inter[3])
        only = model.forward_intermediates(x, intermediates_only=True)
        assert isinstance(only, list) and len(only) == 4
        assert all(torch.equal(a, b) for a, b in zip(only, inter))
        only = model.forward_intermediates(x, indices=[1], intermediates_only=True)
        assert isinstance(only, list) and len(only) == 1 and torch.equal(only[0], inter[1])
        early_final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(early[0], inter[1]) and early_final.shape == inter[1].shape
        final_nhwc, nhwc = model.forward_intermediates(x, output_fmt="NHWC")
        assert torch.equal(final_nhwc, feats)
        for a, b in zip(nhwc, inter):
            assert a.shape == b.permute(0, 2, 3, 1).shape
            assert torch.equal(a, b.permute(0, 2, 3, 1))
    model.set_grad_checkpointing()
    final_ckpt, inter_ckpt = model.forward_intermediates(x)  # with grad, so checkpointing runs
    torch.testing.assert_close(final_ckpt, final, rtol=1e-4, atol=1e-5)
    for a, b in zip(inter_ckpt, inter):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Extra bar: compile, export, channels_last, autocast, device/dtype
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRAPHS)
def test_compile_fullgraph(name):
    torch._dynamo.reset()
    model = build(name).eval()
    x = inputs(2)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_inductor_a():
    """The default backend (inductor, C++ codegen on CPU): ~70 s on a 2-core machine."""
    torch._dynamo.reset()
    model = build("unireplknet_a").eval()
    x = inputs(2)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    assert rel_err(out, ref) <= 1e-5
    torch._dynamo.reset()


@pytest.mark.parametrize("name", GRAPHS)
def test_export_dynamic_batch(name):
    model = build(name).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (inputs(2),), dynamic_shapes=({0: batch},))
    exported = ep.module()
    with torch.no_grad():
        for b in (1, 3):
            x = inputs(b, seed=b)
            out = exported(x)
            assert out.shape == (b, 1000)
            torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", HEAVY)
def test_channels_last(name):
    model = build(name).eval()
    x = inputs(2)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("name", HEAVY)
def test_bf16_autocast_cpu(name):
    model = build(name).eval()
    x = inputs(2)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert rel_err(out.float(), ref) <= 5e-2


def test_dtype_float64():
    model = build("unireplknet_a", dtype=torch.float64).eval()
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point():
            assert t.dtype == torch.float64, n
    x = inputs(2, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        assert out.dtype == torch.float64 and out.shape == (2, 1000)
        ref32 = build("unireplknet_a").eval()
        ref32.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in model.state_dict().items()})
        assert rel_err(ref32(x.float()), out) <= 1e-5
    deploy = build("unireplknet_a", dtype=torch.float64, deploy=True)
    assert all(p.dtype == torch.float64 for p in deploy.parameters())
    model.reset_classifier(7)
    assert model.head.weight.dtype == torch.float64


def test_device_meta():
    model = lk.create_model("unireplknet_t", device="meta")
    assert all(t.is_meta for t in model.parameters())
    assert all(t.is_meta for t in model.buffers())
    model.reset_classifier(10)
    assert model.head.weight.is_meta
    out = model(torch.empty(2, 3, 64, 64, device="meta"))
    assert out.is_meta and out.shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# Invalid inputs give clear errors
# ---------------------------------------------------------------------------------------------
def test_unknown_model_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'unireplknet_tt'.*Did you mean: unireplknet_t\b"):
        lk.create_model("unireplknet_tt")
    with pytest.raises(ValueError, match=r"Did you mean: .*unireplknet_xl"):
        lk.create_model("unireplknet_xxl", device="meta")
    with pytest.raises(ValueError, match=r"unireplknet_t has no weights tagged 'in22k'; available: "
                                         r"unireplknet_t\.in1k"):
        lk.create_model("unireplknet_t.in22k", device="meta")


def test_even_kernel_size_is_rejected():
    with pytest.raises(ValueError, match=r"kernel size 12 in stage 2 is not allowed: use an odd integer >= 3"):
        lk.create_model("unireplknet_a", kernel_sizes=(3, 13, 12, 13), device="meta")
    with pytest.raises(ValueError, match=r"kernel size 1 .*odd integer >= 3"):
        lk.create_model("unireplknet_a", kernel_sizes=(1, 13, 13, 13), device="meta")


def test_kernel_table_must_match_depths():
    bad_stage = ((3, 3), (13, 13), (13,) * 5, (13, 13))  # A has 6 blocks in stage 2
    with pytest.raises(ValueError, match=r"stage 2 has 5 entries but the stage has 6 blocks"):
        lk.create_model("unireplknet_a", kernel_sizes=bad_stage, device="meta")
    with pytest.raises(ValueError, match=r"kernel_sizes has 3 stages but depths .* has 4"):
        lk.create_model("unireplknet_a", kernel_sizes=(3, 13, 13), device="meta")
    with pytest.raises(ValueError, match=r"no default kernel layout for depths \(1, 1, 1, 1\); pass kernel_sizes"):
        UniRepLKNet(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), device="meta")


def test_unknown_create_model_kwarg():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_clases'\].*allowed: .*num_classes"):
        lk.create_model("unireplknet_a", num_clases=10)


def test_none_kwargs_are_ignored():
    model = lk.create_model("unireplknet_a", drop_path_rate=None, num_classes=None, device="meta")
    assert model.num_classes == 1000


def test_negative_num_classes():
    with pytest.raises(ValueError, match=r"num_classes must be >= 0"):
        lk.create_model("unireplknet_a", num_classes=-1, device="meta")


def test_bad_global_pool():
    with pytest.raises(ValueError, match=r"global_pool must be 'avg', 'max' or ''"):
        lk.create_model("unireplknet_a", global_pool="avgmax", device="meta")
    model = lk.create_model("unireplknet_a", device="meta")
    with pytest.raises(ValueError, match=r"global_pool must be 'avg', 'max' or ''"):
        model.reset_classifier(0, "token")


def test_bad_drop_path_rate():
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\)"):
        lk.create_model("unireplknet_a", drop_path_rate=1.0, device="meta")


def test_out_of_range_out_indices():
    """out_indices outside [-4, 3] must be refused, not wrapped onto another stage."""
    with pytest.raises(ValueError, match=r"out_indices|index|stage"):
        lk.create_model("unireplknet_a", features_only=True, out_indices=(4,), device="meta")
    with pytest.raises(ValueError, match=r"out_indices|index|stage"):
        lk.create_model("unireplknet_a", features_only=True, out_indices=(0, -5), device="meta")


def test_bad_forward_intermediates_args():
    model = lk.create_model("unireplknet_a", device="meta")
    x = torch.empty(1, 3, 64, 64, device="meta")
    with pytest.raises(ValueError, match=r"output_fmt must be 'NCHW' or 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NLC")
    with pytest.raises(ValueError, match=r"stage index 4 out of range for 4 stages"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match=r"indices=5: this model has 4 stages"):
        model.forward_intermediates(x, indices=5)


def test_features_only_has_no_classifier():
    model = lk.create_model("unireplknet_a", features_only=True, device="meta")
    with pytest.raises(RuntimeError, match=r"features_only backbone has no classifier"):
        model.reset_classifier(10)
