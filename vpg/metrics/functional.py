"""Pure-function metrics: grounding IoU/accuracy, pointing game, top-k accuracy, multi-label (m)AP.

Each function here has a stateful, DDP-safe counterpart in :mod:`vpg.metrics.classes`. Box inputs are
``xyxy``; use :func:`vpg.metrics.boxes.convert_boxes` first for other formats or frames.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_average_precision,
    multiclass_accuracy,
    multilabel_average_precision,
)
from torchvision.ops import box_iou, generalized_box_iou

from vpg.metrics.boxes import check_boxes

__all__ = [
    "box_iou_pairwise",
    "giou_pairwise",
    "grounding_accuracy",
    "multilabel_map",
    "per_class_ap",
    "pointing_game_hits",
    "topk_accuracy",
]

# torchmetrics warns once per class without positives; we handle those classes explicitly (nan / excluded).
_NO_POSITIVES_WARNING = "No positive samples found in target"


def _check_pairs(a: Tensor, b: Tensor) -> None:
    check_boxes(a, "boxes a")
    check_boxes(b, "boxes b")
    if a.shape != b.shape:
        raise ValueError(
            f"Matched box sets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def box_iou_pairwise(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matched pairs ``a[i]`` vs ``b[i]`` (``xyxy``), without building torchvision's N x M matrix.

    Each pair is fed to :func:`torchvision.ops.box_iou` as a 1 x 1 problem (it broadcasts leading dims),
    so memory stays O(N). A pair of zero-area boxes with no overlap has union 0 and gives ``nan``.

    Args:
        a, b: ``(..., 4)`` boxes of the same shape.

    Returns:
        ``(...,)`` IoU in [0, 1].
    """
    _check_pairs(a, b)
    iou = box_iou(a.unsqueeze(-2), b.unsqueeze(-2))  # (..., 1, 1)
    return iou.squeeze(-1).squeeze(-1)  # (...,)


def giou_pairwise(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU of matched pairs (``xyxy``), in [-1, 1]; negative when the boxes are disjoint.

    Same batching trick as :func:`box_iou_pairwise`, on :func:`torchvision.ops.generalized_box_iou`.
    """
    _check_pairs(a, b)
    giou = generalized_box_iou(a.unsqueeze(-2), b.unsqueeze(-2))  # (..., 1, 1)
    return giou.squeeze(-1).squeeze(-1)  # (...,)


def grounding_accuracy(pred_boxes: Tensor, gold_boxes: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Per-sample hit of the standard grounding metric (Acc@t): ``IoU(pred, gold) >= iou_threshold``.

    ``>=`` (not ``>``) follows the REC convention, so an IoU of exactly 0.5 counts at Acc@0.5. A ``nan``
    IoU (degenerate boxes) is a miss.

    Args:
        pred_boxes, gold_boxes: ``(N, 4)`` ``xyxy`` boxes in the same frame (both pixel or both normalised).
        iou_threshold: in [0, 1].

    Returns:
        ``(N,)`` bool hits.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}.")
    if pred_boxes.ndim != 2:
        raise ValueError(f"pred_boxes must have shape (N, 4), got {tuple(pred_boxes.shape)}.")
    return box_iou_pairwise(pred_boxes, gold_boxes) >= iou_threshold  # (N,)


def pointing_game_hits(heatmaps: Tensor, gt_boxes: Sequence[Tensor] | Tensor) -> Tensor:
    """Pointing game: is the heatmap's maximum inside any ground-truth box of its image?

    Convention: pixel ``(row y, col x)`` is the unit square ``[x, x+1] x [y, y+1]`` with centre
    ``(x + 0.5, y + 0.5)``, and it is inside box ``[x0, y0, x1, y1]`` iff
    ``x0 <= x + 0.5 <= x1 and y0 <= y + 0.5 <= y1`` (closed on both sides). So ``[0, 0, 1, 1]`` holds exactly
    pixel (0, 0), a box edge through a pixel centre still counts that pixel, and a zero-size box only
    counts a pixel whose centre it sits on. Ties in the heatmap go to the first maximum in row-major order
    (:func:`torch.argmax`). No tolerance radius is applied (Zhang et al. use 15 px; pad the boxes for that).

    Args:
        heatmaps: ``(N, H, W)`` saliency maps.
        gt_boxes: ``N`` tensors of shape ``(K_i, 4)``, ``xyxy`` boxes in heatmap pixel coordinates (resize
            with :func:`vpg.metrics.boxes.scale_boxes` first); ``K_i = 0`` is always a miss. A ``(N, 4)`` or
            ``(N, K, 4)`` tensor is accepted as shorthand.

    Returns:
        ``(N,)`` bool hits.
    """
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must have shape (N, H, W), got {tuple(heatmaps.shape)}.")
    n, h, w = heatmaps.shape
    if isinstance(gt_boxes, Tensor) and gt_boxes.ndim == 2:
        gt_boxes = gt_boxes.unsqueeze(1)  # (N, 1, 4)
    if len(gt_boxes) != n:
        raise ValueError(f"Got {n} heatmaps but {len(gt_boxes)} ground-truth box sets.")
    for i, boxes in enumerate(gt_boxes):
        check_boxes(boxes, f"gt_boxes[{i}]")
        if boxes.ndim != 2:
            raise ValueError(f"gt_boxes[{i}] must have shape (K, 4), got {tuple(boxes.shape)}.")
    device = heatmaps.device

    flat_idx = heatmaps.reshape(n, h * w).argmax(dim=1)  # (N,) row-major index of the peak
    centres = torch.stack([flat_idx % w, flat_idx // w], dim=1).float() + 0.5  # (N, 2) as (x, y), exact

    # Flatten the ragged box lists and remember which image each box belongs to.
    counts = torch.tensor([len(b) for b in gt_boxes], device=device)  # (N,)
    if int(counts.sum()) == 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    boxes = torch.cat([b.to(device=device, dtype=torch.float32) for b in gt_boxes])  # (K, 4)
    owner = torch.repeat_interleave(torch.arange(n, device=device), counts)  # (K,)
    pt = centres[owner]  # (K, 2)
    inside = (boxes[:, :2] <= pt).all(dim=1) & (pt <= boxes[:, 2:]).all(dim=1)  # (K,)
    hits = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, owner, inside.long())  # (N,)
    return hits > 0  # (N,)


def topk_accuracy(logits: Tensor, target: Tensor, k: int = 1) -> Tensor:
    """Fraction of samples whose target class is among the ``k`` highest logits (micro average).

    Thin wrapper on :func:`torchmetrics.functional.classification.multiclass_accuracy` so the functional
    value equals :class:`vpg.metrics.TopKAccuracy`.

    Args:
        logits: ``(N, C)`` scores, ``C >= 2``.
        target: ``(N,)`` int class indices.
        k: ``1 <= k <= C``.

    Returns:
        scalar float tensor.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}.")
    num_classes = logits.shape[1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}], got {k}.")
    return multiclass_accuracy(logits, target, num_classes=num_classes, top_k=k, average="micro")


def to_unit_interval(scores: Tensor) -> Tensor:
    """Strictly increasing, non-saturating map R -> (0, 1), in float64.

    torchmetrics' AP applies a float32 sigmoid when *a batch* has a value outside [0, 1]. That (a) rounds
    every logit above ~17 to exactly 1.0, creating ties among CLIP-scale logits (logit_scale = 100), and
    (b) is decided per ``update``, so batches of cosine scores with and without a negative value end up in
    different scales. AP only depends on the ranking, so we hand torchmetrics
    ``0.5 + atan(x) / pi`` instead: already in [0, 1] (no sigmoid), same ranking, and float64 keeps
    distinct scores distinct far beyond any logit scale in use (float32 on MPS, which has no float64).
    """
    dtype = torch.float32 if scores.device.type == "mps" else torch.float64
    return 0.5 + torch.atan(scores.to(dtype)) / math.pi


def as_int_targets(targets: Tensor, ignore_index: int | None = None) -> Tensor:
    """Accept float multi-hot targets (the BCE training format); torchmetrics requires integer targets."""
    if not targets.is_floating_point():
        return targets
    valid = (targets == 0) | (targets == 1)
    if ignore_index is not None:
        valid |= targets == ignore_index
    if not bool(valid.all()):
        raise ValueError("Float targets must only contain 0 and 1 (or ignore_index).")
    return targets.long()


def _check_multilabel(scores: Tensor, targets: Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got {tuple(scores.shape)}.")
    if scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must match.")


def per_class_ap(scores: Tensor, targets: Tensor, ignore_index: int | None = None) -> Tensor:
    """Average precision of each class (sklearn / VOC-2010+ style, no interpolation), via torchmetrics.

    A class with no positive target has undefined AP; it is returned as ``nan`` (torchmetrics would give
    0, see :func:`multilabel_map`).

    Args:
        scores: ``(N, C)`` logits or probabilities (only the per-class ranking matters).
        targets: ``(N, C)`` multi-hot {0, 1} targets, int or float.
        ignore_index: target value to leave out of the computation (e.g. VOC "difficult" entries).

    Returns:
        ``(C,)`` float32 AP, ``nan`` where a class has no positives.
    """
    _check_multilabel(scores, targets)
    targets = as_int_targets(targets, ignore_index)
    probs = to_unit_interval(scores)  # (N, C)
    num_classes = scores.shape[1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_POSITIVES_WARNING)
        if num_classes == 1:  # torchmetrics' multilabel path insists on >= 2 labels
            ap = binary_average_precision(probs[:, 0], targets[:, 0], ignore_index=ignore_index).reshape(1)
        else:
            ap = multilabel_average_precision(
                probs, targets, num_labels=num_classes, average=None, ignore_index=ignore_index
            )  # (C,)
    ap = ap.float()  # (C,)
    has_pos = (targets == 1).sum(dim=0) > 0  # (C,)
    return torch.where(has_pos, ap, torch.full_like(ap, math.nan))  # (C,)


def multilabel_map(scores: Tensor, targets: Tensor, ignore_index: int | None = None) -> Tensor:
    """Macro mAP over the classes that have at least one positive target.

    Why not ``multilabel_average_precision(average="macro")`` directly: torchmetrics 1.9 scores a class
    without positives as 0 (not nan) and keeps it in the macro mean, which drags mAP down on small or
    sharded eval sets. Those classes are excluded here. Returns ``nan`` if no class has a positive.

    Args: as :func:`per_class_ap`.

    Returns:
        scalar float32 tensor.
    """
    return per_class_ap(scores, targets, ignore_index).nanmean()
