"""Named models: the registry, the lectures' networks, cnnlab's own small CNNs and the famous ImageNet
networks (with their pretrained weights in models/pretrained.py); model references."""

from cnnlab.models import famous, lectures, small  # noqa: F401  (importing them registers their models)
from cnnlab.models.refs import import_model, load_model, short_name, stored_ref
from cnnlab.models.registry import ModelInfo, get_model, list_models, model_info, output_shape, register_model

__all__ = [
    "ModelInfo", "get_model", "import_model", "list_models", "load_model", "model_info", "output_shape",
    "register_model", "short_name", "stored_ref",
]
