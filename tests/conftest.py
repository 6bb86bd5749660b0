"""Shared fixtures for the model and re-parameterization tests."""
import pytest

from largekernel.layers import simulate_trained_statistics


@pytest.fixture
def randomize_reparam_state():
    """`randomize_reparam_state(module, seed=0)`: randomise, in place, every BN statistic and affine,
    GRN gamma/beta and layer scale, so every re-parameterization fold does real work."""
    return simulate_trained_statistics
