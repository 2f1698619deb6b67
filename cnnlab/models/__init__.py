"""Named models: the registry, the lectures' networks and cnnlab's own small CNNs."""

from . import lectures, small  # noqa: F401  (importing them registers their models)
from .registry import ModelInfo, get_model, list_models, model_info, output_shape, register_model

__all__ = ["ModelInfo", "get_model", "list_models", "model_info", "output_shape", "register_model"]
