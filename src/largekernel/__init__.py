"""largekernel: UniRepLKNet large-kernel ConvNets with exact re-parameterization and a timm-shaped API."""
from .labels import class_names_for, imagenet_names
from .layers import reparameterize
from .models.checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint,
                                save_checkpoint)
from .models.hub import PretrainedNotAvailable
from .models.registry import create_model, get_pretrained_cfg, list_models
from .models.unireplknet import UniRepLKNet, UniRepLKNetBlock
from .models.weights import PretrainedCfg
from .transforms import create_transform, data_config
from . import modalities  # noqa: E402,F401  (registers the built-in plug-ins)
from .precision import get_precision, set_precision

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "PretrainedCfg", "PretrainedNotAvailable", "UniRepLKNet", "UniRepLKNetBlock",
    "class_names_for", "create_model", "create_transform", "data_config", "get_precision",
    "get_pretrained_cfg", "imagenet_names", "list_models", "load_checkpoint",
    "model_from_checkpoint", "reparameterize", "save_checkpoint", "set_precision",
]
