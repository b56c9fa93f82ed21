"""vpg's CLIP core: the only package that touches open_clip internals."""

from .attention import Attention
from .core import CLIP, CLSDecomposition, TextOutput, VisionOutput
from .factory import (
    class_text_features,
    create_model,
    get_tokenizer,
    list_models,
    register_model_configs,
    save_open_clip_weights,
)

register_model_configs()

__all__ = [
    "Attention",
    "CLIP",
    "CLSDecomposition",
    "TextOutput",
    "VisionOutput",
    "class_text_features",
    "create_model",
    "get_tokenizer",
    "list_models",
    "register_model_configs",
    "save_open_clip_weights",
]
