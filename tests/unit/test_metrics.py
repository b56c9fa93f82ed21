"""Hand-computed checks for vpg.metrics (boxes, functional, Metric classes). All CPU, milliseconds."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torchmetrics.functional.classification import multilabel_average_precision

from vpg.metrics import (
    BoxAccuracy,
    GroundingAccuracy,
    MultiLabelMAP,
    PointingGame,
    TopKAccuracy,
    box_area,
    box_iou_pairwise,
    clip_boxes,
    convert_boxes,
    giou_pairwise,
    grounding_accuracy,
    multilabel_map,
    per_class_ap,
    pointing_game_hits,
    scale_boxes,
    to_normalized,
    to_pixels,
    topk_accuracy,
)

T = torch.tensor


def close(a, b, tol=1e-6):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol
    )


# --------------------------------------------------------------------------------------------- boxes


class TestBoxes:
    def test_hand_conversions(self):
        xywh = T([[10.0, 20.0, 30.0, 40.0]])
        xyxy = T([[10.0, 20.0, 40.0, 60.0]])
        cxcywh = T([[25.0, 40.0, 30.0, 40.0]])
        assert close(convert_boxes(xywh, "xywh", "xyxy"), xyxy)
        assert close(convert_boxes(xywh, "xywh", "cxcywh"), cxcywh)
        assert close(convert_boxes(cxcywh, "cxcywh", "xywh"), xywh)
        assert close(convert_boxes(xyxy, "xyxy", "cxcywh"), cxcywh)

    @pytest.mark.parametrize(("a", "b"), list(itertools.permutations(["xyxy", "xywh", "cxcywh"], 2)))
    def test_round_trip(self, a, b):
        g = torch.Generator().manual_seed(0)
        boxes = torch.rand(7, 4, generator=g, dtype=torch.float64)
        assert close(convert_boxes(convert_boxes(boxes, a, b), b, a), boxes, tol=1e-12)

    def test_leading_dims_and_identity_copies(self):
        boxes = torch.rand(2, 3, 4)
        out = convert_boxes(boxes, "xyxy", "xyxy")
        assert out.shape == (2, 3, 4) and close(out, boxes)
        assert out.data_ptr() != boxes.data_ptr()

    def test_pixels_normalized(self):
        norm = T([[0.1, 0.2, 0.5, 0.6]])
        pix = T([[20.0, 20.0, 100.0, 60.0]])  # width 200, height 100: x * 200, y * 100
        assert close(to_pixels(norm, 200, 100), pix)
        assert close(to_normalized(pix, 200, 100), norm)
        as_float = to_normalized(T([[20, 20, 100, 60]]), 200, 100)
        assert as_float.is_floating_point() and close(as_float, norm)

    def test_convert_with_frame_change(self):
        # normalised cxcywh (0.5, 0.5, 0.2, 0.4) on a 200 x 100 image -> pixel xyxy (80, 30, 120, 70)
        out = convert_boxes(T([[0.5, 0.5, 0.2, 0.4]]), "cxcywh", "xyxy", size=(200, 100), in_normalized=True)
        assert close(out, T([[80.0, 30.0, 120.0, 70.0]]))
        back = convert_boxes(out, "xyxy", "cxcywh", size=(200, 100), out_normalized=True)
        assert close(back, T([[0.5, 0.5, 0.2, 0.4]]))
        # both normalised: no size needed, nothing rescaled
        same = convert_boxes(
            T([[0.1, 0.1, 0.2, 0.2]]), "xywh", "xyxy", in_normalized=True, out_normalized=True
        )
        assert close(same, T([[0.1, 0.1, 0.3, 0.3]]))

    def test_validation(self):
        boxes = T([[0.0, 0.0, 1.0, 1.0]])
        with pytest.raises(ValueError, match="Unknown box format"):
            convert_boxes(boxes, "xyxy", "yxyx")
        with pytest.raises(ValueError, match="Unknown box format"):
            convert_boxes(boxes, "cxcywhr", "xyxy")
        with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
            convert_boxes(T([[0.0, 0.0, 1.0]]), "xyxy", "xywh")
        with pytest.raises(ValueError, match="size"):
            convert_boxes(boxes, "xyxy", "xyxy", in_normalized=True)
        with pytest.raises(ValueError, match="positive"):
            to_pixels(boxes, 0, 10)
        with pytest.raises(ValueError, match="torch.Tensor"):
            box_area([0, 0, 1, 1])
        with pytest.raises(ValueError, match="Unknown box format"):
            box_area(boxes, fmt="xyxyxyxy")

    def test_clip_uses_width_then_height(self):
        out = clip_boxes(T([[-5.0, 10.0, 250.0, 120.0]]), width=200, height=100)
        assert close(out, T([[0.0, 10.0, 200.0, 100.0]]))

    def test_box_area(self):
        assert close(box_area(T([[0.0, 0.0, 2.0, 3.0]])), T([6.0]))
        assert close(box_area(T([[5.0, 5.0, 2.0, 3.0]]), fmt="xywh"), T([6.0]))
        assert close(box_area(T([[1.0, 1.0, 2.0, 3.0]]), fmt="cxcywh"), T([6.0]))
        assert close(box_area(T([[2.0, 2.0, 1.0, 5.0]])), T([0.0]))  # inverted in x -> 0, not negative

    def test_scale_boxes(self):
        assert close(scale_boxes(T([[1.0, 2.0, 3.0, 4.0]]), 2, 10), T([[2.0, 20.0, 6.0, 40.0]]))
        assert close(scale_boxes(T([[1, 2, 3, 4]]), 0.5, 0.5), T([[0.5, 1.0, 1.5, 2.0]]))


# ---------------------------------------------------------------------------------------- IoU / GIoU


class TestIoU:
    def test_iou_hand_values(self):
        a = T([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 1.0]])
        b = T([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
        # overlap 1 / union 7; identical; disjoint; nested half
        assert close(box_iou_pairwise(a, b), T([1 / 7, 1.0, 0.0, 0.5]))

    def test_iou_symmetric_and_leading_dims(self):
        a = torch.rand(2, 3, 2)
        a = torch.cat([a, a + torch.rand(2, 3, 2)], dim=-1)  # valid xyxy (2, 3, 4)
        b = torch.rand(2, 3, 2)
        b = torch.cat([b, b + torch.rand(2, 3, 2)], dim=-1)
        out = box_iou_pairwise(a, b)
        assert out.shape == (2, 3)
        assert close(out, box_iou_pairwise(b, a))

    def test_giou_hand_values(self):
        a = T([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
        b = T([[2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
        # disjoint: 0 - (3 - 2) / 3; overlapping: 1/7 - (9 - 7) / 9; identical: 1
        assert close(giou_pairwise(a, b), T([-1 / 3, 1 / 7 - 2 / 9, 1.0]))

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="same shape"):
            box_iou_pairwise(torch.zeros(2, 4), torch.zeros(3, 4))
        with pytest.raises(ValueError, match="same shape"):
            giou_pairwise(torch.zeros(2, 4), torch.zeros(3, 4))


class TestGroundingAccuracy:
    pred = T([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    gold = T([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])  # IoU 0.5, 1/7, 1

    def test_threshold_is_inclusive(self):
        assert grounding_accuracy(self.pred, self.gold, 0.5).tolist() == [True, False, True]
        assert grounding_accuracy(self.pred, self.gold, 0.51).tolist() == [False, False, True]
        assert grounding_accuracy(self.pred, self.gold, 1 / 7 - 1e-6).tolist() == [True, True, True]

    def test_degenerate_box_is_miss(self):
        z = T([[1.0, 1.0, 1.0, 1.0]])
        assert grounding_accuracy(z, z, 0.0).tolist() == [False]  # 0/0 IoU is nan -> miss

    def test_bad_threshold(self):
        with pytest.raises(ValueError, match="iou_threshold"):
            grounding_accuracy(self.pred, self.gold, 1.5)
        with pytest.raises(ValueError, match="iou_threshold"):
            GroundingAccuracy(iou_threshold=-0.1)

    def test_metric_accumulates(self):
        m = GroundingAccuracy(iou_threshold=0.5)
        m.update(self.pred[:2], self.gold[:2])
        m.update(self.pred[2:], self.gold[2:])
        assert close(m.compute(), 2 / 3)
        assert m.correct.item() == 2 and m.total.item() == 3
        m.reset()
        m.update(self.pred[1:2], self.gold[1:2])
        assert close(m.compute(), 0.0)

    def test_metric_forward_returns_batch_value(self):
        m = GroundingAccuracy()
        assert close(m(self.pred[:1], self.gold[:1]), 1.0)
        assert close(m(self.pred[1:2], self.gold[1:2]), 0.0)
        assert close(m.compute(), 0.5)

    def test_box_format(self):
        m = GroundingAccuracy(box_format="xywh")
        m.update(T([[0.0, 0.0, 2.0, 1.0]]), T([[0.0, 0.0, 1.0, 1.0]]))  # xywh: IoU 1/2
        assert close(m.compute(), 1.0)
        with pytest.raises(ValueError, match="Unknown box format"):
            GroundingAccuracy(box_format="yolo")

    def test_empty_is_nan(self):
        m = GroundingAccuracy()
        with pytest.warns(UserWarning, match="before the ``update``"):
            assert math.isnan(m.compute().item())

    def test_box_accuracy_is_alias(self):
        assert BoxAccuracy is GroundingAccuracy


# ----------------------------------------------------------------------------------------- pointing


def peak_map(h, w, y, x):
    hm = torch.zeros(1, h, w)
    hm[0, y, x] = 1.0
    return hm


class TestPointingGame:
    def test_inside_outside(self):
        hm = peak_map(4, 5, y=1, x=2)  # pixel centre (2.5, 1.5)
        assert pointing_game_hits(hm, [T([[2.0, 1.0, 3.0, 2.0]])]).tolist() == [True]
        assert pointing_game_hits(hm, [T([[3.0, 0.0, 5.0, 4.0]])]).tolist() == [False]
        assert pointing_game_hits(hm, [T([[0.0, 2.0, 5.0, 4.0]])]).tolist() == [False]  # x ok, y not

    def test_border_is_closed(self):
        hm = peak_map(4, 5, y=1, x=2)
        assert pointing_game_hits(hm, [T([[0.0, 0.0, 2.5, 1.5]])]).tolist() == [True]  # corner on centre
        assert pointing_game_hits(hm, [T([[2.5, 1.5, 5.0, 4.0]])]).tolist() == [True]
        assert pointing_game_hits(hm, [T([[0.0, 0.0, 2.49, 4.0]])]).tolist() == [False]
        assert pointing_game_hits(hm, [T([[2.5, 1.5, 2.5, 1.5]])]).tolist() == [True]  # zero-size on centre

    def test_unit_box_holds_one_pixel(self):
        box = [T([[0.0, 0.0, 1.0, 1.0]])]
        assert pointing_game_hits(peak_map(3, 3, 0, 0), box).tolist() == [True]
        assert pointing_game_hits(peak_map(3, 3, 0, 1), box).tolist() == [False]
        assert pointing_game_hits(peak_map(3, 3, 1, 0), box).tolist() == [False]

    def test_batch_multiple_and_empty_boxes(self):
        hm = torch.cat([peak_map(4, 4, 0, 0), peak_map(4, 4, 3, 3), peak_map(4, 4, 2, 1)])  # (3, 4, 4)
        boxes = [
            T([[2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0]]),  # second box hits
            torch.zeros(0, 4),  # no boxes -> miss
            T([[0.0, 0.0, 1.0, 1.0]]),  # peak (x=1, y=2) centre (1.5, 2.5) -> miss
        ]
        assert pointing_game_hits(hm, boxes).tolist() == [True, False, False]
        assert pointing_game_hits(hm, [torch.zeros(0, 4)] * 3).tolist() == [False] * 3

    def test_tensor_shorthand_and_ties(self):
        hm = torch.ones(2, 3, 3)  # all tied -> first pixel (0, 0)
        assert pointing_game_hits(hm, T([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 3.0, 3.0]])).tolist() == [
            True,
            False,
        ]

    def test_validation(self):
        with pytest.raises(ValueError, match=r"\(N, H, W\)"):
            pointing_game_hits(torch.zeros(3, 3), [T([[0.0, 0.0, 1.0, 1.0]])])
        with pytest.raises(ValueError, match="2 heatmaps but 1"):
            pointing_game_hits(torch.zeros(2, 3, 3), [T([[0.0, 0.0, 1.0, 1.0]])])
        with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
            pointing_game_hits(torch.zeros(1, 3, 3), [T([[0.0, 0.0, 1.0]])])

    def test_metric(self):
        m = PointingGame()
        m.update(peak_map(4, 4, 0, 0), [T([[0.0, 0.0, 1.0, 1.0]])])
        m.update(peak_map(4, 4, 3, 3), [T([[0.0, 0.0, 1.0, 1.0]])])
        m.update(peak_map(4, 4, 3, 3), [T([[3.0, 3.0, 4.0, 4.0]])])
        assert close(m.compute(), 2 / 3)


# -------------------------------------------------------------------------------------------- top-k

LOGITS = T([[0.1, 0.5, 0.3, 0.05], [0.4, 0.3, 0.2, 0.1], [0.0, 0.1, 0.2, 0.9]])
TARGET = T([2, 3, 3])  # true-class rank: 2, 4, 1


class TestTopK:
    @pytest.mark.parametrize(("k", "expected"), [(1, 1 / 3), (2, 2 / 3), (3, 2 / 3), (4, 1.0)])
    def test_functional(self, k, expected):
        assert close(topk_accuracy(LOGITS, TARGET, k), expected)

    @pytest.mark.parametrize(("k", "expected"), [(1, 1 / 3), (2, 2 / 3), (4, 1.0)])
    def test_metric_matches(self, k, expected):
        m = TopKAccuracy(num_classes=4, k=k)
        m.update(LOGITS[:1], TARGET[:1])
        m.update(LOGITS[1:], TARGET[1:])
        assert close(m.compute(), expected)

    def test_validation(self):
        with pytest.raises(ValueError, match="k must be"):
            topk_accuracy(LOGITS, TARGET, 5)
        with pytest.raises(ValueError, match="k must be"):
            TopKAccuracy(num_classes=4, k=0)
        with pytest.raises(ValueError, match=r"\(N, C\)"):
            topk_accuracy(LOGITS[0], TARGET[:1], 1)


# ---------------------------------------------------------------------------------------------- mAP

# class 0 ranking: 0.9 P, 0.8 N, 0.1 P -> AP = (1/1 + 2/3) / 2 = 5/6
# class 1 ranking: 0.7 P, 0.6 P, 0.2 N -> AP = 1
# class 2: no positive -> excluded; mAP = (5/6 + 1) / 2 = 11/12
SCORES = T([[0.9, 0.2, 0.1], [0.8, 0.7, 0.3], [0.1, 0.6, 0.4]])
TARGETS = T([[1, 0, 0], [0, 1, 0], [1, 1, 0]])


class TestMAP:
    def test_per_class_hand(self):
        ap = per_class_ap(SCORES, TARGETS)
        assert close(ap[:2], T([5 / 6, 1.0])) and math.isnan(ap[2].item())
        assert close(multilabel_map(SCORES, TARGETS), 11 / 12)

    def test_torchmetrics_macro_counts_empty_class_as_zero(self):
        # The reason we average ourselves: torchmetrics 1.9 gives the positive-free class 0 and keeps it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tm = multilabel_average_precision(SCORES, TARGETS, num_labels=3, average="macro")
        assert close(tm, (5 / 6 + 1 + 0) / 3)

    def test_half_ap(self):
        ap = per_class_ap(T([[0.9, 0.1], [0.2, 0.8]]), T([[0, 1], [1, 0]]))  # both: N then P -> 1/2
        assert close(ap, T([0.5, 0.5]))

    def test_large_logits_do_not_tie(self):
        # ranking N, P, P -> AP = (1/2 + 2/3) / 2 = 7/12. A float32 sigmoid would make all three 1.0 (AP 2/3).
        scores = T([[30.0], [25.0], [20.0]])
        targets = T([[0], [1], [1]])
        assert close(per_class_ap(scores, targets), T([7 / 12]))  # single class: binary path
        two = per_class_ap(torch.cat([scores, -scores], 1), torch.cat([targets, targets], 1))
        assert close(two, T([7 / 12, 1.0]))

    def test_float_targets_and_validation(self):
        assert close(multilabel_map(SCORES, TARGETS.float()), 11 / 12)
        with pytest.raises(ValueError, match="only contain 0 and 1"):
            multilabel_map(SCORES, TARGETS.float() * 0.5)
        with pytest.raises(ValueError, match="must match"):
            multilabel_map(SCORES, TARGETS[:, :2])

    def test_no_positives_anywhere_is_nan(self):
        assert math.isnan(multilabel_map(SCORES, torch.zeros_like(TARGETS)).item())

    def test_metric_matches_functional_across_batches(self):
        m = MultiLabelMAP(num_classes=3)
        m.update(SCORES[:1], TARGETS[:1])
        m.update(SCORES[1:], TARGETS[1:])
        assert close(m.compute(), 11 / 12)
        per = m.compute_per_class()
        assert close(per[:2], T([5 / 6, 1.0])) and math.isnan(per[2].item())
        assert m.positives.tolist() == [2, 2, 0]

    def test_metric_mixed_score_scales(self):
        # Cosine-like scores: batch 2 has a negative value. torchmetrics would sigmoid only batch 2.
        # class 0 true ranking: 0.9 N, 0.5 P, 0.3 P, -0.1 N -> AP = (1/2 + 2/3) / 2 = 7/12
        b1 = (T([[0.9, 1.0], [0.3, 0.0]]), T([[0, 1], [1, 0]]))
        b2 = (T([[-0.1, 0.0], [0.5, 0.0]]), T([[0, 0], [1, 0]]))
        m = MultiLabelMAP(num_classes=2)
        m.update(*b1)
        m.update(*b2)
        assert close(m.compute_per_class(), T([7 / 12, 1.0]))
        all_s, all_t = torch.cat([b1[0], b2[0]]), torch.cat([b1[1], b2[1]])
        assert close(m.compute(), multilabel_map(all_s, all_t))

    def test_metric_forward_and_reset(self):
        m = MultiLabelMAP(num_classes=3)
        batch = m(SCORES, TARGETS)
        assert close(batch, 11 / 12)
        m.reset()
        assert m.positives.tolist() == [0, 0, 0]
        m.update(SCORES[:2], TARGETS[:2])  # class 0: 0.9 P, 0.8 N -> 1; class 1: 0.7 P, 0.2 N -> 1
        assert close(m.compute(), 1.0)

    def test_binned_thresholds(self):
        # grid-aligned scores: the binned curve equals the exact one
        scores = T([[1.0, 0.25, 0.25], [0.75, 0.75, 0.5], [0.25, 0.5, 0.75]])
        m = MultiLabelMAP(num_classes=3, thresholds=5)  # 0, .25, .5, .75, 1
        m.update(scores, TARGETS)
        assert close(m.compute(), 11 / 12)
        assert math.isnan(m.compute_per_class()[2].item())
        with pytest.raises(ValueError, match="probabilities"):
            m.update(scores * 10, TARGETS)

    def test_metric_validation(self):
        with pytest.raises(ValueError, match=r"\(N, 3\)"):
            MultiLabelMAP(num_classes=3).update(SCORES[:, :2], TARGETS[:, :2])


def test_ignore_index_drops_entries():
    # class 0 without the ignored 0.8 negative: 0.9 P, 0.1 P -> AP 1; class 1 unchanged (1); class 2 empty
    targets = TARGETS.clone()
    targets[1, 0] = -1
    assert close(per_class_ap(SCORES, targets, ignore_index=-1)[:2], T([1.0, 1.0]))
    m = MultiLabelMAP(num_classes=3, ignore_index=-1)
    m.update(SCORES, targets)
    assert close(m.compute(), 1.0)
    assert m.positives.tolist() == [2, 2, 0]
