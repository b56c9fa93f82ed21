"""FALIP's foveal attention mask: an additive bias in CLIP's ViT self-attention that makes the
[CLS] token look at a region of the image without editing the image.

Conventions (see ``vpg.clip.core``): boxes are xyxy pixels of the model input; token order is
[CLS, patches] with patches in row-major order, so patch (r, c) is token ``1 + r * w + c``.

Region of attention (ROA): every patch a box overlaps with positive area. A box edge lying
exactly on a patch boundary does not touch the next patch; a degenerate box (zero width or
height) still selects the patch it lies in, so every box has a non-empty ROA.

Weights over the ROA's own H' x W' token grid (i, j local indices):
    R_ij   = exp(-((i - (H'-1)/2)^2 + (j - (W'-1)/2)^2) / (2 sigma^2))
    R_norm = alpha * (R - min R + eps) / (max R - min R + eps)
so the centre token gets alpha and the ROA's corner tokens about alpha * eps / (range + eps).
With sigma = 100 the range is ~1e-4, hence R is computed in float64: float32 would round it.

Forms (the bias is shared by all heads):
- "a": only the [CLS] query row is non-zero, at the ROA columns -> (N, L), what the core's
  [CLS]-row fast path takes (blocks before the first biased one run once per image);
- "b": every query row carries the same ROA bias -> (N, L, L);
- "c": the diagonal, ROA tokens attend more to themselves -> (N, L, L).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FORMS = ("a", "b", "c")


def box_token_ranges(boxes: Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """Inclusive patch row/column ranges a box touches.

    boxes: (..., 4) xyxy pixels of an image of ``image_size`` = (H, W) pixels split into
    ``grid`` = (h, w) patches (non-square images and patches allowed).
    Returns (..., 4) long: (row0, col0, row1, col1), all inside the grid, row0 <= row1, col0 <= col1.
    """
    h, w = grid
    height, width = image_size
    patch_h, patch_w = height / h, width / w
    x0, y0, x1, y1 = boxes.double().unbind(-1)  # (...,) each; float64 so 24.0 / 12.0 is exactly 2
    x0, x1 = x0.clamp(0, width), x1.clamp(0, width)
    y0, y1 = y0.clamp(0, height), y1.clamp(0, height)
    # first patch whose span [c*pw, (c+1)*pw) contains x0; last patch that starts before x1
    col0 = torch.floor(x0 / patch_w).clamp(0, w - 1)
    col1 = (torch.ceil(x1 / patch_w) - 1).clamp(0, w - 1)
    row0 = torch.floor(y0 / patch_h).clamp(0, h - 1)
    row1 = (torch.ceil(y1 / patch_h) - 1).clamp(0, h - 1)
    col1, row1 = torch.maximum(col1, col0), torch.maximum(row1, row0)  # degenerate box: its own patch
    return torch.stack([row0, col0, row1, col1], dim=-1).long()  # (..., 4)


def roa_mask(boxes: Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """(N, 4) boxes -> (N, h, w) bool: the patches each box touches."""
    ranges = box_token_ranges(boxes, grid, image_size)  # (N, 4)
    rows = torch.arange(grid[0], device=boxes.device)  # (h,)
    cols = torch.arange(grid[1], device=boxes.device)  # (w,)
    r0, c0, r1, c1 = (t[:, None] for t in ranges.unbind(-1))  # (N, 1) each
    in_rows = (rows >= r0) & (rows <= r1)  # (N, h)
    in_cols = (cols >= c0) & (cols <= c1)  # (N, w)
    return in_rows[:, :, None] & in_cols[:, None, :]  # (N, h, w)


def roa_weights(boxes: Tensor, grid: tuple[int, int], image_size: tuple[int, int], alpha: float = 0.2,
                sigma: float = 100.0, eps: float = 1e-6) -> Tensor:
    """(N, 4) boxes -> (N, h, w) float: R_norm on each box's ROA, 0 elsewhere (see module doc)."""
    ranges = box_token_ranges(boxes, grid, image_size)  # (N, 4)
    r0, c0, r1, c1 = (t[:, None].double() for t in ranges.unbind(-1))  # (N, 1) each
    rows = torch.arange(grid[0], device=boxes.device, dtype=torch.float64)  # (h,)
    cols = torch.arange(grid[1], device=boxes.device, dtype=torch.float64)  # (w,)
    # offsets from the ROA centre in token units: local index i = r - r0, centre (H'-1)/2
    dy = rows - (r0 + r1) / 2  # (N, h)
    dx = cols - (c0 + c1) / 2  # (N, w)
    inside = ((rows >= r0) & (rows <= r1))[:, :, None] & ((cols >= c0) & (cols <= c1))[:, None, :]  # (N, h, w)
    gauss = torch.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / (2 * sigma**2))  # (N, h, w)
    low = gauss.masked_fill(~inside, float("inf")).amin(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    high = gauss.masked_fill(~inside, -float("inf")).amax(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    weights = alpha * (gauss - low + eps) / (high - low + eps)  # (N, h, w)
    return torch.where(inside, weights, torch.zeros_like(weights)).float()  # (N, h, w)


def foveal_mask(boxes: Tensor, grid: tuple[int, int], image_size: tuple[int, int], alpha: float = 0.2,
                sigma: float = 100.0, form: str = "a", eps: float = 1e-6) -> Tensor:
    """FALIP's attention bias for each box.

    boxes: (N, 4) xyxy pixels of the model input; grid: (h, w) patches; image_size: (H, W) pixels.
    Returns (N, L) for form "a" (the [CLS] query row) and (N, L, L) for forms "b" / "c",
    L = 1 + h * w; to be added to q k^T / sqrt(d) before the softmax in the chosen blocks.
    """
    if form not in FORMS:
        raise ValueError(f"foveal mask form must be one of {FORMS}, got {form!r}")
    n = boxes.shape[0]
    weights = roa_weights(boxes, grid, image_size, alpha, sigma, eps).flatten(1)  # (N, h*w)
    row = torch.cat([weights.new_zeros(n, 1), weights], dim=1)  # (N, L): the [CLS] key column stays 0
    if form == "a":
        return row  # (N, L)
    length = row.shape[1]
    if form == "b":
        return row[:, None, :].expand(n, length, length).contiguous()  # (N, L, L): every query row
    return torch.diag_embed(row)  # (N, L, L): form "c", token k's bias on its own key k


def resolve_layers(layers: str | int | Sequence[int], num_layers: int) -> list[int]:
    """Block indices (0-based) from a spec: "all", "last_third", "last:K", an int or a list
    (negative indices count from the end, like Python). Sorted, unique, checked."""
    if isinstance(layers, str):
        spec = layers.strip().lower()
        if spec == "all":
            return list(range(num_layers))
        if spec == "last_third":  # FALIP's 4 of 12 blocks as a fraction, for towers of other depths
            count = max(1, round(num_layers / 3))
            return list(range(num_layers - count, num_layers))
        if spec.startswith("last:"):
            count = int(spec.split(":", 1)[1])
            if not 1 <= count <= num_layers:
                raise ValueError(f"layers {layers!r}: a {num_layers}-block tower has no last {count} blocks")
            return list(range(num_layers - count, num_layers))
        raise ValueError(f"layers must be 'all', 'last_third', 'last:K' or block indices, got {layers!r}")
    indices = [layers] if isinstance(layers, int) else list(layers)
    resolved = set()
    for i in indices:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ValueError(f"block index {i} out of range for a {num_layers}-block tower")
        resolved.add(j)
    if not resolved:
        raise ValueError("layers is empty")
    return sorted(resolved)


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes (pixel edges, x1/y1 exclusive) of (N, H, W) bool masks -> (N, 4) float.

    Batched equivalent of ``vpg.data.pointcloud.foreground_box``; an empty mask gives the zero box.
    """
    n, height, width = masks.shape
    cols = masks.any(dim=1)  # (N, W)
    rows = masks.any(dim=2)  # (N, H)
    col_ids = torch.arange(width, device=masks.device)  # (W,)
    row_ids = torch.arange(height, device=masks.device)  # (H,)
    x0 = torch.where(cols, col_ids, width).amin(dim=1)  # (N,)
    x1 = torch.where(cols, col_ids, -1).amax(dim=1) + 1  # (N,)
    y0 = torch.where(rows, row_ids, height).amin(dim=1)  # (N,)
    y1 = torch.where(rows, row_ids, -1).amax(dim=1) + 1  # (N,)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()  # (N, 4)
    return torch.where(masks.flatten(1).any(1, keepdim=True), boxes, torch.zeros_like(boxes))  # (N, 4)


__all__ = ["FORMS", "box_token_ranges", "foveal_mask", "mask_boxes", "resolve_layers", "roa_mask", "roa_weights"]
