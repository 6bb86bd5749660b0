"""Tools on top of the models: model statistics (`info`) and friends used by the CLI."""
from .info import ModelInfo, count_macs, count_params, model_info, resolve_model_names

__all__ = ["ModelInfo", "count_macs", "count_params", "model_info", "resolve_model_names"]
