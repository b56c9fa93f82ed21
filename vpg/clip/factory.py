"""Factory verbs: build a vpg CLIP core from an open_clip model name and weights."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from vpg.errors import ConfigurationError, MissingFileError

from .attention import Attention
from .core import CLIP

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_registered = False


def register_model_configs() -> None:
    """Register vpg's open_clip JSON configs (vpg-tiny, vpg-shapes-vit, ...) once."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def list_models() -> list[str]:
    register_model_configs()
    return open_clip.list_models()


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def convert_attention(model: nn.Module) -> nn.Module:
    """Replace every nn.MultiheadAttention of the ViT and text transformers by vpg's Attention.

    A ModifiedResNet image tower (RN50, ...) is kept as it is: the core runs its attention pool itself.
    """
    resnet = isinstance(getattr(model, "visual", None), ModifiedResNet)
    if not resnet and not isinstance(getattr(model, "visual", None), VisionTransformer):
        kind = type(getattr(model, "visual", model)).__name__
        raise NotImplementedError(f"vpg's core supports open_clip ViT and ModifiedResNet image towers; "
                                  f"this model has {kind}")
    if not hasattr(model, "transformer") or not hasattr(model, "token_embedding"):
        raise NotImplementedError("vpg's core supports open_clip's built-in text transformer (CLIP class)")
    if resnet:
        towers = (model.transformer,)
    else:
        towers = (model.visual.transformer, model.transformer)
    for tower in towers:
        for block in tower.resblocks:
            if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
                raise NotImplementedError(f"unsupported block type {type(block).__name__} (custom attention)")
            block.attn = Attention.from_multihead(block.attn)
    v = model.visual
    if not resnet and (getattr(v, "attn_pool", None) is not None or v.pool_type != "tok"):
        raise NotImplementedError("vpg's core supports [CLS]-token pooling ViTs (no attentional pooling)")
    return model


def build_open_clip(name: str, pretrained: str | None = None, *, force_quick_gelu: bool = False,
                    cache_dir: str | None = None, precision: str = "fp32", device: str | torch.device = "cpu"):
    """open_clip model with vpg attention + its image mean/std. Errors name the model/file."""
    register_model_configs()
    if pretrained in ("", "None", "none", "null"):  # command lines spell "no weights" many ways
        pretrained = None
    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        known = ", ".join(m for m in open_clip.list_models() if m.startswith(("ViT-B", "ViT-L", "vpg")))
        raise ConfigurationError(f"unknown CLIP model name {name!r}; known ViT names include: {known}")
    if pretrained and _looks_like_path(pretrained) and not Path(pretrained).is_file():
        raise MissingFileError(f"CLIP weights file not found: {pretrained!r} (model {name})")
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None, precision=precision, device=device,
                                       force_quick_gelu=force_quick_gelu, cache_dir=cache_dir)
    except RuntimeError as err:  # open_clip says "Pretrained weights (...) not found" for unknown tags
        raise ConfigurationError(f"could not load CLIP weights {pretrained!r} for {name}: {err}") from err
    convert_attention(model)
    pp = open_clip.get_model_preprocess_cfg(model)
    log.info("built CLIP %s (pretrained=%s)", name, pretrained)
    return model, pp.get("mean", OPENAI_MEAN), pp.get("std", OPENAI_STD)


def create_model(name: str, pretrained: str | None = None, *, frozen: bool = True,
                 force_quick_gelu: bool = False, cache_dir: str | None = None) -> CLIP:
    """Build a vpg CLIP core.

    name: any open_clip model name (``ViT-B-16``, ``ViT-L-14-quickgelu``, ``vpg-shapes-vit``...).
    pretrained: an open_clip tag (``openai``, ``laion2b_s34b_b88k``; downloads where the network
    allows) or a local weights file (state dict / safetensors / checkpoint with ``state_dict``).
    A local file skips the tag metadata: OpenAI weights need ``force_quick_gelu=True`` or the
    ``-quickgelu`` name. All parameters are frozen unless ``frozen=False``.
    """
    return CLIP(name, pretrained, frozen=frozen, force_quick_gelu=force_quick_gelu, cache_dir=cache_dir)


def get_tokenizer(name: str, context_length: int | None = None):
    """open_clip tokenizer of a model: callable(list[str]) -> LongTensor (N, context_length)."""
    register_model_configs()
    return open_clip.get_tokenizer(name, context_length=context_length)


@torch.no_grad()
def class_text_features(clip: CLIP, class_names: Sequence[str], templates: Sequence[str], tokenizer=None) -> Tensor:
    """(C, E): normalised mean of each class's normalised template features (CLIP's prompt ensembling)."""
    tokenizer = tokenizer or get_tokenizer(clip.name)
    texts = [t.format(name) for name in class_names for t in templates]  # C * T texts
    device = next(clip.parameters()).device
    feats = F.normalize(clip.encode_text(tokenizer(texts).to(device)), dim=-1)  # (C * T, E)
    return F.normalize(feats.view(len(class_names), len(templates), -1).mean(1), dim=-1)  # (C, E)


def save_open_clip_weights(core: CLIP, path: str | Path, half: bool = False) -> Path:
    """Write the core's weights in open_clip's layout (safetensors), loadable by ``create_model``."""
    from safetensors.torch import save_file

    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
             for k, v in core.open_clip_state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
