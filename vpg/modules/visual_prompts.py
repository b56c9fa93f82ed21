"""Visual prompts that edit the image (the baselines FALIP is compared with), batched on tensors.

Every function takes the batch of *normalised* model inputs ``images`` (B, 3, H, W), the boxes
(N, 4) xyxy pixels of the model input and ``index`` (N,), the image row of each box, and returns
one edited image per box (N, 3, H, W). Normalisation is a per-channel affine map, so blending
and blurring normalised tensors equals doing it on pixels and normalising afterwards; only the
colour of the ellipse has to be normalised (``normalised_colour``).

- crop: the box region resampled to the full input size (bilinear ``roi_align``). Cropped from
  the model input, not from the original photo: on COCO this has the input's resolution;
  ReCLIP crops the original image.
- red ellipse (RedCircle): an anti-aliased red ring on the ellipse inscribed in the box.
- blur outside (Blur / "reverse blur"): Gaussian blur everywhere except inside the box, with a
  soft edge equal to each pixel's covered fraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

EDITS = ("crop", "circle", "blur")
RED = (1.0, 0.0, 0.0)


def normalised_colour(rgb: Sequence[float], mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """An RGB colour in [0, 1] as the model sees it after normalisation: (3,)."""
    return (torch.tensor(rgb) - torch.tensor(mean)) / torch.tensor(std)


def crop_resize(images: Tensor, boxes: Tensor, index: Tensor) -> Tensor:
    """The box region of each image resampled to the image size: (N, 3, H, W)."""
    height, width = images.shape[-2:]
    boxes = boxes.to(images.dtype)
    # at least one pixel wide, so a degenerate box still samples its neighbourhood
    x0, y0, x1, y1 = boxes.unbind(-1)  # (N,) each
    x1, y1 = torch.maximum(x1, x0 + 1), torch.maximum(y1, y0 + 1)
    rois = torch.stack([index.to(images.dtype), x0, y0, x1, y1], dim=1)  # (N, 5)
    return roi_align(images, rois, output_size=(height, width), spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)  # (N, 3, H, W)


def box_coverage(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Fraction of each pixel [x, x+1) x [y, y+1) inside each box: (N, H, W) in [0, 1]."""
    height, width = size
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)  # (W,) left pixel edges
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)  # (H,)
    x0, y0, x1, y1 = (t[:, None] for t in boxes.unbind(-1))  # (N, 1) each
    cover_x = (torch.minimum(xs + 1, x1) - torch.maximum(xs, x0)).clamp(0, 1)  # (N, W)
    cover_y = (torch.minimum(ys + 1, y1) - torch.maximum(ys, y0)).clamp(0, 1)  # (N, H)
    return cover_y[:, :, None] * cover_x[:, None, :]  # (N, H, W)


def ellipse_ring(boxes: Tensor, size: tuple[int, int], thickness: float) -> Tensor:
    """Opacity (N, H, W) of a ring of ``thickness`` pixels on the ellipse inscribed in each box.

    Distance of a pixel centre to the ellipse is approximated to first order (Sampson):
    F = (dx/a)^2 + (dy/b)^2 - 1, d = F / |grad F|; exact on circles far from the centre, and
    good to a fraction of a pixel on the rings drawn here. Opacity falls off linearly over one
    pixel at the ring's edges (anti-aliasing).
    """
    height, width = size
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5  # (W,) pixel centres
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5  # (H,)
    x0, y0, x1, y1 = (t[:, None, None] for t in boxes.unbind(-1))  # (N, 1, 1) each
    a = ((x1 - x0) / 2).clamp_min(0.5)  # semi-axes, at least half a pixel
    b = ((y1 - y0) / 2).clamp_min(0.5)
    dx = xs[None, None, :] - (x0 + x1) / 2  # (N, 1, W)
    dy = ys[None, :, None] - (y0 + y1) / 2  # (N, H, 1)
    f = (dx / a) ** 2 + (dy / b) ** 2 - 1  # (N, H, W)
    grad = 2 * torch.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2).clamp_min(1e-6)  # (N, H, W)
    distance = (f / grad).abs()  # (N, H, W) pixels
    return (thickness / 2 + 0.5 - distance).clamp(0, 1)  # (N, H, W)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with replicate padding (kernel cut at 3 sigma)."""
    if sigma <= 0:
        return images
    height, width = images.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), max(height, width) - 1))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)  # (K,)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()  # (K,)
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)  # along W
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)  # along H


def blur_outside(images: Tensor, boxes: Tensor, index: Tensor, sigma: float,
                 blurred: Tensor | None = None) -> Tensor:
    """Each image blurred outside its box: (N, 3, H, W). ``blurred``: the (B, 3, H, W) blurred
    images if already computed (one blur per image, not per box)."""
    if blurred is None:
        blurred = gaussian_blur(images, sigma)  # (B, 3, H, W)
    inside = box_coverage(boxes.to(images.dtype), images.shape[-2:]).unsqueeze(1)  # (N, 1, H, W)
    return inside * images[index] + (1 - inside) * blurred[index]  # (N, 3, H, W)


def draw_ellipse(images: Tensor, boxes: Tensor, colour: Tensor, thickness: float) -> Tensor:
    """Already per-box images (N, 3, H, W) with a ring around each box in ``colour`` (3,) normalised."""
    alpha = ellipse_ring(boxes.to(images.dtype), images.shape[-2:], thickness).unsqueeze(1)  # (N, 1, H, W)
    return images * (1 - alpha) + colour.to(images).view(1, 3, 1, 1) * alpha  # (N, 3, H, W)


def edit_images(images: Tensor, boxes: Tensor, index: Tensor, edits: Sequence[str], *, mean: Sequence[float],
                std: Sequence[float], blur_sigma: float, circle_thickness: float,
                circle_colour: Sequence[float] = RED) -> Tensor:
    """Apply ``edits`` (a subset of ``EDITS``) for every box: (N, 3, H, W).

    Order: crop, then blur outside the box, then the ellipse on top, so "circle+blur" draws a
    sharp ring on the blurred picture (RedCircle + Blur) and "crop+..." edits the cropped view
    with the box filling it.
    """
    unknown = set(edits) - set(EDITS)
    if unknown:
        raise ValueError(f"unknown image edits {sorted(unknown)}; known: {EDITS}")
    height, width = images.shape[-2:]
    per_box = False  # whether ``images`` already holds one row per box
    if "crop" in edits:
        images, per_box = crop_resize(images, boxes, index), True  # (N, 3, H, W)
        boxes = boxes.new_tensor([0.0, 0.0, width, height]).expand(images.shape[0], 4)  # the box is the view
    if "blur" in edits:
        rows = torch.arange(images.shape[0], device=images.device) if per_box else index
        images, per_box = blur_outside(images, boxes, rows, blur_sigma), True  # (N, 3, H, W)
    if not per_box:
        images = images[index]  # (N, 3, H, W) one copy per box
    if "circle" in edits:
        colour = normalised_colour(circle_colour, mean, std)
        images = draw_ellipse(images, boxes, colour, circle_thickness)
    return images


__all__ = [
    "EDITS",
    "RED",
    "blur_outside",
    "box_coverage",
    "crop_resize",
    "draw_ellipse",
    "edit_images",
    "ellipse_ring",
    "gaussian_blur",
    "normalised_colour",
]
