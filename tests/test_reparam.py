"""Structural re-parameterization (spec section 2): exact equivalence, deploy structure, API."""
import copy

import pytest
import torch
from torch import nn

import largekernel as lk
from largekernel.layers import BRANCH_TABLE, GRN, DilatedReparamBlock, dilated_branches
from largekernel.models.unireplknet import UniRepLKNet, UniRepLKNetBlock

SMALL = ["unireplknet_a", "unireplknet_f", "unireplknet_p", "unireplknet_n", "unireplknet_t"]
BIG = ["unireplknet_s", "unireplknet_b", "unireplknet_l", "unireplknet_xl"]
ALL = SMALL + BIG
HEAVY = [pytest.param(n, id=n) for n in SMALL] + [
    pytest.param(n, id=n, marks=pytest.mark.slow) for n in BIG]
TOL = 1e-5  # relative error ||a - b|| / ||b||

# Spec section 2, the released code's branch table.
SPEC_TABLE = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
}
RULE_K = [5, 19, 21, 23, 25, 31]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def build(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return lk.create_model(name, **kwargs)


def inputs(b=2, h=64, w=64, c=3, seed=1, **kw):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed), **kw)


def timm_reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """timm.utils.reparameterize_model's walk (timm is not installed here)."""
    if not inplace:
        model = copy.deepcopy(model)

    def _fuse(m):
        for child_name, child in m.named_children():
            if hasattr(child, "fuse"):
                setattr(m, child_name, child.fuse())
            elif hasattr(child, "reparameterize"):
                child.reparameterize()
            elif hasattr(child, "switch_to_deploy"):
                child.switch_to_deploy()
            _fuse(child)

    _fuse(model)
    return model


def assert_deploy_structure(model: nn.Module):
    """No BN in blocks, no layer scale, no GRN beta, no dilated branches (spec section 2)."""
    blocks = [m for m in model.modules() if isinstance(m, UniRepLKNetBlock)]
    assert blocks
    for b in blocks:
        assert b.deploy and b.gamma is None
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in b.modules())
        assert b.act[1].beta is None
        assert b.pwconv2[0].bias is not None
    for m in model.modules():
        if isinstance(m, DilatedReparamBlock):
            assert m.deploy and m.lk_origin.bias is not None
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not [n for n in names if "dil_conv" in n or "dil_bn" in n or "origin_bn" in n]
    assert not [n for n in names if n.endswith(".gamma") and ".act." not in n]
    assert not [n for n in names if n.endswith(".beta")]
    assert not [n for n in names if "running_" in n or "num_batches_tracked" in n]


# ---------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEAVY)
def test_variant_equivalence(name, randomize_reparam_state):
    model = randomize_reparam_state(build(name)).eval()
    x = inputs(2)  # 64 x 64: stage-4 maps are 2 x 2
    with torch.no_grad():
        ref = model(x)
        deploy = lk.reparameterize(model)
        out = deploy(x)
    assert deploy is not model
    assert_deploy_structure(deploy)
    assert sum(p.numel() for p in deploy.parameters()) == sum(
        p.numel() for p in build(name, device="meta", deploy=True).parameters())
    err = rel_err(out, ref)
    assert err <= TOL, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("name", ALL)
def test_reparameterized_structure_meta(name):
    """On the meta device (fast for every size): a re-parameterized model has exactly the
    deploy=True model's state-dict keys and shapes, and stays on its device."""
    model = build(name, device="meta").eval()
    deploy = build(name, device="meta", deploy=True)
    lk.reparameterize(model, inplace=True)
    assert all(p.is_meta for p in model.parameters())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in deploy.state_dict().items()}
    assert got == want
    assert list(got) == list(want)  # same order, too
    assert_deploy_structure(model)
    assert_deploy_structure(deploy)
    assert model.deploy and deploy.deploy
    assert model.model_args["deploy"] is True


@pytest.mark.parametrize("name", SMALL)
def test_state_dict_loads_strictly_into_deploy_model(name, randomize_reparam_state):
    model = randomize_reparam_state(build(name)).eval()
    x = inputs(2)
    with torch.no_grad():
        ref = model(x)
        lk.reparameterize(model, inplace=True)
        fresh = build(name, seed=123, deploy=True).eval()
        result = fresh.load_state_dict(model.state_dict(), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        out = fresh(x)
        assert torch.equal(out, model(x))  # same weights, same (no-grad) path: bit-identical
    assert rel_err(out, ref) <= TOL


def test_features_only_backbone_equivalence(randomize_reparam_state):
    model = build("unireplknet_a", features_only=True, out_indices=(0, 2, 3))
    randomize_reparam_state(model).eval()
    x = inputs(1, 64, 96)
    with torch.no_grad():
        ref = model(x)
        out = lk.reparameterize(model)(x)
    assert len(out) == len(ref) == 3
    for a, b in zip(out, ref):
        assert a.shape == b.shape and rel_err(a, b) <= TOL


def test_custom_kernels_and_no_layer_scale(randomize_reparam_state):
    """K = 3, 5 (plain dwconv), 7, 9 and a rule-based K = 19 DRB; and a model without layer scale."""
    for ls in (1e-6, 0.0):
        torch.manual_seed(0)
        model = UniRepLKNet(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128),
                            kernel_sizes=((3,), (5,), (19, 7), (9,)), num_classes=10,
                            layer_scale_init_value=ls)
        randomize_reparam_state(model).eval()
        assert isinstance(model.stages[2][0].dwconv, DilatedReparamBlock)
        assert isinstance(model.stages[1][0].dwconv, nn.Conv2d)
        assert (model.stages[0][0].gamma is None) == (ls == 0.0)
        x = inputs(2, 96, 96)  # stage 3 (19 x 19 kernel) sees a 12 x 12 map
        with torch.no_grad():
            ref = model(x)
            out = lk.reparameterize(model)(x)
        assert rel_err(out, ref) <= TOL


def test_refuses_train_mode():
    model = build("unireplknet_a")
    assert model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for fn in (lambda: lk.reparameterize(model), lambda: lk.reparameterize(model, inplace=True),
               model.reparameterize, model.stages[1][0].reparameterize,
               model.stages[1][0].dwconv.reparameterize):
        with pytest.raises(RuntimeError, match=r"train mode.*eval\(\)"):
            fn()
    after = model.state_dict()
    assert list(after) == list(before)  # nothing was folded
    assert all(torch.equal(after[k], v) for k, v in before.items())
    # An eval-mode model with one block left in train mode is refused too, before any fold.
    model.eval()
    model.stages[2][1].train()
    with pytest.raises(RuntimeError, match=r"eval\(\)"):
        lk.reparameterize(model, inplace=True)
    assert list(model.state_dict()) == list(before)


def test_idempotent(randomize_reparam_state):
    model = randomize_reparam_state(build("unireplknet_a")).eval()
    x = inputs(2)
    once = lk.reparameterize(model)
    sd1 = {k: v.clone() for k, v in once.state_dict().items()}
    with torch.no_grad():
        y1 = once(x)
    twice = lk.reparameterize(once, inplace=True)
    once.reparameterize()
    for m in once.modules():
        if hasattr(m, "reparameterize"):
            m.reparameterize()
    assert twice is once
    sd2 = once.state_dict()
    assert list(sd2) == list(sd1)
    assert all(torch.equal(sd2[k], v) for k, v in sd1.items())
    with torch.no_grad():
        assert torch.equal(once(x), y1)
    # a model built in deploy form is a no-op too
    deploy = build("unireplknet_a", deploy=True).eval()
    sd = {k: v.clone() for k, v in deploy.state_dict().items()}
    lk.reparameterize(deploy, inplace=True)
    assert all(torch.equal(deploy.state_dict()[k], v) for k, v in sd.items())


def test_keeps_dtype_and_device_float64(randomize_reparam_state):
    model = randomize_reparam_state(build("unireplknet_a", dtype=torch.float64)).eval()
    x = inputs(2, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        deploy = lk.reparameterize(model)
        out = deploy(x)
    for n, t in list(deploy.named_parameters()) + list(deploy.named_buffers()):
        assert t.dtype == torch.float64 and t.device == x.device, n
    assert out.dtype == torch.float64
    assert rel_err(out, ref) <= 1e-12  # float64: the fold is exact up to double rounding


def test_inplace_false_leaves_original_untouched(randomize_reparam_state):
    model = randomize_reparam_state(build("unireplknet_a")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = inputs(2)
    with torch.no_grad():
        ref = model(x)
    copy_ = lk.reparameterize(model, inplace=False)
    assert copy_ is not model and copy_.deploy and not model.deploy
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.model_args["deploy"] is False
    with torch.no_grad():
        assert torch.equal(model(x), ref)

    same = lk.reparameterize(model, inplace=True)
    assert same is model and model.deploy
    assert_deploy_structure(model)
    assert len(model.state_dict()) < len(before)
    with torch.no_grad():
        assert rel_err(model(x), ref) <= TOL
        assert torch.equal(model(x), copy_(x))


def test_reparameterize_inside_a_wrapper(randomize_reparam_state):
    """Any module tree works (e.g. a backbone inside a user's model)."""
    wrapper = nn.Sequential(randomize_reparam_state(build("unireplknet_a", num_classes=0)),
                            nn.Linear(320, 5)).eval()
    x = inputs(2)
    with torch.no_grad():
        ref = wrapper(x)
        out = lk.reparameterize(wrapper)(x)
    assert rel_err(out, ref) <= TOL


def test_timm_reparameterize_model_walk(randomize_reparam_state):
    model = randomize_reparam_state(build("unireplknet_t")).eval()
    x = inputs(2)
    with torch.no_grad():
        ref = model(x)
        ours = lk.reparameterize(model)
        walked = timm_reparameterize_model(model)
        out = walked(x)
        assert torch.equal(out, ours(x))
    assert_deploy_structure(walked)
    assert walked.model_args["deploy"] is True  # derived from the structure, not set by our walk
    assert rel_err(out, ref) <= TOL
    a, b = walked.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the walk itself refuses train mode
    with pytest.raises(RuntimeError, match=r"eval\(\)"):
        timm_reparameterize_model(build("unireplknet_a").train())


def test_fold_order_does_not_matter(randomize_reparam_state):
    """Folding the Dilated Reparam Blocks on their own first, then the blocks, gives the same model
    as folding top-down (a user or tool may walk the tree in either order)."""
    model = randomize_reparam_state(build("unireplknet_a")).eval()
    x = inputs(2)
    with torch.no_grad():
        ref = lk.reparameterize(model)
        for m in model.modules():
            if isinstance(m, DilatedReparamBlock):
                m.reparameterize()
        assert not model.deploy  # the blocks' BNs, GRN beta and layer scale are still there
        for m in model.modules():
            if isinstance(m, UniRepLKNetBlock):
                m.reparameterize()
        assert_deploy_structure(model)
        a, b = model.state_dict(), ref.state_dict()
        assert list(a) == list(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


def test_deploy_constructor_structure():
    model = build("unireplknet_t", deploy=True)
    assert_deploy_structure(model)
    assert model.deploy
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(hasattr(m, "dil_conv_k5_1") for m in model.modules())
    grns = [m for m in model.modules() if isinstance(m, GRN)]
    assert grns and all(g.beta is None for g in grns)
    assert all(b.gamma is None for b in model.modules() if isinstance(b, UniRepLKNetBlock))


# ---------------------------------------------------------------------------------------------
# The Dilated Reparam Block
# ---------------------------------------------------------------------------------------------
def test_branch_table_matches_spec():
    assert {k: tuple(map(tuple, v)) for k, v in BRANCH_TABLE.items()} == SPEC_TABLE
    for k, v in SPEC_TABLE.items():
        assert tuple(map(tuple, dilated_branches(k))) == v


@pytest.mark.parametrize("k", sorted(SPEC_TABLE) + RULE_K)
def test_branches_fit(k):
    kernels, dilations = dilated_branches(k)
    assert len(kernels) == len(dilations) >= 2
    assert len(set(zip(kernels, dilations))) == len(kernels)  # distinct branches
    assert all(r * (kk - 1) + 1 <= k for kk, r in zip(kernels, dilations))
    if k not in SPEC_TABLE:
        # the rule: the widest branch spans exactly K
        assert max(r * (kk - 1) + 1 for kk, r in zip(kernels, dilations)) == k


@pytest.mark.parametrize("k", [-1, 1, 3, 4, 6, 12, 20])
def test_unsupported_drb_kernel(k):
    with pytest.raises(ValueError, match=r"odd kernel size >= 5"):
        dilated_branches(k)
    with pytest.raises(ValueError, match=r"odd kernel size >= 5"):
        DilatedReparamBlock(4, k)


def _randomize_drb(block, randomize_reparam_state, seed=0):
    randomize_reparam_state(block, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in block.parameters():
            if p.ndim == 4:  # conv weights (distinct from the default init)
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return block.eval()


def _check_drb(block, x):
    with torch.no_grad():
        ref = block(x)
        w, b = block.merged_kernel()
        merged = torch.nn.functional.conv2d(x, w, b, padding=block.kernel_size // 2,
                                            groups=x.shape[1])
        block.reparameterize()
        out = block(x)
    assert block.deploy
    assert not hasattr(block, "origin_bn")
    assert not [n for n, _ in block.named_modules() if n.startswith("dil_")]
    k = block.kernel_size
    assert block.lk_origin.weight.shape == (x.shape[1], 1, k, k)
    assert block.lk_origin.padding == (k // 2, k // 2)
    assert rel_err(merged, ref) <= TOL
    assert rel_err(out, ref) <= TOL
    return ref, out


@pytest.mark.parametrize("k", sorted(SPEC_TABLE) + RULE_K)
def test_drb_equivalence(k, randomize_reparam_state):
    """40 x 40 maps: every tap of every K <= 31 kernel is exercised."""
    block = _randomize_drb(DilatedReparamBlock(6, k), randomize_reparam_state)
    kernels, dilations = dilated_branches(k)
    for kk, r in zip(kernels, dilations):
        assert isinstance(getattr(block, f"dil_conv_k{kk}_{r}"), nn.Conv2d)
        assert isinstance(getattr(block, f"dil_bn_k{kk}_{r}"), nn.BatchNorm2d)
    x = inputs(2, 40, 40, c=6)
    _check_drb(block, x)


def test_drb_every_tap_matters(randomize_reparam_state):
    """The merged kernel is a function of every branch's every tap: perturbing any single weight
    of any branch changes the merged K x K kernel at its dense position."""
    block = _randomize_drb(DilatedReparamBlock(2, 13), randomize_reparam_state)
    w0, _ = block.merged_kernel()
    for kk, r in zip(block.kernel_sizes, block.dilates):
        conv = getattr(block, f"dil_conv_k{kk}_{r}")
        for i in range(kk):
            with torch.no_grad():
                conv.weight[0, 0, i, 0] += 1.0
            w1, _ = block.merged_kernel()
            with torch.no_grad():
                conv.weight[0, 0, i, 0] -= 1.0
            diff = (w1 - w0).abs() > 1e-6
            pos = (13 - (r * (kk - 1) + 1)) // 2
            assert diff.sum() == 1 and diff[0, 0, pos + r * i, pos]


@pytest.mark.parametrize("k", [5, 13, 31])
def test_drb_float64_exact(k, randomize_reparam_state):
    block = _randomize_drb(DilatedReparamBlock(3, k, dtype=torch.float64), randomize_reparam_state)
    ref, out = _check_drb(block, inputs(1, 40, 40, c=3, dtype=torch.float64))
    assert out.dtype == torch.float64 and block.lk_origin.weight.dtype == torch.float64
    assert rel_err(out, ref) <= 1e-12


def test_drb_user_branches(randomize_reparam_state):
    block = DilatedReparamBlock(4, 13, kernel_sizes=(3, 5, 7, 13), dilations=(6, 3, 2, 1))
    assert block.kernel_sizes == (3, 5, 7, 13) and block.dilates == (6, 3, 2, 1)
    for kk, r in [(3, 6), (5, 3), (7, 2), (13, 1)]:
        conv = getattr(block, f"dil_conv_k{kk}_{r}")
        assert conv.dilation == (r, r) and conv.kernel_size == (kk, kk)
    _check_drb(_randomize_drb(block, randomize_reparam_state), inputs(2, 40, 40, c=4))
    # a single far-dilated branch is fine as long as it fits
    block = DilatedReparamBlock(4, 9, kernel_sizes=(3,), dilations=(4,))
    _check_drb(_randomize_drb(block, randomize_reparam_state), inputs(2, 40, 40, c=4))


@pytest.mark.parametrize("kernels, dilations", [((3,), (7,)), ((7,), (3,)), ((5, 15), (1, 1))])
def test_drb_branch_that_does_not_fit(kernels, dilations):
    with pytest.raises(ValueError, match=r"does not fit.*r\(k-1\)\+1 <= 13"):
        DilatedReparamBlock(4, 13, kernel_sizes=kernels, dilations=dilations)


def test_drb_bad_branch_arguments():
    with pytest.raises(ValueError, match=r"does not fit: each branch needs an odd k"):
        DilatedReparamBlock(4, 13, kernel_sizes=(4,), dilations=(1,))
    with pytest.raises(ValueError, match=r"does not fit: .*r >= 1"):
        DilatedReparamBlock(4, 13, kernel_sizes=(3,), dilations=(0,))
    with pytest.raises(ValueError, match=r"2 branch kernels but 1 dilations"):
        DilatedReparamBlock(4, 13, kernel_sizes=(3, 5), dilations=(2,))
    with pytest.raises(ValueError, match=r"give both kernel_sizes and dilations"):
        DilatedReparamBlock(4, 13, kernel_sizes=(3, 5))


def test_fast_cpu_inference_path_matches_the_module_path(randomize_reparam_state):
    """Deploy blocks under no_grad take a hand-scheduled path (SE into the NHWC buffer, fused
    Linear+GELU, GRN's scale folded into per-sample weights where HW > 2C); it equals the plain
    module path, which autograd mode takes."""
    from largekernel.models import unireplknet as u

    model = lk.reparameterize(randomize_reparam_state(build("unireplknet_a")).eval())
    x = inputs(2, 96, 80)  # stage maps 24x20 (folded GRN), 3x3 (plain GRN)
    with torch.no_grad():
        fast = model(x)
    plain = model(x.requires_grad_()).detach()
    assert rel_err(fast, plain) <= 1e-6
    t, w, b = torch.randn(2, 5, 7, 16), torch.randn(64, 16), torch.randn(64)
    ref = torch.nn.functional.gelu(torch.nn.functional.linear(t, w, b))
    assert rel_err(u.linear_gelu(t, w, b), ref) <= 1e-6
    saved, u._fused_linear_gelu = u._fused_linear_gelu, False
    try:
        assert torch.equal(u.linear_gelu(t, w, b), ref)
    finally:
        u._fused_linear_gelu = saved
