"""Grounding, pointing-game and classification metrics: pure functions plus DDP-safe torchmetrics Metrics."""

from vpg.metrics.boxes import (
    box_area,
    clip_boxes,
    convert_boxes,
    scale_boxes,
    to_normalized,
    to_pixels,
)
from vpg.metrics.classes import BoxAccuracy, GroundingAccuracy, MultiLabelMAP, PointingGame, TopKAccuracy
from vpg.metrics.functional import (
    box_iou_pairwise,
    giou_pairwise,
    grounding_accuracy,
    multilabel_map,
    per_class_ap,
    pointing_game_hits,
    topk_accuracy,
)

__all__ = [
    "BoxAccuracy",
    "GroundingAccuracy",
    "MultiLabelMAP",
    "PointingGame",
    "TopKAccuracy",
    "box_area",
    "box_iou_pairwise",
    "clip_boxes",
    "convert_boxes",
    "giou_pairwise",
    "grounding_accuracy",
    "multilabel_map",
    "per_class_ap",
    "pointing_game_hits",
    "scale_boxes",
    "to_normalized",
    "to_pixels",
    "topk_accuracy",
]
