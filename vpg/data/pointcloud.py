"""PointCLIP-style depth maps of point clouds: orthogonal projection onto 6 axis-aligned views.

Object coordinates: x right, y up, z towards the front camera. Each view is a (right, down,
towards-camera) basis; a point's pixel is its (right, down) coordinate and its brightness grows
with the towards-camera coordinate (nearer = brighter).

Per cloud: centred on its bounding-box centre and divided by its largest absolute coordinate, so
it fits the same square in every view. Brightness = 0.2 + 0.8 * nearness with nearness in
[0, 1], so every hit pixel is >= 0.2 and the background is exactly 0. Each point is splatted onto
a small disk of pixels; per pixel the brightest (nearest) value wins, a z-buffer done with one
``scatter_reduce(amax)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

VIEW_NAMES = ("front", "back", "left", "right", "top", "bottom")

# Rows: the image's right axis, down axis, and the axis pointing at the camera (object coords).
_VIEW_BASES = {
    "front": ((1, 0, 0), (0, -1, 0), (0, 0, 1)),  # camera on +z
    "back": ((-1, 0, 0), (0, -1, 0), (0, 0, -1)),  # camera on -z
    "left": ((0, 0, 1), (0, -1, 0), (-1, 0, 0)),  # camera on -x
    "right": ((0, 0, -1), (0, -1, 0), (1, 0, 0)),  # camera on +x
    "top": ((1, 0, 0), (0, 0, 1), (0, 1, 0)),  # camera on +y, the front (+z) at the image bottom
    "bottom": ((1, 0, 0), (0, 0, -1), (0, -1, 0)),  # camera on -y
}

MIN_BRIGHTNESS = 0.2  # farthest hit pixel; keeps hits distinguishable from the 0 background


def default_splat_radius(image_size: int) -> int:
    """1 px at 32 px, 3 at 96 px, 7 at 224 px: the visible half of a 1024-point cloud then
    covers its silhouette with few holes, so far surfaces rarely show through near ones."""
    return max(1, round(image_size / 32))


def _view_bases(views: int | Sequence[str]) -> torch.Tensor:
    names = VIEW_NAMES[:views] if isinstance(views, int) else tuple(views)
    if not names or any(n not in _VIEW_BASES for n in names):
        raise ValueError(f"views must be 1..6 or names from {VIEW_NAMES}, got {views!r}")
    return torch.tensor([_VIEW_BASES[n] for n in names], dtype=torch.float32)  # (V, 3, 3)


def _disk_offsets(radius: int) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(r, r, indexing="ij")  # (2r+1, 2r+1) each
    inside = dy**2 + dx**2 <= radius**2
    return torch.stack([dy[inside], dx[inside]], dim=1)  # (K, 2)


def normalise_cloud(points: torch.Tensor) -> torch.Tensor:
    """Centre on the bounding-box centre and scale into [-1, 1]^3; (..., N, 3) -> same."""
    lo = points.amin(dim=-2, keepdim=True)  # (..., 1, 3)
    hi = points.amax(dim=-2, keepdim=True)  # (..., 1, 3)
    centred = points - (lo + hi) / 2
    scale = centred.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)  # (..., 1, 1)
    return centred / scale


def project_depth_maps(
    points: torch.Tensor,
    image_size: int,
    views: int | Sequence[str] = 6,
    splat_radius: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth maps of one cloud (N, 3) or a batch (B, N, 3).

    Returns depth (V, H, W) / (B, V, H, W) float32 in [0, 1] (nearer = brighter, 0 = empty)
    and the matching boolean foreground. ``views`` is a count (the first ``views`` of
    ``VIEW_NAMES``) or a sequence of view names.
    """
    single = points.dim() == 2
    batch = points.unsqueeze(0) if single else points  # (B, N, 3)
    batch = normalise_cloud(batch.float())
    bases = _view_bases(views).to(batch.device)  # (V, 3, 3)
    radius = default_splat_radius(image_size) if splat_radius is None else splat_radius
    size = image_size
    num_b = batch.shape[0]
    num_v = bases.shape[0]

    coords = torch.einsum("bnj,vij->bvni", batch, bases)  # (B, V, N, 3): right, down, towards
    # [-1, 1] -> pixel centres [r, size - 1 - r], symmetric about the image centre, so the
    # splats of the outermost points still fit inside the image
    fill = max(1 - 2 * radius / (size - 1), 0.0)
    col = ((coords[..., 0] * fill + 1) / 2 * (size - 1) + 0.5).floor().long().clamp(0, size - 1)  # (B, V, N)
    row = ((coords[..., 1] * fill + 1) / 2 * (size - 1) + 0.5).floor().long().clamp(0, size - 1)  # (B, V, N)
    nearness = (coords[..., 2] + 1) / 2  # (B, V, N) in [0, 1]
    value = MIN_BRIGHTNESS + (1 - MIN_BRIGHTNESS) * nearness.clamp(0, 1)  # (B, V, N)

    offsets = _disk_offsets(radius).to(batch.device)  # (K, 2)
    rows = (row.unsqueeze(-1) + offsets[:, 0]).clamp(0, size - 1)  # (B, V, N, K)
    cols = (col.unsqueeze(-1) + offsets[:, 1]).clamp(0, size - 1)  # (B, V, N, K)
    plane = torch.arange(num_b * num_v, device=batch.device).view(num_b, num_v, 1, 1)  # (B, V, 1, 1)
    flat = (plane * size + rows) * size + cols  # (B, V, N, K) index into B*V*H*W
    values = value.unsqueeze(-1).expand_as(flat)  # (B, V, N, K)

    depth = torch.zeros(num_b * num_v * size * size, device=batch.device)
    depth = depth.scatter_reduce(0, flat.reshape(-1), values.reshape(-1), reduce="amax", include_self=True)
    depth = depth.view(num_b, num_v, size, size)  # (B, V, H, W)
    foreground = depth > 0
    if single:
        return depth[0], foreground[0]
    return depth, foreground


def depth_to_rgb(depth: torch.Tensor) -> torch.Tensor:
    """Grayscale depth (..., H, W) -> (..., 3, H, W), the three channels equal."""
    return depth.unsqueeze(-3).expand(*depth.shape[:-2], 3, *depth.shape[-2:]).contiguous()


def foreground_box(foreground: torch.Tensor) -> torch.Tensor:
    """xyxy box (4,) float32 of the hit pixels of one (H, W) mask, pixel edges (x2, y2 exclusive).

    An empty mask gives the zero box.
    """
    ys, xs = torch.nonzero(foreground, as_tuple=True)
    if xs.numel() == 0:
        return torch.zeros(4)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
