"""WWbL's training objectives for a text-conditioned heatmap M in [0, 1] (Shaharabany et al., 2022).

- ``rmap``: MSE(M, G) against the CLIP explainability pseudo-label G (GAE), weight 16;
- ``fore``: 1 - cos(CLIP(I ⊙ M), t), the kept region must match the text, weight 0.25;
- ``back``: |cos(CLIP(I ⊙ (1 - M)), t)|, the rest must not, weight 0.5;
- ``reg``: mean(M), keep the map small, weight 0.25.

Each term is a mean over the batch; :func:`wwbl_loss` returns the weighted terms and their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

WWBL_WEIGHTS = {"rmap": 16.0, "fore": 0.25, "back": 0.5, "reg": 0.25}


def rmap_loss(heatmaps: Tensor, pseudo_labels: Tensor) -> Tensor:
    """Mean squared error between (B, H, W) heatmaps and pseudo-label maps of the same shape."""
    if heatmaps.shape != pseudo_labels.shape:
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} and pseudo-labels {tuple(pseudo_labels.shape)} differ")
    return F.mse_loss(heatmaps, pseudo_labels.to(heatmaps.dtype))


def foreground_loss(masked_features: Tensor, text_features: Tensor) -> Tensor:
    """mean_b [1 - cos(image_b ⊙ M_b, t_b)]: (B, E) image features of the masked images, (B, E) text."""
    return (1 - F.cosine_similarity(masked_features, text_features.to(masked_features.dtype), dim=-1)).mean()


def background_loss(masked_features: Tensor, text_features: Tensor) -> Tensor:
    """mean_b |cos(image_b ⊙ (1 - M_b), t_b)|: (B, E) features of the inverse-masked images, (B, E) text."""
    return F.cosine_similarity(masked_features, text_features.to(masked_features.dtype), dim=-1).abs().mean()


def regularization_loss(heatmaps: Tensor) -> Tensor:
    """mean(M) over the batch and the pixels."""
    return heatmaps.mean()


@dataclass
class WWbLLossWeights:
    rmap: float = WWBL_WEIGHTS["rmap"]
    fore: float = WWBL_WEIGHTS["fore"]
    back: float = WWBL_WEIGHTS["back"]
    reg: float = WWBL_WEIGHTS["reg"]


def wwbl_loss(heatmaps: Tensor, pseudo_labels: Tensor, fore_features: Tensor, back_features: Tensor,
              text_features: Tensor, weights: WWbLLossWeights | None = None) -> dict[str, Tensor]:
    """Weighted WWbL terms {"rmap", "fore", "back", "reg"} and their sum "loss" (scalars)."""
    w = weights or WWbLLossWeights()
    terms = {
        "rmap": w.rmap * rmap_loss(heatmaps, pseudo_labels),
        "fore": w.fore * foreground_loss(fore_features, text_features),
        "back": w.back * background_loss(back_features, text_features),
        "reg": w.reg * regularization_loss(heatmaps),
    }
    terms["loss"] = sum(terms.values())
    return terms


__all__ = ["WWBL_WEIGHTS", "WWbLLossWeights", "background_loss", "foreground_loss", "regularization_loss",
           "rmap_loss", "wwbl_loss"]
