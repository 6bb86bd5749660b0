"""largekernel: UniRepLKNet large-kernel ConvNets with exact re-parameterization and a timm-shaped API."""
from .layers import reparameterize
from .models.checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint,
                                save_checkpoint)
from .models.hub import PretrainedNotAvailable
from .models.registry import PretrainedCfg, create_model, get_pretrained_cfg, list_models
from .models.unireplknet import UniRepLKNet, UniRepLKNetBlock
from .precision import get_precision, set_precision

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "PretrainedCfg", "PretrainedNotAvailable", "UniRepLKNet", "UniRepLKNetBlock",
    "create_model", "get_precision", "get_pretrained_cfg", "list_models", "load_checkpoint",
    "model_from_checkpoint", "reparameterize", "save_checkpoint", "set_precision",
]
