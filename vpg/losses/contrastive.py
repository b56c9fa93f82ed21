"""Symmetric InfoNCE (CLIP's contrastive loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """Mean of image->text and text->image cross-entropy over the batch.

    image_features, text_features: (B, E) L2-normalised, row i of each is a positive pair.
    logit_scale: the exp'd temperature (scalar).
    """
    logits = logit_scale * image_features @ text_features.t()  # (B, B)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
