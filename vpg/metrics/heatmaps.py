"""Heatmap -> box protocol and evaluation units of weakly supervised phrase grounding (WWbL).

Pure functions on tensors; the stateful counting is done by :class:`vpg.metrics.PointingGame`
and :class:`vpg.metrics.GroundingAccuracy` (pointing game and bbox accuracy).

Protocol (WWbL, "What is where by looking", NeurIPS 2022):

- **Pointing game**: the argmax of the heatmap, resized to the original image, inside any
  ground-truth box (:func:`vpg.metrics.pointing_game_hits`).
- **Bbox accuracy**: the heatmap is min-max normalised and thresholded at 0.5 x its maximum;
  every connected region (8-connectivity) gives its bounding box, scored by the mean of the
  thresholded heatmap inside the box; non-maximum suppression (``torchvision.ops.nms``, IoU
  0.05); boxes scoring at most 0.5 x the best score are dropped; the prediction is the union
  (enclosing box) of the kept boxes. Correct if IoU >= 0.5 with the union of the GT boxes.
- Ground-truth boxes covering <= 5 % of the image are dropped; a unit without boxes left is
  not evaluated.
- Flickr30k Entities: the unit is an entity (all mentions of one entity id in one image):
  its heatmaps are averaged, its boxes united.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import nms

from vpg.metrics.boxes import box_area, check_boxes

__all__ = [
    "MIN_BOX_FRACTION",
    "average_by_key",
    "connected_components",
    "drop_small_boxes",
    "heatmap_boxes",
    "heatmap_to_box",
    "heatmap_to_original",
    "normalize_heatmap",
    "peak_point",
    "union_box",
]

MIN_BOX_FRACTION = 0.05  # WWbL: ground-truth boxes covering <= 5 % of the image are not evaluated


def normalize_heatmap(heatmap: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max normalise one (H, W) heatmap (or each of (N, H, W)) to [0, 1]; constant -> 0."""
    flat = heatmap.reshape(-1, heatmap.shape[-2] * heatmap.shape[-1]).float()  # (N, HW)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view(heatmap.shape)


def connected_components(mask: Tensor) -> Tensor:
    """8-connected components of a (H, W) bool mask: (H, W) long labels, 0 = background, 1..K.

    Labels are found by min-label propagation over the 3x3 neighbourhood (as a max-pool of
    negated labels) with pointer jumping (each pixel takes its label's label), which needs a
    number of rounds logarithmic in a region's size for blob-like regions. Labels are then
    renumbered 1..K in row-major order of each region's first pixel.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape (H, W), got {tuple(mask.shape)}")
    mask = mask.bool()
    h, w = mask.shape
    if not bool(mask.any()):
        return torch.zeros(h, w, dtype=torch.long, device=mask.device)
    big = h * w  # larger than every pixel index: "no label"
    index = torch.arange(h * w, device=mask.device).view(h, w)
    labels = torch.where(mask, index, torch.full_like(index, big))  # (H, W): own index on the foreground
    while True:
        # min over the 3x3 neighbourhood of foreground pixels = -maxpool(-labels)
        neighbour_min = -F.max_pool2d(-labels[None, None].double(), 3, stride=1, padding=1)[0, 0].long()
        updated = torch.where(mask, torch.minimum(labels, neighbour_min), labels)
        fg = updated[mask]  # (F,) labels of foreground pixels: indices of foreground pixels
        updated[mask] = updated.view(-1)[fg]  # pointer jumping: a label's own label
        if torch.equal(updated, labels):
            break
        labels = updated
    roots = labels[mask]  # (F,)
    unique, inverse = torch.unique(roots, sorted=True, return_inverse=True)  # sorted roots = row-major order
    out = torch.zeros(h, w, dtype=torch.long, device=mask.device)
    out[mask] = inverse + 1
    return out


def heatmap_boxes(heatmap: Tensor, threshold: float = 0.5, nms_iou: float = 0.05,
                  score_drop: float = 0.5) -> tuple[Tensor, Tensor]:
    """WWbL's boxes of one (H, W) heatmap: (K, 4) xyxy pixel boxes and their (K,) scores.

    The heatmap is min-max normalised; pixels >= ``threshold`` x max are foreground; each
    8-connected region gives the box [x_min, y_min, x_max + 1, y_max + 1] (pixel edges), scored
    by the mean of the heatmap thresholded to zero (values below the threshold count 0) inside
    the box; NMS at ``nms_iou``; boxes with score <= ``score_drop`` x the best are dropped.
    Boxes come sorted by score. A heatmap without foreground (constant) gives the whole image.
    """
    if heatmap.dim() != 2:
        raise ValueError(f"heatmap must have shape (H, W), got {tuple(heatmap.shape)}")
    h, w = heatmap.shape
    heat = normalize_heatmap(heatmap)  # (H, W) in [0, 1]
    peak = float(heat.max())
    if peak <= 0:  # constant heatmap: no region stands out
        return heat.new_tensor([[0.0, 0.0, float(w), float(h)]]), heat.new_zeros(1)
    fg = heat >= threshold * peak  # (H, W)
    thresholded = torch.where(fg, heat, torch.zeros_like(heat))  # WWbL thresholds "to zero"
    labels = connected_components(fg)  # (H, W)
    k = int(labels.max())
    ys, xs = torch.nonzero(labels, as_tuple=True)  # (F,), (F,)
    region = labels[ys, xs] - 1  # (F,) 0-based region of each foreground pixel
    x0 = torch.full((k,), w, dtype=torch.long, device=heat.device).scatter_reduce(0, region, xs, "amin")
    y0 = torch.full((k,), h, dtype=torch.long, device=heat.device).scatter_reduce(0, region, ys, "amin")
    x1 = torch.zeros(k, dtype=torch.long, device=heat.device).scatter_reduce(0, region, xs, "amax") + 1
    y1 = torch.zeros(k, dtype=torch.long, device=heat.device).scatter_reduce(0, region, ys, "amax") + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1)  # (K, 4) pixel edges
    # mean heat inside each box via an integral image (summed-area table)
    table = F.pad(thresholded.double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # (H+1, W+1)
    sums = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]  # (K,)
    scores = (sums / ((x1 - x0) * (y1 - y0)).double()).float()  # (K,)
    boxes = boxes.float()
    keep = nms(boxes, scores, nms_iou)  # sorted by decreasing score
    boxes, scores = boxes[keep], scores[keep]
    strong = scores > score_drop * scores[0]
    strong[0] = True  # the best box always stays (a tie with score_drop * best cannot drop it)
    return boxes[strong], scores[strong]


def union_box(boxes: Tensor) -> Tensor:
    """Enclosing box of (K, 4) xyxy boxes -> (4,); K >= 1."""
    check_boxes(boxes, "boxes")
    if boxes.dim() != 2 or len(boxes) == 0:
        raise ValueError(f"union_box needs (K, 4) boxes with K >= 1, got {tuple(boxes.shape)}")
    return torch.cat([boxes[:, :2].amin(0), boxes[:, 2:].amax(0)])  # (4,)


def heatmap_to_box(heatmap: Tensor, **kwargs) -> Tensor:
    """The predicted box of one (H, W) heatmap: union of :func:`heatmap_boxes`, (4,) xyxy pixels."""
    boxes, _ = heatmap_boxes(heatmap, **kwargs)
    return union_box(boxes)


def drop_small_boxes(boxes: Tensor, width: float, height: float,
                     min_fraction: float = MIN_BOX_FRACTION) -> Tensor:
    """Keep the (K, 4) xyxy boxes covering more than ``min_fraction`` of a width x height image."""
    check_boxes(boxes, "boxes")
    return boxes[box_area(boxes) > min_fraction * float(width) * float(height)]  # (K', 4)


def heatmap_to_original(heatmap: Tensor, orig_size: Sequence[int], scale: Sequence[float],
                        offset: Sequence[float] = (0.0, 0.0)) -> Tensor:
    """A heatmap over the model input -> over the original image: (h_in, w_in) -> (H, W).

    ``orig_size`` = (W, H); the DataModules' geometry: model pixel = original pixel * scale +
    offset. Every original pixel centre is mapped into the model input and sampled bilinearly
    (so squash, letterbox and crops are all handled; for a squash this equals a bilinear resize
    with ``align_corners=False``).
    """
    width, height = int(orig_size[0]), int(orig_size[1])
    h_in, w_in = heatmap.shape[-2:]
    sx, sy = float(scale[0]), float(scale[1])
    ox, oy = float(offset[0]), float(offset[1])
    device = heatmap.device
    u = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * sx + ox  # (W,) model x of centres
    v = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * sy + oy  # (H,)
    gx, gy = u / w_in * 2 - 1, v / h_in * 2 - 1  # grid_sample's [-1, 1] (align_corners=False)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    out = F.grid_sample(heatmap.float()[None, None], grid[None], mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, 0]  # (H, W)


def peak_point(heatmap: Tensor) -> tuple[int, int]:
    """(x, y) pixel of the first maximum (row-major), as the pointing game reads it."""
    flat = int(heatmap.reshape(-1).argmax())
    return flat % heatmap.shape[-1], flat // heatmap.shape[-1]


def average_by_key(keys: Sequence[Hashable], heatmaps: Tensor) -> tuple[list[Hashable], Tensor]:
    """Mean heatmap per distinct key (first-seen order): (N, H, W) -> (keys, (U, H, W))."""
    order: dict[Hashable, int] = {}
    index = torch.tensor([order.setdefault(k, len(order)) for k in keys], device=heatmaps.device)  # (N,)
    sums = heatmaps.new_zeros(len(order), *heatmaps.shape[1:]).index_add_(0, index, heatmaps)  # (U, H, W)
    counts = torch.bincount(index, minlength=len(order)).to(heatmaps.dtype)  # (U,)
    return list(order), sums / counts.view(-1, *([1] * (heatmaps.dim() - 1)))
