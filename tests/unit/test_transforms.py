"""Image(+box) transforms (vpg.data.transforms): box bookkeeping against hand-computed cases,
the text-aware HiVG crop, EXIF orientation and every image mode -> 8-bit RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vpg.data.transforms import (
    FewShotTrainTransform,
    HiVGTrainTransform,
    Letterbox,
    ShortSideCenterCrop,
    SquashResize,
    has_spatial_words,
    to_rgb,
)

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # mean / std that keep pixels in [0, 1]
BOX = torch.tensor([[10.0, 5.0, 30.0, 15.0]])  # in a 40 x 20 image


def halves(size=(40, 20), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: shows where crops and flips put the pixels."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


class ScriptedRng:
    """Stands in for numpy's Generator: returns scripted draws and records the integer ranges."""

    def __init__(self, integers=(), random=0.0):
        self._integers, self._random, self.ranges = list(integers), random, []

    def uniform(self, low, high, size=None):
        return np.ones(size) if size is not None else 1.0

    def random(self, size=None):
        return self._random

    def integers(self, low, high):
        self.ranges.append((int(low), int(high)))
        return self._integers.pop(0)


def test_squash_resize_box_by_hand():
    tensor, boxes = SquashResize(32, ZERO, ONE)(halves(), BOX)
    assert tensor.shape == (3, 32, 32)
    assert boxes.tolist() == [[8.0, 8.0, 24.0, 24.0]]  # x * 32/40, y * 32/20


def test_letterbox_scales_and_pads_bottom_right():
    tensor, boxes = Letterbox(32, ZERO, ONE)(halves(), BOX)  # 40 x 20 -> 32 x 16, scale 0.8 both ways
    assert boxes.tolist() == [[8.0, 4.0, 24.0, 12.0]]
    assert (tensor[:, 16:] == 0).all() and tensor[0, :16, :15].min() > 0.9  # red on the left, pad below
    assert SquashResize(32, ZERO, ONE)(halves(), None)[1] is None


def test_short_side_center_crop_box_by_hand():
    tensor, boxes = ShortSideCenterCrop(10, ZERO, ONE)(halves(), BOX)
    # short side 20 -> 10: 20 x 10, centre crop drops 5 px left and right
    assert boxes.tolist() == [[0.0, 2.5, 10.0, 7.5]]
    assert tensor.shape == (3, 10, 10)
    assert tensor[0, :, :4].min() > 0.9 and tensor[2, :, 6:].min() > 0.9  # red | blue, split in the middle
    assert ShortSideCenterCrop(10)(halves())[1] is None  # boxes optional


def test_hivg_crop_keeps_the_box_by_hand():
    # crop width 24 from x 8, height 12 from y 4; then long edge 24 -> 32: scale 4/3, pad bottom
    rng = ScriptedRng(integers=[24, 8, 12, 4])
    transform = HiVGTrainTransform(32, ZERO, ONE, crop_prob=1.0)
    tensor, boxes = transform(halves(), BOX, text="the red one", rng=rng)
    assert torch.allclose(boxes, torch.tensor([[2.0, 1.0, 22.0, 11.0]]) * 4 / 3)
    # allowed ranges: widths 20..40 (the box is 20 wide), x 6..10; heights 10..20, y 3..5
    assert rng.ranges == [(20, 41), (6, 11), (10, 21), (3, 6)]
    assert tensor.shape == (3, 32, 32) and (tensor[:, 16:] == 0).all()


@pytest.mark.parametrize("text", ["the dog on the left", "Top shelf", "middle one", "rightmost car"])
def test_hivg_no_crop_with_spatial_words(text):
    transform = HiVGTrainTransform(32, ZERO, ONE, crop_prob=1.0)
    for seed in range(5):
        _, boxes = transform(halves(), BOX, text=text, rng=np.random.default_rng(seed))
        assert boxes.tolist() == [[8.0, 4.0, 24.0, 12.0]]  # letterbox only


def test_hivg_random_crop_always_contains_box():
    transform = HiVGTrainTransform(32, crop_prob=1.0)
    image, box = halves((64, 48)), torch.tensor([[20.0, 10.0, 41.0, 30.0], [0.0, 0.0, 64.0, 48.0]])
    for seed in range(30):
        tensor, boxes = transform(image, box, text="a red thing", rng=np.random.default_rng(seed))
        assert (boxes[0] >= -1e-4).all() and (boxes[0] <= 32 + 1e-4).all()
        scale = (boxes[1, 2:] - boxes[1, :2]) / torch.tensor([64.0, 48.0])  # whole-image box: scale, offset
        assert torch.allclose(boxes[0, :2], box[0, :2] * scale + boxes[1, :2], atol=1e-3)
        assert torch.allclose(boxes[0, 2:], box[0, 2:] * scale + boxes[1, :2], atol=1e-3)
    a = transform(image, box, rng=np.random.default_rng(3))
    b = transform(image, box, rng=np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # reproducible from the rng


def test_spatial_words():
    assert has_spatial_words("the leftmost dog") and has_spatial_words("BOTTOM left")
    assert not has_spatial_words("a bottle on the topping") and not has_spatial_words(None)


def test_few_shot_crop_and_flip_by_hand():
    transform = FewShotTrainTransform(10, ZERO, ONE, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)
    tensor, boxes = transform(
        halves((20, 20)), torch.tensor([[2.0, 4.0, 6.0, 8.0]]), rng=np.random.default_rng(0)
    )
    assert boxes.tolist() == [[7.0, 2.0, 9.0, 4.0]]  # scale 0.5 -> [1, 2, 3, 4], mirrored in a 10 px frame
    assert tensor[2, :, :4].min() > 0.9 and tensor[0, :, 6:].min() > 0.9  # blue now on the left


def test_few_shot_random_crop_is_reproducible_and_valid():
    transform = FewShotTrainTransform(16)
    for seed in range(10):
        left, top, w, h = transform.crop_window(50, 30, np.random.default_rng(seed))
        assert 0 <= left and left + w <= 50 and 0 <= top and top + h <= 30 and w > 0 and h > 0
    a = transform(halves(), BOX, rng=np.random.default_rng(1))
    b = transform(halves(), BOX, rng=np.random.default_rng(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (3, 16, 16)


# ------------------------------------------------------------------------------------ to_rgb


def _reopened(image: Image.Image, **save) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "PNG", **save)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_exif_orientation_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    rgb = to_rgb(_reopened(halves(), exif=exif))
    assert rgb.size == (20, 40)
    assert rgb.getpixel((10, 5)) == (255, 0, 0) and rgb.getpixel((10, 35)) == (0, 0, 255)  # left half -> top
    plain = _reopened(halves())
    assert to_rgb(plain) is plain  # no orientation, already RGB: no copy


@pytest.mark.parametrize(
    "image, pixel",
    [
        (Image.new("L", (4, 4), 77), (77, 77, 77)),
        (Image.new("1", (4, 4), 1), (255, 255, 255)),
        (Image.new("RGBA", (4, 4), (10, 20, 30, 0)), (255, 255, 255)),  # transparent -> white
        (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("LA", (4, 4), (50, 255)), (50, 50, 50)),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    ],
)
def test_modes_to_rgb(image, pixel):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == pixel


def test_palette_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert to_rgb(palette).getpixel((0, 0)) == (200, 100, 50)
    palette.info["transparency"] = 1
    assert to_rgb(_reopened(palette)).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_scaled_not_clipped():
    arr = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    image = _reopened(Image.fromarray(arr))
    assert image.mode.startswith("I")
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((0, 1))[0] == round(32768 / 65535 * 255) and rgb.getpixel((1, 0))[0] == 4
    tensor, _ = SquashResize(8, ZERO, ONE)(image)
    assert tensor.shape == (3, 8, 8) and 0.0 <= tensor.min() and tensor.max() <= 1.0
