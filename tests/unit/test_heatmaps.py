"""WWbL's heatmap -> box protocol and evaluation units on drawn heatmaps (vpg.metrics.heatmaps)."""

import pytest
import torch

from vpg.metrics import pointing_game_hits
from vpg.metrics.heatmaps import (
    average_by_key,
    connected_components,
    drop_small_boxes,
    heatmap_boxes,
    heatmap_to_box,
    heatmap_to_original,
    normalize_heatmap,
    peak_point,
    union_box,
)


def blank(h=40, w=60):
    return torch.zeros(h, w)


def test_connected_components_8_connectivity_and_order():
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one region with 8-connectivity
    mask[0, 5:8] = True  # a second region, first pixel at (0, 5)
    mask[4:6, 2:4] = True  # a fourth (row-major order of first pixels)
    mask[3, 7] = True  # a third, single pixel
    labels = connected_components(mask)
    assert labels[0, 0] == labels[1, 1] == 1 and labels[0, 5] == 2
    assert set(labels[4:6, 2:4].flatten().tolist()) == {4} and labels[3, 7] == 3
    assert (labels[~mask] == 0).all() and labels.max() == 4


def test_connected_components_spiral_needs_many_rounds():
    # a long snake: one component whatever its length
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[0, :] = mask[:, 8] = mask[8, :] = mask[2:, 0] = mask[2, :7] = mask[2:7, 6] = mask[6, 2:7] = True
    labels = connected_components(mask)
    assert labels.max() == 1 and (labels[mask] == 1).all()


def test_one_blob_gives_its_bounding_box():
    heat = blank()
    heat[10:20, 30:45] = 1.0
    heat[12, 33] = 2.0  # peak inside
    boxes, scores = heatmap_boxes(heat)
    assert boxes.tolist() == [[30.0, 10.0, 45.0, 20.0]]  # pixel edges: x_max + 1, y_max + 1
    # score: mean of the normalised heat thresholded to zero inside the box
    assert scores.item() == pytest.approx(((10 * 15 - 1) * 0.5 + 1.0) / 150)


def test_below_half_max_is_background():
    heat = blank()
    heat[5:10, 5:10] = 1.0
    heat[25:35, 40:55] = 0.49  # a weak second region: under 0.5 x max
    assert heatmap_to_box(heat).tolist() == [5.0, 5.0, 10.0, 10.0]


def test_two_strong_regions_are_united_and_weak_ones_dropped():
    heat = blank()
    heat[2:8, 2:8] = 1.0
    heat[30:38, 50:58] = 0.9  # separate, strong: kept (score > 0.5 x best), united
    boxes, _ = heatmap_boxes(heat)
    assert len(boxes) == 2
    assert heatmap_to_box(heat).tolist() == [2.0, 2.0, 58.0, 38.0]
    heat[30:38, 50:58] = 0.55  # above the pixel threshold but a box score <= 0.5 x the best: dropped
    heat[31:37, 51:57] = 0.0
    boxes, scores = heatmap_boxes(heat)
    assert len(boxes) == 1 and boxes[0].tolist() == [2.0, 2.0, 8.0, 8.0]


def test_nms_suppresses_an_overlapping_weaker_box():
    heat = blank()
    heat[0:20, 0:20] = 1.0  # a ring-like L shape and a blob inside its box
    heat[5:20, 5:20] = 0.0
    heat[8:16, 8:16] = 0.8  # separate region (not touching), inside the first box
    boxes, scores = heatmap_boxes(heat)
    # IoU of [8,8,16,16] with [0,0,20,20] is 0.16 > 0.05: only the better-scoring box stays
    assert len(boxes) == 1
    assert boxes[0].tolist() in ([0.0, 0.0, 20.0, 20.0], [8.0, 8.0, 16.0, 16.0])
    assert scores[0] == scores.max()


def test_constant_heatmap_gives_the_whole_image_and_min_max_normalisation():
    assert heatmap_to_box(torch.full((10, 20), 0.3)).tolist() == [0.0, 0.0, 20.0, 10.0]
    heat = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    assert normalize_heatmap(heat).tolist() == [[0.0, 0.5], [0.25, 1.0]]
    # an offset changes nothing: the protocol works on the normalised map
    drawn = blank()
    drawn[3:9, 4:12] = 1.0
    assert heatmap_to_box(drawn + 7.0).tolist() == heatmap_to_box(drawn).tolist()


def test_union_and_small_box_filter():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 25.0, 15.0, 60.0]])
    assert union_box(boxes).tolist() == [0.0, 20.0, 30.0, 60.0]
    # 100 x 50 image: 5 % = 250 px^2; a 10 x 25 box (exactly 5 %) is dropped, 10 x 26 kept
    small = torch.tensor([[0.0, 0.0, 10.0, 25.0], [0.0, 0.0, 10.0, 26.0]])
    assert drop_small_boxes(small, 100, 50).tolist() == [[0.0, 0.0, 10.0, 26.0]]
    with pytest.raises(ValueError):
        union_box(torch.zeros(0, 4))


def test_heatmap_to_original_squash_and_letterbox():
    heat = torch.zeros(8, 8)
    heat[2, 6] = 1.0
    # squash of a 16 x 32 (W x H) image to 8 x 8: bilinear resize with align_corners=False
    out = heatmap_to_original(heat, (16, 32), (0.5, 0.25))
    expected = torch.nn.functional.interpolate(heat[None, None], size=(32, 16), mode="bilinear",
                                               align_corners=False)[0, 0]
    assert out.shape == (32, 16) and torch.allclose(out, expected, atol=1e-6)
    # letterbox: a 16 x 8 image scaled by 0.5 into the top half of the 8 x 8 input
    lb = heatmap_to_original(heat, (16, 8), (0.5, 0.5))
    x, y = peak_point(lb)
    assert (x // 2, y // 2) == (6, 2)  # the peak stays on the same content


def test_pointing_reuses_the_metric_on_original_size():
    heat = torch.zeros(8, 8)
    heat[1, 6] = 1.0
    out = heatmap_to_original(heat, (80, 40), (0.1, 0.2))  # (40, 80)
    x, y = peak_point(out)
    boxes = [torch.tensor([[float(x) - 1, float(y) - 1, float(x) + 2, float(y) + 2]])]
    assert pointing_game_hits(out[None], boxes).item()
    assert not pointing_game_hits(out[None], [torch.tensor([[0.0, 30.0, 10.0, 40.0]])]).item()


def test_average_by_key():
    maps = torch.arange(4 * 2 * 2, dtype=torch.float32).view(4, 2, 2)
    keys, means = average_by_key(["a", "b", "a", "c"], maps)
    assert keys == ["a", "b", "c"]
    assert torch.equal(means[0], (maps[0] + maps[2]) / 2) and torch.equal(means[2], maps[3])
