"""Stateful ``torchmetrics.Metric`` versions of :mod:`vpg.metrics.functional`, correct under DDP.

Count-based metrics keep integer ``sum`` states, so the synced value is exactly the metric over the union
of all ranks' samples (no mean of per-rank means). The mAP metric keeps torchmetrics' ``cat`` states.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from vpg.metrics.boxes import check_format, convert_boxes
from vpg.metrics.functional import (
    _NO_POSITIVES_WARNING,
    as_int_targets,
    grounding_accuracy,
    pointing_game_hits,
    to_unit_interval,
)

__all__ = ["BoxAccuracy", "GroundingAccuracy", "MultiLabelMAP", "PointingGame", "TopKAccuracy"]


class _HitRate(Metric):
    """Shared ``correct / total`` bookkeeping; ``compute`` is ``nan`` before any sample is seen."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add_hits(self, hits: Tensor) -> None:
        self.correct += hits.sum()
        self.total += hits.numel()

    def compute(self) -> Tensor:
        if self.total == 0:
            return torch.tensor(math.nan, device=self.correct.device)
        return self.correct.float() / self.total


class GroundingAccuracy(_HitRate):
    """Acc@t for referring-expression grounding: fraction of samples with ``IoU(pred, gold) >= t``.

    Args:
        iou_threshold: ``t``; an IoU exactly equal to ``t`` counts as a hit.
        box_format: format of the boxes given to ``update`` (``"xyxy"``, ``"xywh"`` or ``"cxcywh"``); pred and
            gold must be in the same frame (both pixel or both normalised), IoU is frame-invariant.
    """

    def __init__(self, iou_threshold: float = 0.5, box_format: str = "xyxy", **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}.")
        self.iou_threshold = iou_threshold
        self.box_format = check_format(box_format)

    def update(self, pred_boxes: Tensor, gold_boxes: Tensor) -> None:
        """Add a batch of matched ``(N, 4)`` predicted and gold boxes."""
        if self.box_format != "xyxy":
            pred_boxes = convert_boxes(pred_boxes, self.box_format, "xyxy")  # (N, 4)
            gold_boxes = convert_boxes(gold_boxes, self.box_format, "xyxy")  # (N, 4)
        self._add_hits(grounding_accuracy(pred_boxes, gold_boxes, self.iou_threshold))  # (N,)


#: Same metric under the name detection-style code uses; an alias, not a copy.
BoxAccuracy = GroundingAccuracy


class PointingGame(_HitRate):
    """Pointing-game accuracy: fraction of heatmaps whose maximum falls inside a ground-truth box.

    See :func:`vpg.metrics.functional.pointing_game_hits` for the pixel-in-box convention.
    """

    def update(self, heatmaps: Tensor, gt_boxes: Sequence[Tensor] | Tensor) -> None:
        """Add ``(N, H, W)`` heatmaps and their ``N`` sets of ``(K_i, 4)`` xyxy boxes in heatmap pixels."""
        self._add_hits(pointing_game_hits(heatmaps, gt_boxes))  # (N,)


class TopKAccuracy(MulticlassAccuracy):
    """Top-k accuracy (micro average over samples): torchmetrics' ``MulticlassAccuracy(top_k=k)``.

    A subclass rather than a re-implementation, so states, DDP sync and ``forward`` are torchmetrics' own.
    ``update(logits (N, C), target (N,))``.
    """

    def __init__(self, num_classes: int, k: int = 1, **kwargs) -> None:
        if not 1 <= k <= num_classes:
            raise ValueError(f"k must be in [1, {num_classes}], got {k}.")
        super().__init__(num_classes=num_classes, top_k=k, average="micro", **kwargs)
        self.k = k


class MultiLabelMAP(MultilabelAveragePrecision):
    """Macro multi-label mAP over the classes that have at least one positive, plus per-class AP.

    Subclasses torchmetrics' ``MultilabelAveragePrecision`` (states ``preds``/``target`` cat-reduced, or
    ``confmat`` sum-reduced when ``thresholds`` is given) but asks it for per-class AP (``average=None``) and
    averages itself, because torchmetrics 1.9 gives a class without positives an AP of 0 and keeps it in its
    macro mean. Here such a class is ``nan`` in :meth:`compute_per_class` and left out of :meth:`compute`.
    Positives are counted in an extra ``sum`` state so the exclusion uses all ranks' targets. ``compute``
    is ``nan`` if no class has a positive.

    Args:
        num_classes: number of labels, ``>= 2`` (a torchmetrics restriction of the multilabel path).
        thresholds: ``None`` for exact AP (stores every score); an int or list for torchmetrics' binned,
            constant-memory approximation, which then needs probabilities in [0, 1].
        ignore_index: target value to leave out (e.g. VOC "difficult" entries).

    ``update(scores (N, C), targets (N, C))``: scores are logits or probabilities. In exact mode they are
    passed through :func:`vpg.metrics.functional.to_unit_interval` (stored as float64), which keeps the
    ranking but stops torchmetrics' per-batch float32 sigmoid from tying large logits or mixing scales
    across batches.
    """

    positives: Tensor

    def __init__(
        self,
        num_classes: int,
        thresholds: int | list[float] | Tensor | None = None,
        ignore_index: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            num_labels=num_classes, average=None, thresholds=thresholds, ignore_index=ignore_index, **kwargs
        )
        self.num_classes = num_classes
        self.add_state("positives", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add ``(N, C)`` scores and ``(N, C)`` multi-hot targets (int or float 0/1)."""
        if scores.ndim != 2 or scores.shape != targets.shape or scores.shape[1] != self.num_classes:
            raise ValueError(
                f"Expected scores and targets of shape (N, {self.num_classes}), "
                f"got {tuple(scores.shape)} and {tuple(targets.shape)}."
            )
        targets = as_int_targets(targets, self.ignore_index)  # (N, C)
        if self.thresholds is None:
            scores = to_unit_interval(scores)  # (N, C) float64, same ranking
        elif not bool(((scores >= 0) & (scores <= 1)).all()):
            raise ValueError("With binned thresholds, MultiLabelMAP needs probabilities in [0, 1].")
        super().update(scores, targets)
        self.positives += (targets == 1).sum(dim=0)  # (C,)

    def _per_class(self) -> Tensor:
        """Per-class AP from the (already synced) states, ``nan`` for classes without positives."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_POSITIVES_WARNING)
            ap = super().compute()  # (C,), unwrapped parent compute: no second sync
        ap = ap.float()  # (C,) float32: the float64 working precision only matters for ranking
        return torch.where(self.positives > 0, ap, torch.full_like(ap, math.nan))  # (C,)

    def compute(self) -> Tensor:
        """Macro mAP over classes with at least one positive (scalar float32)."""
        return self._per_class().nanmean()

    def compute_per_class(self) -> Tensor:
        """``(C,)`` per-class AP (``nan`` = no positives). Under DDP every rank must call it (it syncs)."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return self._per_class().clone()
