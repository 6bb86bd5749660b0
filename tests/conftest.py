"""Shared fixtures."""
import pytest
import torch

from largekernel.layers import simulate_trained_statistics


@pytest.fixture
def randomize_reparam_state():
    """`randomize_reparam_state(module, seed=0)`: randomise, in place, every BN statistic and affine,
    GRN gamma/beta and layer scale, so every re-parameterization fold does real work."""
    return simulate_trained_statistics


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
    on the shared 2-core machine, 2 OpenMP threads competing with other processes made small passes
    10-40x slower; no result depends on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
