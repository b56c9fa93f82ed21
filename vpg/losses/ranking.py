"""Multi-label losses over class scores: ranking (TaI-DPT's), BCE and ASL (its ablation, Table 4).

All take scores (N, C) — logits — and multi-hot targets (N, C) and return the mean over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MULTILABEL_LOSSES = ("ranking", "bce", "asl")


def ranking_loss(scores: Tensor, targets: Tensor, margin: float = 1.0) -> Tensor:
    """Pairwise hinge: per sample sum over positive i and negative j of max(0, m - s_i + s_j);
    mean over samples (a sample without positives or without negatives adds 0).

    scores: (N, C); targets: (N, C) 0/1.
    """
    pos = targets > 0.5  # (N, C)
    hinge = (margin - scores.unsqueeze(2) + scores.unsqueeze(1)).clamp_min(0)  # (N, C_i, C_j): m - s_i + s_j
    pairs = pos.unsqueeze(2) & ~pos.unsqueeze(1)  # (N, C_i, C_j): i positive, j negative
    return (hinge * pairs).sum((1, 2)).mean()


def bce_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy on logits, summed over classes, mean over samples."""
    return F.binary_cross_entropy_with_logits(scores, targets.to(scores.dtype), reduction="none").sum(1).mean()


def asymmetric_loss(scores: Tensor, targets: Tensor, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                    clip: float = 0.05, eps: float = 1e-8) -> Tensor:
    """ASL (Ridnik et al., ICCV 2021): focusing gamma_pos / gamma_neg and probability shifting
    ``clip`` on negatives; summed over classes, mean over samples. Defaults are the paper's.

    L+ = (1 - p)^g+ log(p);  L- = p_m^g- log(1 - p_m) with p_m = max(p - clip, 0).
    """
    targets = targets.to(scores.dtype)
    p = torch.sigmoid(scores)  # (N, C)
    p_neg = (p - clip).clamp_min(0) if clip > 0 else p  # (N, C) shifted probability of negatives
    loss_pos = targets * (1 - p).pow(gamma_pos) * torch.log(p.clamp_min(eps))
    loss_neg = (1 - targets) * p_neg.pow(gamma_neg) * torch.log((1 - p_neg).clamp_min(eps))
    return -(loss_pos + loss_neg).sum(1).mean()


def multilabel_loss(name: str, scores: Tensor, targets: Tensor, margin: float = 1.0) -> Tensor:
    """Dispatch by name: ``ranking`` (with ``margin``), ``bce`` or ``asl``."""
    if name == "ranking":
        return ranking_loss(scores, targets, margin)
    if name == "bce":
        return bce_loss(scores, targets)
    if name == "asl":
        return asymmetric_loss(scores, targets)
    raise ValueError(f"loss must be one of {MULTILABEL_LOSSES}, got {name!r}")
