"""GRN's hand-written training autograd (`_GRNFn`) against the plain formula, and its zero cases."""
import pytest
import torch

from largekernel.layers import GRN
from largekernel.layers.norm import _GRNFn, spatial_l2_norm


def plain_grn(x, gamma, beta):
    """The authors' GRN with stock autograd (torch.norm over H, W)."""
    gx = torch.linalg.vector_norm(x, 2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    out = gamma * (x * nx) + x
    return out if beta is None else out + beta


def grn_with(dim, beta=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    grn = GRN(dim, use_bias=beta).to(dtype)
    with torch.no_grad():
        grn.gamma.normal_()
        if beta:
            grn.beta.normal_()
    return grn


@pytest.mark.parametrize("shape,beta", [((2, 7, 5, 12), True), ((3, 4, 4, 8), False), ((1, 1, 3, 6), True)])
def test_fused_grn_equals_the_plain_formula(shape, beta):
    grn = grn_with(shape[-1], beta)
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(shape)
    out = grn(x)
    assert out.grad_fn.name() == "_GRNFnBackward"  # the hand-written path ran
    out.backward(dy)
    got = [x.grad, grn.gamma.grad] + ([grn.beta.grad] if beta else [])

    x2 = x.detach().clone().requires_grad_()
    params = [grn.gamma.detach().clone().requires_grad_(), grn.beta.detach().clone().requires_grad_() if beta else None]
    ref = plain_grn(x2, *params)
    ref.backward(dy)
    want = [x2.grad, params[0].grad] + ([params[1].grad] if beta else [])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


def test_fused_grn_gradcheck_float64():
    grn = grn_with(6, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_GRNFn.apply, (x, grn.gamma, grn.beta))
    assert torch.autograd.gradcheck(_GRNFn.apply, (x, grn.gamma, None))


def test_fused_grn_with_frozen_input_and_params():
    grn = grn_with(8)
    x = torch.randn(2, 3, 3, 8, requires_grad=True)
    grn.requires_grad_(False)
    grn(x).sum().backward()  # only x needs a gradient
    assert x.grad is not None and grn.gamma.grad is None
    grn.requires_grad_(True)
    with torch.no_grad():
        out = grn(x)
    assert out.grad_fn is None


def test_all_zero_channel_has_zero_gradient():
    """GELU of very negative values is exactly 0; on small maps a whole channel can be 0, and neither
    the fast norm nor the fused GRN may turn that into NaN (sqrt'(0) did once)."""
    x = torch.zeros(2, 2, 2, 3)
    x[0] = 3.0
    x.requires_grad_()
    norm = spatial_l2_norm(x)
    norm.sum().backward()
    assert norm.view(2, 3).tolist() == [[6.0] * 3, [0.0] * 3]
    assert x.grad[1].abs().sum().item() == 0.0 and x.grad[0].flatten().tolist() == [0.5] * 12

    grn = grn_with(3)
    x.grad = None
    grn(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(grn.gamma.grad).all()
    x2 = x.detach().clone().requires_grad_()
    plain_grn(x2, grn.gamma.detach(), grn.beta.detach()).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
