"""The depthwise conv with the fast CPU backward equals nn.Conv2d in forward and both gradients."""
import pytest
import torch
from torch import nn

from largekernel.layers import dwconv
from largekernel.layers.dwconv import DepthwiseConv2d


@pytest.fixture
def policy():
    """Set the layout policy for one test; the default (autotune) is restored after it."""
    yield dwconv.set_policy
    dwconv.set_policy("autotune")

CASES = [  # (kernel, dilation, height, width)
    (3, 1, 9, 9), (5, 1, 8, 11), (7, 1, 14, 14), (13, 1, 14, 13), (13, 1, 7, 7), (17, 1, 12, 12),
    (31, 1, 14, 14), (5, 2, 10, 9), (7, 2, 16, 16), (3, 3, 9, 12), (3, 5, 13, 13), (9, 2, 11, 10),
]


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("k,d,h,w", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("layout", ["direct", "swap"])
def test_forward_and_gradients_equal_conv2d(k, d, h, w, channels_last, layout, policy):
    policy(layout)
    torch.manual_seed(k * 100 + d)
    c, n = 6, 3
    pad = (d * (k - 1) + 1) // 2
    fast = DepthwiseConv2d(c, k, padding=pad, dilation=d, bias=True)
    ref = nn.Conv2d(c, c, k, padding=pad, dilation=d, groups=c, bias=True)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(n, c, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fast(x1), ref(x2)
    g = torch.randn_like(y2)
    y1.backward(g)
    y2.backward(g)
    assert y1.shape == y2.shape
    assert rel(y1, y2) <= 1e-6
    assert rel(x1.grad, x2.grad) <= 1e-5
    assert rel(fast.weight.grad, ref.weight.grad) <= 1e-5
    assert rel(fast.bias.grad, ref.bias.grad) <= 1e-5


@pytest.mark.parametrize("k,d,pad,h,w", [(5, 1, 0, 9, 8), (7, 1, 1, 10, 10), (3, 2, 5, 6, 7), (13, 1, 13, 5, 6),
                                         (4, 1, 2, 8, 9), (6, 2, 3, 11, 10)])
def test_other_paddings_and_even_kernels(k, d, pad, h, w):
    """Valid, partial and wider-than-'same' padding, even kernels: the output size changes, the
    weight gradient's conv must still produce exactly K x K."""
    torch.manual_seed(k + pad)
    fast = DepthwiseConv2d(5, k, padding=pad, dilation=d, bias=True)
    ref = nn.Conv2d(5, 5, k, padding=pad, dilation=d, groups=5, bias=True)
    ref.load_state_dict(fast.state_dict())
    x1 = torch.randn(2, 5, h, w, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = fast(x1), ref(x2)
    g = torch.randn_like(y2)
    y1.backward(g)
    y2.backward(g)
    assert y1.shape == y2.shape and rel(y1, y2) <= 1e-6
    assert rel(x1.grad, x2.grad) <= 1e-5 and rel(fast.weight.grad, ref.weight.grad) <= 1e-5


def test_float64_gradcheck():
    conv = DepthwiseConv2d(2, 5, padding=4, dilation=2, bias=True).double()
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))


def test_weight_only_and_input_only_gradients():
    conv = DepthwiseConv2d(4, 7, padding=3)
    x = torch.randn(2, 4, 10, 10, requires_grad=True)
    conv.weight.requires_grad_(False)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is None
    conv.weight.requires_grad_(True)
    conv(torch.randn(2, 4, 10, 10)).sum().backward()
    assert conv.weight.grad is not None


def test_state_dict_is_plain_conv():
    conv = DepthwiseConv2d(8, 13, padding=6, bias=True)
    assert isinstance(conv, nn.Conv2d)
    assert set(conv.state_dict()) == {"weight", "bias"} and conv.weight.shape == (8, 1, 13, 13)


def test_bf16_autocast_backward_matches_stock_conv():
    torch.manual_seed(0)
    fast = DepthwiseConv2d(4, 13, padding=6, bias=True)
    ref = nn.Conv2d(4, 4, 13, padding=6, groups=4, bias=True)
    ref.load_state_dict(fast.state_dict())
    x1, x2 = torch.randn(2, 4, 14, 14, requires_grad=True), None
    x2 = x1.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1, y2 = fast(x1), ref(x2)
    assert y1.dtype == torch.bfloat16 and torch.equal(y1, y2)
    y1.float().sum().backward()
    y2.float().sum().backward()
    assert fast.weight.grad.dtype == torch.float32 and x1.grad.dtype == torch.float32
    assert rel(fast.weight.grad, ref.weight.grad) < 2e-2  # bf16 arithmetic on both sides
    assert rel(x1.grad, x2.grad) < 2e-2


def test_layout_choice_cached_per_signature_and_rule_when_deterministic(policy):
    conv = DepthwiseConv2d(4, 17, padding=8)
    x = torch.randn(2, 4, 12, 12)
    with torch.no_grad():
        ref = nn.functional.conv2d(x, conv.weight, None, 1, 8, 1, 4)
        assert rel(conv(x), ref) <= 1e-6
    keys = [k for k in dwconv.choices() if k[0] == (2, 4, 12, 12)]
    assert len(keys) == 1 and dwconv.choices()[keys[0]] in ("direct", "swap") and keys[0][-1] == "autotune"
    policy("autotune")
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            conv(x)
            DepthwiseConv2d(4, 13, padding=6)(x)
    finally:
        torch.use_deterministic_algorithms(False)
    rule = {k[1][-1]: v for k, v in dwconv.choices().items() if k[-1] == "rule"}
    assert rule == {17: "swap", 13: "direct"}  # NCHW wider than 13 goes to channels_last
    with pytest.raises(ValueError, match="unknown depthwise policy 'fast'"):
        dwconv.set_policy("fast")
