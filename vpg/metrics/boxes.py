"""Box format and coordinate-frame conversions.

Datasets hand us boxes in different conventions: RefCOCO stores pixel ``xywh``, DETR-style heads predict
normalised ``cxcywh``, and IoU code wants pixel or normalised ``xyxy``. Every conversion goes through
:func:`convert_boxes` so a frame mix-up fails loudly (``ValueError``) instead of silently giving a low IoU.

Format names follow :func:`torchvision.ops.box_convert`:

* ``"xyxy"``: ``(x0, y0, x1, y1)``, top-left and bottom-right corners.
* ``"xywh"``: ``(x0, y0, w, h)``, top-left corner plus width and height.
* ``"cxcywh"``: ``(cx, cy, w, h)``, centre plus width and height.

"Normalised" means x-like entries are divided by the image width and y-like entries by the image height,
so the image spans ``[0, 1]`` on both axes. All three formats list their entries as (x, y, x, y), which is
why scaling does not depend on the format.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert, clip_boxes_to_image

__all__ = [
    "BOX_FORMATS",
    "box_area",
    "check_boxes",
    "check_format",
    "clip_boxes",
    "convert_boxes",
    "scale_boxes",
    "to_normalized",
    "to_pixels",
]

BOX_FORMATS: tuple[str, ...] = ("xyxy", "xywh", "cxcywh")


def check_format(fmt: str) -> str:
    """Reject unknown format names (torchvision also accepts rotated formats, which we never want)."""
    if fmt not in BOX_FORMATS:
        raise ValueError(f"Unknown box format {fmt!r}; expected one of {BOX_FORMATS}.")
    return fmt


def check_boxes(boxes: Tensor, name: str = "boxes") -> Tensor:
    """Reject anything that is not a ``(..., 4)`` tensor, before it broadcasts into a wrong answer."""
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}.")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}.")
    return boxes


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"Image width and height must be positive, got width={width}, height={height}.")


def scale_boxes(boxes: Tensor, sx: float, sy: float) -> Tensor:
    """Multiply x-like entries by ``sx`` and y-like entries by ``sy``; valid for every format here.

    Use it when an image is resized by (sx, sy): the boxes follow without a format round-trip.
    """
    check_boxes(boxes)
    scale = torch.tensor([sx, sy, sx, sy], device=boxes.device)  # (4,)
    if boxes.is_floating_point():
        scale = scale.to(boxes.dtype)
    return boxes * scale  # (..., 4)


def to_pixels(boxes: Tensor, width: float, height: float) -> Tensor:
    """Normalised ([0, 1]) boxes -> pixel boxes of a ``width`` x ``height`` image (any format)."""
    _check_size(width, height)
    return scale_boxes(boxes, width, height)  # (..., 4)


def to_normalized(boxes: Tensor, width: float, height: float) -> Tensor:
    """Pixel boxes of a ``width`` x ``height`` image -> normalised ([0, 1]) boxes (any format).

    Integer pixel boxes come back as floats: a normalised box is fractional by nature.
    """
    _check_size(width, height)
    check_boxes(boxes)
    if not boxes.is_floating_point():
        boxes = boxes.to(torch.get_default_dtype())
    return scale_boxes(boxes, 1.0 / width, 1.0 / height)  # (..., 4)


def convert_boxes(
    boxes: Tensor,
    in_fmt: str,
    out_fmt: str,
    size: tuple[float, float] | None = None,
    in_normalized: bool = False,
    out_normalized: bool = False,
) -> Tensor:
    """Convert between formats and between normalised/pixel frames in one call.

    Args:
        boxes: ``(..., 4)`` boxes in ``in_fmt``.
        in_fmt, out_fmt: one of ``"xyxy"``, ``"xywh"``, ``"cxcywh"``.
        size: ``(width, height)`` of the image, in PIL's ``Image.size`` order (not torch's (H, W)).
            Required only when ``in_normalized != out_normalized``.
        in_normalized, out_normalized: whether the input / output are in the normalised [0, 1] frame.

    Returns:
        ``(..., 4)`` boxes in ``out_fmt`` and the requested frame (always a new tensor).
    """
    check_boxes(boxes)
    check_format(in_fmt)
    check_format(out_fmt)
    if in_normalized != out_normalized:
        if size is None:
            raise ValueError(
                "convert_boxes needs size=(width, height) to change between pixel and normalised."
            )
        if len(size) != 2:
            raise ValueError(f"size must be (width, height), got {size!r}.")
    # Rescale in whichever frame the input is in: scaling commutes with format changes (entries are x,y,x,y).
    out = box_convert(boxes, in_fmt=in_fmt, out_fmt=out_fmt)  # (..., 4)
    if in_normalized and not out_normalized:
        out = to_pixels(out, size[0], size[1])  # (..., 4)
    elif out_normalized and not in_normalized:
        out = to_normalized(out, size[0], size[1])  # (..., 4)
    return out


def clip_boxes(boxes: Tensor, width: float, height: float) -> Tensor:
    """Clamp ``xyxy`` boxes to the image ``[0, width] x [0, height]`` (use 1, 1 for normalised boxes).

    Only ``xyxy`` is accepted because clamping ``xywh``/``cxcywh`` entries directly is wrong; convert first.
    """
    check_boxes(boxes)
    _check_size(width, height)
    return clip_boxes_to_image(boxes, (height, width))  # (..., 4); torchvision takes (H, W)


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of each box; inverted ``xyxy`` boxes (x1 < x0) give 0 rather than a negative area."""
    check_boxes(boxes)
    check_format(fmt)
    if fmt != "xyxy":
        boxes = box_convert(boxes, in_fmt=fmt, out_fmt="xyxy")  # (..., 4)
    # Not torchvision's box_area: it multiplies raw side lengths, so an inverted box gets a signed area.
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)  # (..., 2)
    return wh[..., 0] * wh[..., 1]  # (...,)
