"""Image-editing visual prompts (FALIP's baselines): values, not just shapes."""

import pytest
import torch
import torch.nn.functional as F

from vpg.modules.visual_prompts import (
    blur_outside,
    box_coverage,
    crop_resize,
    edit_images,
    ellipse_ring,
    gaussian_blur,
    normalised_colour,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def test_box_coverage_counts_pixel_fractions():
    cover = box_coverage(torch.tensor([[1.0, 2.0, 3.5, 4.0]]), (6, 5))[0]  # (H=6, W=5)
    expected = torch.zeros(6, 5)
    expected[2:4, 1:3] = 1.0
    expected[2:4, 3] = 0.5  # x in [3, 3.5)
    assert torch.equal(cover, expected)


def test_crop_of_a_ramp_is_the_ramp_over_the_box():
    # pixel value = its x centre; the crop of [8, 8, 16, 16] resampled to 32 px must be linear in x
    xs = torch.arange(32, dtype=torch.float32) + 0.5
    image = xs.view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    out = crop_resize(image, torch.tensor([[8.0, 8.0, 16.0, 16.0]]), torch.tensor([0]))
    expected = 8 + (torch.arange(32) + 0.5) * 8 / 32  # output pixel j samples x = 8 + (j + 0.5) / 4
    # roi_align samples the box at x - 0.5 with aligned=True, i.e. on pixel centres of this ramp
    assert torch.allclose(out[0, 0, 5], expected, atol=1e-4)
    assert torch.allclose(out[0, :, :, 7], out[0, :, :1, 7].expand(3, 32), atol=1e-5)  # constant along y


def test_ring_lies_on_the_inscribed_ellipse():
    box = torch.tensor([[10.0, 20.0, 50.0, 40.0]])  # centre (30, 30), semi-axes 20 x 10
    ring = ellipse_ring(box, (64, 64), thickness=2.0)[0]  # (H, W)
    # pixel centres half a pixel from the vertices: opacity 1.5 - ~0.5 (ring 2 px wide, 1 px soft edge)
    for y, x in ((29, 10), (29, 49), (20, 29), (39, 30)):  # left, right, top, bottom vertices
        assert ring[y, x] > 0.95
    assert ring[30, 30] == 0.0 and ring[5, 5] == 0.0 and ring[30, 2] == 0.0  # centre and far outside
    # a circle: opacity is (1.5 - |distance to the circle|) clamped, exact for circles
    circle = ellipse_ring(torch.tensor([[0.0, 0.0, 40.0, 40.0]]), (40, 40), thickness=1.0)[0]
    ys, xs = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(40) + 0.5, indexing="ij")
    dist = ((xs - 20) ** 2 + (ys - 20) ** 2).sqrt() - 20
    # Sampson distance of a circle: (r^2 - R^2) / (2 r) = dist * (r + R) / (2 r), ~dist near the ring
    near = dist.abs() < 2
    assert torch.allclose(circle[near], (1.0 - dist[near].abs()).clamp(0, 1), atol=0.06)


def test_gaussian_blur_matches_direct_convolution_inside():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 40, 40)
    sigma = 2.0
    out = gaussian_blur(image, sigma)
    radius = 6
    k1 = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    direct = F.conv2d(image, k2.expand(3, 1, -1, -1), groups=3)  # valid convolution: interior only
    assert torch.allclose(out[..., radius:-radius, radius:-radius], direct, atol=1e-5)
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 16, 16), 0.7), 5.0), torch.full((1, 3, 16, 16), 0.7))
    assert torch.equal(gaussian_blur(image, 0.0), image)


def test_blur_outside_keeps_the_box_and_blurs_the_rest():
    torch.manual_seed(1)
    images = torch.rand(2, 3, 24, 24)
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0], [0.0, 0.0, 24.0, 24.0], [10.0, 10.0, 20.0, 20.0]])
    index = torch.tensor([0, 0, 1])
    out = blur_outside(images, boxes, index, sigma=3.0)
    blurred = gaussian_blur(images, 3.0)
    assert torch.equal(out[0, :, 4:12, 4:12], images[0, :, 4:12, 4:12])
    assert torch.allclose(out[0, :, 14:, :], blurred[0, :, 14:, :])
    assert torch.equal(out[1], images[0])  # whole-image box: nothing blurred
    assert torch.equal(out[2, :, 10:20, 10:20], images[1, :, 10:20, 10:20])


def test_edit_images_circle_is_red_after_normalisation_and_per_box():
    images = torch.zeros(2, 3, 32, 32)  # the mean colour
    boxes = torch.tensor([[4.0, 4.0, 28.0, 28.0], [0.0, 0.0, 16.0, 16.0]])
    index = torch.tensor([1, 0])
    out = edit_images(images, boxes, index, ["circle"], mean=MEAN, std=STD, blur_sigma=2.0, circle_thickness=2.0)
    red = normalised_colour((1.0, 0.0, 0.0), MEAN, STD)
    assert torch.allclose(red, torch.tensor([2.5, -1.6, -0.6]))
    assert torch.allclose(out[0, :, 15, 4], red) and torch.allclose(out[1, :, 7, 0], red)
    assert torch.equal(out[0, :, 16, 16], torch.zeros(3))
    with pytest.raises(ValueError, match="unknown image edits"):
        edit_images(images, boxes, index, ["sparkle"], mean=MEAN, std=STD, blur_sigma=1.0, circle_thickness=1.0)


def test_edit_order_crop_then_blur_then_circle():
    torch.manual_seed(2)
    images = torch.rand(1, 3, 32, 32)
    box, index = torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([0])
    kw = dict(mean=MEAN, std=STD, blur_sigma=3.0, circle_thickness=1.0)
    # after a crop the box is the whole view, so blur-outside changes nothing
    assert torch.equal(edit_images(images, box, index, ["crop", "blur"], **kw), crop_resize(images, box, index))
    both = edit_images(images, box, index, ["circle", "blur"], **kw)
    blurred = edit_images(images, box, index, ["blur"], **kw)
    ring = ellipse_ring(box, (32, 32), 1.0)[0] > 0
    assert torch.equal(both[0][:, ~ring], blurred[0][:, ~ring])  # the ring is drawn on the blurred image
