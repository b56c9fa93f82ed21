"""Image(+box) transforms. Methods choose theirs; DataModules apply them.

Every transform maps ``(PIL image, boxes (K, 4) xyxy pixels of that image or None)`` to
``(tensor (3, S, S) normalised, boxes (K, 4) xyxy pixels of the tensor or None)``, so boxes
stay in model-input pixels inside vpg (conversions only at the edges).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; grayscale / RGBA / palette / CMYK / 16-bit images -> 8-bit RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bit instead of clipping.
        arr = torch.from_numpy(__import__("numpy").asarray(image, dtype="float32"))
        arr = (arr / max(float(arr.max()), 1.0) * 255.0).clamp(0, 255).to(torch.uint8)
        image = Image.fromarray(arr.numpy(), mode="L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


class SquashResize:
    """Resize to size x size ignoring the aspect ratio (what FALIP's authors and CLIP zero-shot on
    synthetic square scenes do), then normalise."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size, self.mean, self.std = int(size), list(mean), list(std)

    def __call__(self, image: Image.Image, boxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        image = to_rgb(image)
        w, h = image.size
        out = TF.resize(image, [self.size, self.size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        tensor = TF.normalize(TF.to_tensor(out), self.mean, self.std)  # (3, S, S)
        if boxes is not None:
            scale = torch.tensor([self.size / w, self.size / h] * 2, dtype=torch.float32)
            boxes = boxes.float() * scale
        return tensor, boxes


class Letterbox:
    """Resize the long edge to ``size`` keeping the aspect ratio, pad to a square (HiVG style:
    padding at bottom/right so box coordinates only scale)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size, self.mean, self.std = int(size), list(mean), list(std)

    def __call__(self, image: Image.Image, boxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        image = to_rgb(image)
        w, h = image.size
        scale = self.size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        out = TF.resize(image, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        tensor = TF.normalize(TF.to_tensor(out), self.mean, self.std)  # (3, nh, nw)
        padded = tensor.new_zeros(3, self.size, self.size)  # zero = the mean colour after normalising
        padded[:, :nh, :nw] = tensor
        if boxes is not None:
            boxes = boxes.float() * torch.tensor([nw / w, nh / h] * 2)
        return padded, boxes


def clip_transform(clip, letterbox: bool = False) -> SquashResize | Letterbox:
    """The evaluation transform matching a CLIP core's input size and normalisation."""
    cls = Letterbox if letterbox else SquashResize
    return cls(clip.image_size[0], clip.image_mean, clip.image_std)
