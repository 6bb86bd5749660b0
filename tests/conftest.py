"""Shared fixtures for the model and re-parameterization tests."""
import pytest
import torch
from torch import nn

from largekernel.layers import GRN
from largekernel.models.unireplknet import UniRepLKNetBlock


@torch.no_grad()
def _randomize_reparam_state(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every fold real work: random BN running stats and affine, GRN gamma/beta and layer
    scales (at init these are identity-like: BN mean 0/var 1, GRN zeros, layer scale 1e-6)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        return (torch.rand(t.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(t)

    def normal(t, std):
        return (torch.randn(t.shape, generator=g, dtype=torch.float64) * std).to(t)

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(normal(m.running_mean, 0.2))
            m.running_var.copy_(uniform(m.running_var, 0.5, 2.0))
            m.weight.copy_(uniform(m.weight, 0.5, 1.5))
            m.bias.copy_(normal(m.bias, 0.2))
        elif isinstance(m, GRN):
            m.gamma.copy_(normal(m.gamma, 0.2))
            if m.beta is not None:
                m.beta.copy_(normal(m.beta, 0.2))
        elif isinstance(m, UniRepLKNetBlock) and m.gamma is not None:
            m.gamma.copy_(uniform(m.gamma, 0.1, 0.5))
    return module


@pytest.fixture
def randomize_reparam_state():
    """`randomize_reparam_state(module, seed=0)`: randomise, in place, every parameter and buffer
    that a re-parameterization folds (returns the module)."""
    return _randomize_reparam_state
