"""Pictures for TensorBoard and the README: boxes and text drawn on images, image grids."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

GOLD = (40, 200, 40)
PRED = (230, 40, 40)
OTHER = (160, 160, 160)


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], colours: Sequence[tuple[int, int, int]],
               width: int = 2) -> Image.Image:
    """Copy of ``image`` with xyxy pixel boxes outlined."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for box, colour in zip(boxes, colours):
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
    return out


def caption_below(image: Image.Image, text: str, width_chars: int = 28) -> Image.Image:
    """Image with ``text`` wrapped on a white band below it."""
    font = ImageFont.load_default()
    lines = textwrap.wrap(text, width_chars) or [""]
    band = 12 * len(lines) + 6
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((3, image.height + 3 + 12 * i), line, fill=(0, 0, 0), font=font)
    return out


def grid(images: Sequence[Image.Image], columns: int = 4, pad: int = 4) -> Image.Image:
    """Tile images (padded to the largest) into a grid."""
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    rows = (len(images) + columns - 1) // columns
    out = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, im in enumerate(images):
        out.paste(im, (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return out


def to_chw_tensor(image: Image.Image) -> torch.Tensor:
    """PIL -> (3, H, W) float in [0, 1] for TensorBoard's add_image."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def denormalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """(3, H, W) normalised model input -> PIL image (undo the transform's mean / std)."""
    pixels = image.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    array = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
    return Image.fromarray(array, "RGB")
