"""Building blocks of large-kernel ConvNets."""
from .misc import DropPath, SEBlock, ToChannelsFirst, ToChannelsLast
from .norm import GRN, LayerNorm2d
from .reparam import (BRANCH_TABLE, DilatedReparamBlock, dilated_branches, dilated_to_dense,
                      fuse_bn, reparameterize, simulate_trained_statistics)

__all__ = [
    "BRANCH_TABLE", "DilatedReparamBlock", "DropPath", "GRN", "LayerNorm2d", "SEBlock",
    "ToChannelsFirst", "ToChannelsLast", "dilated_branches", "dilated_to_dense", "fuse_bn",
    "reparameterize", "simulate_trained_statistics",
]
