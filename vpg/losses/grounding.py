"""Losses of supervised visual grounding (HiVG / TransVG family).

- :func:`box_losses`: L1 (or smooth-L1) on normalised (cx, cy, w, h) and GIoU on xyxy
  (``torchvision.ops.generalized_box_iou_loss``);
- :func:`token_box_targets`: the referred box as a 0/1 mask over the patch grid;
- :func:`dice_loss` and :func:`region_text_losses`: region-text alignment, sigmoid focal
  (``torchvision.ops.sigmoid_focal_loss``) + dice between token-text similarities and that mask.
The image-text contrastive term is CLIP's symmetric InfoNCE, :func:`vpg.losses.clip_contrastive_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss


def box_losses(pred_cxcywh: Tensor, gold_cxcywh: Tensor, kind: str = "l1") -> tuple[Tensor, Tensor]:
    """(B, 4) normalised cxcywh boxes -> (regression loss, GIoU loss), each a mean over the batch.

    ``kind``: "l1" (TransVG / HiVG) or "smooth_l1" (beta 1/9 in normalised units, ~1 % of the side).
    The regression loss is summed over the 4 coordinates, as DETR-style heads do.
    """
    if kind == "l1":
        regression = F.l1_loss(pred_cxcywh, gold_cxcywh, reduction="none").sum(-1).mean()
    elif kind == "smooth_l1":
        regression = F.smooth_l1_loss(pred_cxcywh, gold_cxcywh, reduction="none", beta=1 / 9).sum(-1).mean()
    else:
        raise ValueError(f"box regression loss must be 'l1' or 'smooth_l1', got {kind!r}")
    pred_xyxy = box_convert(pred_cxcywh, "cxcywh", "xyxy")  # (B, 4)
    gold_xyxy = box_convert(gold_cxcywh, "cxcywh", "xyxy")  # (B, 4)
    giou = generalized_box_iou_loss(pred_xyxy, gold_xyxy, reduction="mean")
    return regression, giou


def token_box_targets(boxes: Tensor, grid: tuple[int, int], image_hw: tuple[int, int]) -> Tensor:
    """(B, 4) xyxy input pixels -> (B, h*w) float 0/1: patches whose centre lies in the box.

    A box smaller than a patch may cover no centre; then the patch holding the box centre is
    the target, so every sample has at least one positive token.
    """
    h, w = grid
    ph, pw = image_hw[0] / h, image_hw[1] / w
    cy = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) * ph  # (h,)
    cx = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) * pw  # (w,)
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))  # (B, 1) each
    inside_y = (cy[None] >= y0) & (cy[None] <= y1)  # (B, h)
    inside_x = (cx[None] >= x0) & (cx[None] <= x1)  # (B, w)
    mask = (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1)  # (B, h*w)
    row = ((boxes[:, 1] + boxes[:, 3]) / 2 / ph).long().clamp(0, h - 1)  # (B,)
    col = ((boxes[:, 0] + boxes[:, 2]) / 2 / pw).long().clamp(0, w - 1)  # (B,)
    centre = torch.zeros_like(mask)
    centre[torch.arange(len(boxes), device=boxes.device), row * w + col] = True
    return (mask | centre).to(boxes.dtype)


def dice_loss(logits: Tensor, targets: Tensor, valid: Tensor | None = None, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice per sample, mean over the batch. logits, targets (B, N); valid (B, N) bool."""
    probs = logits.sigmoid()
    if valid is not None:
        probs, targets = probs * valid, targets * valid
    inter = (probs * targets).sum(-1)  # (B,)
    return (1 - (2 * inter + smooth) / (probs.sum(-1) + targets.sum(-1) + smooth)).mean()


def region_text_losses(logits: Tensor, targets: Tensor, valid: Tensor | None = None, alpha: float = 0.25,
                       gamma: float = 2.0) -> tuple[Tensor, Tensor]:
    """Sigmoid focal and dice loss of token-text logits (B, N) against the box mask (B, N).

    The focal term is averaged over valid tokens (padding tokens excluded)."""
    focal = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")  # (B, N)
    if valid is None:
        focal = focal.mean()
    else:
        focal = (focal * valid).sum() / valid.sum().clamp(min=1)
    return focal, dice_loss(logits, targets, valid)


__all__ = ["box_losses", "dice_loss", "region_text_losses", "token_box_targets"]
