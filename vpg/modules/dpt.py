"""TaI-DPT's dual-grained prompts and the scores they give (Guo et al., CVPR 2023).

- :class:`DualPromptLearner`: a global and a local set of M learnable context vectors
  (N(0, 0.02) init) placed before every class name, "[SOT] v_1 .. v_M <name>. [EOT]"; the
  text tower turns them into one global and one local class feature per class.
- :func:`local_aggregate`: p'_i = Σ_j softmax_j(P_ij / τ) P_ij over the valid tokens j
  (caption tokens in training, image patches at test; padding masked out).
- :func:`dual_scores`: global logits = s·cos(u, G_i), local logits = s·p'_i with cosine P_ij,
  s = 4 as the authors.

Plain ``nn.Module`` / functions: the CLIP core is passed in, never owned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BRANCHES = ("global", "local")


def local_aggregate(similarity: Tensor, valid: Tensor | None, temperature: float) -> Tensor:
    """Softmax-weighted mean of each class's similarities over tokens.

    similarity: (N, L, C) P_ij (token j, class i); valid: (N, L) bool (None: all valid);
    temperature: τ. Returns (N, C) Σ_j softmax_j(P_ij / τ) P_ij over the valid j.
    """
    weights = local_attention(similarity, valid, temperature)  # (N, L, C), zero at invalid tokens
    return (weights * similarity).sum(dim=1)  # (N, C)


def local_attention(similarity: Tensor, valid: Tensor | None, temperature: float) -> Tensor:
    """The weights softmax_j(P_ij / τ) of :func:`local_aggregate`: (N, L, C)."""
    logits = similarity / temperature
    if valid is not None:
        logits = logits.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    return logits.softmax(dim=1)


def dual_scores(global_feature: Tensor, local_features: Tensor, valid: Tensor | None, global_classes: Tensor,
                local_classes: Tensor | None, temperature: float, scale: float = 4.0) -> dict[str, Tensor]:
    """Global and local logits of samples against class features (all in the joint space).

    global_feature: (N, E) u (caption EOT feature or image embedding); local_features: (N, L, E)
    U_j (caption token features or dense image features); valid: (N, L) bool; global_classes /
    local_classes: (C, E) G / L (local None: global branch only). Returns {"global": (N, C),
    "local": (N, C)} — cosines times ``scale``.
    """
    u = F.normalize(global_feature, dim=-1)  # (N, E)
    out = {"global": scale * u @ F.normalize(global_classes, dim=-1).t()}  # (N, C)
    if local_classes is not None:
        tokens = F.normalize(local_features, dim=-1)  # (N, L, E)
        similarity = tokens @ F.normalize(local_classes, dim=-1).t()  # (N, L, C) P_ij
        out["local"] = scale * local_aggregate(similarity, valid, temperature)  # (N, C)
    return out


class DualPromptLearner(nn.Module):
    """Learnable context vectors of the global and the local prompt (one set each, or only global).

    Args:
        width: the text tower's token width W.
        n_ctx: M context vectors per prompt (16 as the authors).
        init_std: N(0, std) initialisation (0.02).
        branches: ("global", "local") for DPT, ("global",) for TaI with one prompt.
        num_classes: with ``class_specific`` (CSC), one context per class and branch.
    """

    def __init__(self, width: int, n_ctx: int = 16, init_std: float = 0.02,
                 branches: Sequence[str] = BRANCHES, class_specific: bool = False, num_classes: int | None = None):
        super().__init__()
        unknown = [b for b in branches if b not in BRANCHES]
        if unknown or not branches:
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {list(branches)}")
        if class_specific and not num_classes:
            raise ValueError("class-specific contexts need num_classes")
        shape = (num_classes, n_ctx, width) if class_specific else (n_ctx, width)
        self.contexts = nn.ParameterDict({b: nn.Parameter(torch.randn(shape) * init_std) for b in branches})
        self.n_ctx = n_ctx

    @property
    def branches(self) -> list[str]:
        return list(self.contexts)

    def class_features(self, clip, name_tokens: Tensor) -> dict[str, Tensor]:
        """{branch: (C, E) class features} from the tokens of "<name>." (C, L) through ``clip``."""
        out = {}
        for branch, context in self.contexts.items():
            embeddings, eot = clip.splice_context(name_tokens, context, "end")  # (C, L, W), (C,)
            out[branch] = clip.forward_text(embeddings=embeddings, eot_index=eot).pooled  # (C, E)
        return out


__all__ = ["BRANCHES", "DualPromptLearner", "dual_scores", "local_aggregate", "local_attention"]
