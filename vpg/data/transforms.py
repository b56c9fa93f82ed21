"""Image(+box) transforms. Methods choose theirs; DataModules apply them.

Every transform maps ``(PIL image, boxes (K, 4) xyxy pixels of that image or None)`` to
``(tensor (3, H, W) normalised, boxes (K, 4) xyxy pixels of the tensor or None)``, so boxes
stay in model-input pixels inside vpg (conversions only at the edges).

Box contract: the returned boxes are the exact geometric image of the input boxes and are **not
clipped** to the output (a crop may leave part of a box outside); DataModules clip where they need
to. So the corners of the whole-image box ``[0, 0, W, H]`` give a transform's scale and offset.
Squash and letterbox are pure scales (letterbox pads bottom/right only); the crops add an offset;
the horizontal flip of :class:`FewShotTrainTransform` mirrors x (boxes stay x1 < x2).

Random transforms take optional keyword arguments ``rng`` (a ``numpy.random.Generator``; the
DataModules pass ``sample_rng(seed, epoch, index)`` so augmentations are resumable) and, for the
text-aware HiVG transform, ``text``. Without ``rng`` they draw fresh entropy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BICUBIC = TF.InterpolationMode.BICUBIC
EXIF_ORIENTATION = 0x0112

# Expressions that name a position: cropping could change which object they refer to.
SPATIAL_WORDS = re.compile(r"\b(left|right|top|bottom|middle)(most)?\b", re.IGNORECASE)


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; grayscale / RGBA / palette / CMYK / 16-bit images -> 8-bit RGB."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose would copy every image otherwise
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit or float grayscale: scale the range to 8 bit instead of clipping at 255.
        arr = np.asarray(image, dtype=np.float32)
        arr = np.clip(arr / max(float(arr.max()), 1.0) * 255.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(arr)  # mode L
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent -> white, not black
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def has_spatial_words(text: str | None) -> bool:
    """Whether an expression names a position (left / right / top / bottom / middle, also -most)."""
    return bool(text) and SPATIAL_WORDS.search(text) is not None


def _normalised(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    return TF.normalize(TF.to_tensor(image), list(mean), list(std))  # (3, H, W)


def _affine(boxes: Tensor | None, sx: float, sy: float, ox: float = 0.0, oy: float = 0.0) -> Tensor | None:
    """x -> x * sx + ox, y -> y * sy + oy on xyxy boxes (K, 4)."""
    if boxes is None:
        return None
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    offset = torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
    return boxes.float() * scale + offset  # (K, 4)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class SquashResize:
    """Resize to size x size ignoring the aspect ratio (what FALIP's authors and CLIP zero-shot on
    synthetic square scenes do), then normalise. A pure scale: (S / W, S / H)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size, self.mean, self.std = int(size), list(mean), list(std)

    def __call__(self, image: Image.Image, boxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        image = to_rgb(image)
        w, h = image.size
        out = TF.resize(image, [self.size, self.size], interpolation=BICUBIC, antialias=True)
        return _normalised(out, self.mean, self.std), _affine(boxes, self.size / w, self.size / h)


def _letterbox(image: Image.Image, size: int, mean, std) -> tuple[Tensor, float, float]:
    """Long edge to ``size``, pad bottom/right with the mean colour; returns (tensor, sx, sy)."""
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = TF.resize(image, [nh, nw], interpolation=BICUBIC, antialias=True)
    tensor = _normalised(out, mean, std)  # (3, nh, nw)
    padded = tensor.new_zeros(3, size, size)  # zero = the mean colour after normalising
    padded[:, :nh, :nw] = tensor
    return padded, nw / w, nh / h


class Letterbox:
    """Resize the long edge to ``size`` keeping the aspect ratio, pad to a square (HiVG style:
    padding at bottom/right so box coordinates only scale)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size, self.mean, self.std = int(size), list(mean), list(std)

    def __call__(self, image: Image.Image, boxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        tensor, sx, sy = _letterbox(to_rgb(image), self.size, self.mean, self.std)
        return tensor, _affine(boxes, sx, sy)


class HiVGTrainTransform:
    """HiVG / TransVG-style REC training augmentation.

    1. colour jitter: brightness, contrast and saturation factors each uniform in
       ``[1 - jitter, 1 + jitter]`` (TransVG's ``ColorJitter(0.4, 0.4, 0.4)``);
    2. with probability ``crop_prob`` a random crop that keeps ``boxes[0]`` (the referred object)
       whole, each side at least ``min_crop`` of the image; skipped when ``text`` names a position
       (left / right / top / bottom / middle), since cropping could change the referent;
    3. long edge to ``size`` + pad bottom/right (as :class:`Letterbox`), ImageNet mean/std.

    Boxes: shifted by the crop, then scaled; not clipped (boxes other than ``boxes[0]`` may extend
    past the crop).
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        jitter: float = 0.4,
        crop_prob: float = 0.5,
        min_crop: float = 0.5,
    ):
        self.size, self.mean, self.std = int(size), list(mean), list(std)
        self.jitter, self.crop_prob, self.min_crop = float(jitter), float(crop_prob), float(min_crop)

    def __call__(
        self,
        image: Image.Image,
        boxes: Tensor | None = None,
        text: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        rng = _rng(rng)
        image = to_rgb(image)
        if self.jitter > 0:
            brightness, contrast, saturation = rng.uniform(1 - self.jitter, 1 + self.jitter, size=3)
            image = TF.adjust_brightness(image, float(brightness))
            image = TF.adjust_contrast(image, float(contrast))
            image = TF.adjust_saturation(image, float(saturation))
        crop = rng.random() < self.crop_prob  # drawn always, so later draws do not depend on the text
        if crop and boxes is not None and len(boxes) > 0 and not has_spatial_words(text):
            x0, y0, cw, ch = self._crop_window(image.size, boxes[0], rng)
            image = image.crop((x0, y0, x0 + cw, y0 + ch))
            boxes = _affine(boxes, 1.0, 1.0, -x0, -y0)
        tensor, sx, sy = _letterbox(image, self.size, self.mean, self.std)
        return tensor, _affine(boxes, sx, sy)

    def _crop_window(self, size: tuple[int, int], keep: Tensor, rng: np.random.Generator) -> tuple[int, ...]:
        """Integer window (x0, y0, w, h) inside the image that contains ``keep`` (xyxy)."""
        window = []
        for extent, lo, hi in ((size[0], keep[0], keep[2]), (size[1], keep[1], keep[3])):
            lo = min(max(math.floor(float(lo)), 0), extent - 1)
            hi = max(min(math.ceil(float(hi)), extent), lo + 1)
            shortest = max(hi - lo, round(self.min_crop * extent), 1)
            length = int(rng.integers(shortest, extent + 1))
            start = int(rng.integers(max(0, hi - length), min(lo, extent - length) + 1))
            window.append((start, length))
        (x0, cw), (y0, ch) = window
        return x0, y0, cw, ch


class ShortSideCenterCrop:
    """Short side to ``size`` then a centre ``size`` x ``size`` crop (CLIP's own eval preprocessing;
    TaI-DPT and CoOp test transform). Boxes (optional): scaled, then shifted by the crop offset."""

    def __init__(self, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        self.size, self.mean, self.std = int(size), list(mean), list(std)

    def __call__(self, image: Image.Image, boxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        image = to_rgb(image)
        w, h = image.size
        scale = self.size / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        left, top = int(round((nw - self.size) / 2)), int(round((nh - self.size) / 2))
        out = TF.resize(image, [nh, nw], interpolation=BICUBIC, antialias=True)
        out = out.crop((left, top, left + self.size, top + self.size))
        return _normalised(out, self.mean, self.std), _affine(boxes, nw / w, nh / h, -left, -top)


class FewShotTrainTransform:
    """CoOp-style few-shot training: random resized crop (area ``scale``, aspect ``ratio``, as
    torchvision's ``RandomResizedCrop``) to ``size`` x ``size`` and a horizontal flip with
    probability ``flip_prob``; CLIP mean/std. Boxes: cropped frame, scaled, mirrored on flip."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
    ):
        self.size, self.mean, self.std = int(size), list(mean), list(std)
        self.scale, self.ratio, self.flip_prob = tuple(scale), tuple(ratio), float(flip_prob)

    def crop_window(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, w, h), torchvision's algorithm: 10 tries, then a centre crop of clamped ratio."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(
        self, image: Image.Image, boxes: Tensor | None = None, rng: np.random.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        rng = _rng(rng)
        image = to_rgb(image)
        left, top, w, h = self.crop_window(*image.size, rng)
        out = TF.resized_crop(
            image, top, left, h, w, [self.size, self.size], interpolation=BICUBIC, antialias=True
        )
        boxes = _affine(boxes, self.size / w, self.size / h, -left * self.size / w, -top * self.size / h)
        if rng.random() < self.flip_prob:
            out = TF.hflip(out)
            if boxes is not None:
                boxes = torch.stack(
                    [self.size - boxes[:, 2], boxes[:, 1], self.size - boxes[:, 0], boxes[:, 3]], 1
                )
        return _normalised(out, self.mean, self.std), boxes


def clip_transform(clip, letterbox: bool = False) -> SquashResize | Letterbox:
    """The evaluation transform matching a CLIP core's input size and normalisation."""
    cls = Letterbox if letterbox else SquashResize
    return cls(clip.image_size[0], clip.image_mean, clip.image_std)
