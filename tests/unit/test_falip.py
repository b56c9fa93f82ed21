"""FALIP: the foveal mask, its place in the encoder, REC scoring (batched == looped), subtract, unleash."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vpg.data.pointcloud import foreground_box
from vpg.methods.falip import (
    FALIPClassifier,
    FALIPRec,
    PrefixTokenizer,
    negative_weights,
    parse_prompt,
    pick_with_random_ties,
    subtract_negatives,
)
from vpg.modules.foveal import (
    box_token_ranges,
    foveal_mask,
    mask_boxes,
    resolve_layers,
    roa_mask,
    roa_weights,
)

TINY_GRID, TINY_SIZE, L = (4, 4), (32, 32), 17  # vpg-tiny: 32 px, patch 8


def tokens_of(boxes, grid=TINY_GRID, size=TINY_SIZE):
    """Set of (row, col) patches of each box, via roa_mask."""
    mask = roa_mask(torch.tensor(boxes, dtype=torch.float32), grid, size)
    return [{tuple(rc) for rc in m.nonzero().tolist()} for m in mask]


# ------------------------------------------------------------------ box -> ROA tokens


@pytest.mark.parametrize(
    "box, expected",
    [
        ([8, 8, 16, 16], {(1, 1)}),  # exactly one patch: edges on patch boundaries touch nothing else
        ([9, 9, 10, 10], {(1, 1)}),  # inside one patch
        ([24, 24, 32, 32], {(3, 3)}),  # bottom-right border patch
        ([0, 0, 8.01, 8], {(0, 0), (0, 1)}),  # a sliver over the boundary counts
        ([7.99, 0, 8.0, 1], {(0, 0)}),
        ([8, 8, 8, 20], {(1, 1), (2, 1)}),  # zero width: the column it lies in
        ([31.5, 31.5, 31.5, 31.5], {(3, 3)}),  # a point
        ([0, 0, 32, 32], set(itertools.product(range(4), range(4)))),  # whole image
        ([-10, -10, 50, 50], set(itertools.product(range(4), range(4)))),  # beyond the image: clamped
        ([32, 32, 40, 40], {(3, 3)}),  # entirely outside (bottom-right): the nearest patch
    ],
)
def test_box_to_tokens_edge_cases(box, expected):
    assert tokens_of([box])[0] == expected


def test_box_to_tokens_non_square_image_and_patches():
    # 48 x 96 image (H x W) cut into 4 x 8 patches of 12 x 12; and 2 x 8 patches of 24 x 12
    assert tokens_of([[40, 0, 96, 12]], grid=(4, 8), size=(48, 96))[0] == {(0, c) for c in range(3, 8)}
    assert tokens_of([[0, 23, 12, 25]], grid=(2, 8), size=(48, 96))[0] == {(0, 0), (1, 0)}
    ranges = box_token_ranges(torch.tensor([[13.0, 30.0, 14.0, 47.0]]), (4, 8), (48, 96))
    assert ranges.tolist() == [[2, 1, 3, 1]]  # rows 2..3, column 1


def reference_weights(h, w, alpha, sigma, eps):
    """R_norm over an h x w ROA by the formula, element by element."""
    r = [[math.exp(-((i - (h - 1) / 2) ** 2 + (j - (w - 1) / 2) ** 2) / (2 * sigma**2)) for j in range(w)]
         for i in range(h)]
    lo, hi = min(min(row) for row in r), max(max(row) for row in r)
    return torch.tensor([[alpha * (v - lo + eps) / (hi - lo + eps) for v in row] for row in r])


@pytest.mark.parametrize("sigma, eps", [(100.0, 1e-6), (1.5, 1e-6), (100.0, 1.0)])
def test_roa_weights_follow_the_formula(sigma, eps):
    boxes = torch.tensor([[0.0, 0.0, 24.0, 16.0], [8.0, 8.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]])
    weights = roa_weights(boxes, TINY_GRID, TINY_SIZE, alpha=0.2, sigma=sigma, eps=eps)
    assert torch.allclose(weights[0, :2, :3], reference_weights(2, 3, 0.2, sigma, eps).float(), atol=1e-7)
    assert weights[0, 2:].abs().sum() == 0 and weights[0, :, 3:].abs().sum() == 0  # zero outside the ROA
    assert weights[1, 1, 1] == pytest.approx(0.2) and weights[1].count_nonzero() == 1  # 1-token ROA: alpha
    assert torch.allclose(weights[2], reference_weights(4, 4, 0.2, sigma, eps).float(), atol=1e-7)


def test_sigma_100_is_a_bowl_from_alpha_at_the_centre():
    w = roa_weights(torch.tensor([[0.0, 0.0, 24.0, 24.0]]), TINY_GRID, TINY_SIZE, alpha=0.2, sigma=100.0)[0]
    # 3 x 3 ROA: the range of R is only ~1e-4 (float32 would round it to garbage): centre alpha,
    # edge midpoints ~alpha / 2 (eps = 1e-6 shifts it by 1 %), corners ~alpha * eps / range
    r_edge, r_corner = math.exp(-1 / 2e4), math.exp(-2 / 2e4)
    edge = 0.2 * (r_edge - r_corner + 1e-6) / (1 - r_corner + 1e-6)
    assert w[1, 1] == pytest.approx(0.2) and w[0, 1] == pytest.approx(edge, rel=1e-4) and 0.09 < edge < 0.11
    assert w[0, 0] == pytest.approx(0.2 * 1e-6 / (1 - r_corner + 1e-6), rel=1e-3) and w[0, 0] < 3e-3


@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_mask_forms(form):
    boxes = torch.tensor([[0.0, 0.0, 16.0, 8.0], [8.0, 8.0, 32.0, 32.0]])
    mask = foveal_mask(boxes, TINY_GRID, TINY_SIZE, alpha=0.3, sigma=2.0, form=form)
    row = torch.cat([torch.zeros(2, 1), roa_weights(boxes, TINY_GRID, TINY_SIZE, 0.3, 2.0).flatten(1)], 1)  # (2, L)
    if form == "a":  # only the [CLS] query row exists
        assert mask.shape == (2, L) and torch.equal(mask, row)
    elif form == "b":  # every query row equals the [CLS] row
        assert mask.shape == (2, L, L) and torch.equal(mask, row[:, None].expand(2, L, L))
    else:  # the diagonal only
        assert mask.shape == (2, L, L) and torch.equal(mask, torch.diag_embed(row))
        assert torch.equal(mask - torch.diag_embed(mask.diagonal(dim1=1, dim2=2)), torch.zeros(2, L, L))
    assert mask[..., 0].abs().sum() == 0  # the [CLS] key column is never biased
    assert row[0].count_nonzero() == 2 and row[1].count_nonzero() == 9  # ROAs: 1 x 2 and 3 x 3 tokens


def test_form_a_touches_only_the_cls_row_in_the_encoder(tiny_clip):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    bias = foveal_mask(torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 0.0, 32.0, 8.0]]), TINY_GRID, TINY_SIZE, alpha=2.0)
    with torch.no_grad():
        masked = tiny_clip.forward_image(images, attn_bias={0: bias}, hidden_layers=[0]).hidden[0]
        plain = tiny_clip.forward_image(images, hidden_layers=[0]).hidden[0]
    assert torch.equal(masked[:, 1:], plain[:, 1:])  # patch rows of the masked block: untouched
    assert (masked[:, 0] - plain[:, 0]).abs().max() > 1e-3  # [CLS] moved


def test_layer_specs():
    assert resolve_layers([-4, -3, -2, -1], 12) == [8, 9, 10, 11]
    assert resolve_layers("last_third", 12) == [8, 9, 10, 11] and resolve_layers("last_third", 6) == [4, 5]
    assert resolve_layers("all", 3) == [0, 1, 2] and resolve_layers("last:2", 6) == [4, 5]
    assert resolve_layers(1, 2) == [1] and resolve_layers([1, -1], 2) == [1]
    for bad in ([12], [-13], "first", "last:0", []):
        with pytest.raises(ValueError):
            resolve_layers(bad, 12)


def test_mask_boxes_equals_foreground_box():
    torch.manual_seed(0)
    masks = torch.rand(5, 12, 10) > 0.9
    masks[3] = False
    masks[4] = False
    masks[4, 2, 7] = True
    assert torch.equal(mask_boxes(masks), torch.stack([foreground_box(m) for m in masks]))


# ------------------------------------------------------------------ the method on vpg-tiny

PROMPTS = ["none", "crop", "redcircle", "blur", "redcircle+blur", "falip", "redcircle+falip"]


def make_batch(tokenizer, seed=0):
    """3 samples: images 'p' and 'q' (q has two expressions), padded candidates."""
    torch.manual_seed(seed)
    img_p, img_q = torch.randn(3, 32, 32), torch.randn(3, 32, 32)
    cand_p = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 30.0, 20.0], [0.0, 0.0, 0.0, 0.0]])
    cand_q = torch.tensor([[4.0, 4.0, 12.0, 28.0], [16.0, 0.0, 32.0, 16.0], [20.0, 20.0, 32.0, 32.0]])
    sentences = ["red circle", "blue square on the left", "the big star"]
    return {
        "image": torch.stack([img_p, img_q, img_q]),
        "candidates": torch.stack([cand_p, cand_q, cand_q]),
        "candidate_mask": torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]]).bool(),
        "gold": torch.stack([cand_p[1], cand_q[0], cand_q[2]]),
        "gold_index": torch.tensor([1, 0, 2]),
        "text": tokenizer(sentences),
        "sentences": sentences,
        "image_id": ["p", "q", "q"],
        "orig_size": torch.tensor([[64, 64]] * 3),
        "scale": torch.tensor([[0.5, 0.5]] * 3),
    }


def rec(tiny_clip, **kw):
    kw.setdefault("layers", [1])
    return FALIPRec(tiny_clip, **kw).eval()


def looped_scores(model, batch, prompt):
    """The authors' way: one forward per (image, box) at batch 1, prompt applied to that image alone."""
    edits, foveal = parse_prompt(prompt)
    clip = model.clip
    scores = torch.full(batch["candidate_mask"].shape, float("-inf"))
    for b in range(len(batch["image"])):
        text = F.normalize(clip.encode_text(batch["text"][b : b + 1]), dim=-1)[0]
        for k in range(batch["candidates"].shape[1]):
            if not batch["candidate_mask"][b, k]:
                continue
            box = batch["candidates"][b, k : k + 1]
            image = batch["image"][b : b + 1]
            if edits:
                from vpg.modules.visual_prompts import edit_images

                image = edit_images(image, box, torch.tensor([0]), edits, mean=clip.image_mean, std=clip.image_std,
                                    blur_sigma=model.blur_sigma_px, circle_thickness=model.circle_thickness)
            bias = {i: foveal_mask(box, TINY_GRID, TINY_SIZE, model.alpha, model.sigma, model.form, model.eps)
                    for i in model.layers} if foveal else None
            feat = F.normalize(clip.encode_image(image, attn_bias=bias), dim=-1)[0]
            scores[b, k] = feat @ text
    return scores


@pytest.mark.parametrize("prompt", PROMPTS)
def test_batched_equals_looped(tiny_clip, tiny_tokenizer, prompt):
    model = rec(tiny_clip, prompt=prompt)
    batch = make_batch(model.tokenizer)
    with torch.no_grad():
        batched = model.score(batch)
        looped = looped_scores(model, batch, prompt)
    assert torch.equal(batched.isinf(), looped.isinf())
    finite = ~looped.isinf()
    assert (batched[finite] - looped[finite]).abs().max() <= 1e-5


@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_batched_equals_looped_forms_and_all_layers(tiny_clip, form):
    model = rec(tiny_clip, form=form, layers="all", alpha=1.0, sigma=2.0)
    batch = make_batch(model.tokenizer, seed=1)
    with torch.no_grad():
        batched, looped = model.score(batch), looped_scores(model, batch, "falip")
    finite = ~looped.isinf()
    assert (batched[finite] - looped[finite]).abs().max() <= 1e-5


def test_shared_blocks_equal_unshared_through_the_method(tiny_clip):
    """Mask in the last block only: block 0 runs once per image (expand_index); same features."""
    model = rec(tiny_clip, layers=[1], alpha=1.0)
    torch.manual_seed(4)
    images = torch.randn(2, 3, 32, 32)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0], [0.0, 8.0, 8.0, 16.0], [4.0, 4, 20, 20]])
    index = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        shared = model.region_features(images, boxes, index, "falip")
        bias = {1: foveal_mask(boxes, TINY_GRID, TINY_SIZE, 1.0, 100.0, "a", model.eps)}
        unshared = F.normalize(tiny_clip.encode_image(images[index], attn_bias=bias), dim=-1)
    assert (shared - unshared).abs().max() <= 1e-5


@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_alpha_zero_is_the_plain_encoder(tiny_clip, form):
    model = rec(tiny_clip, alpha=0.0, form=form, layers="all")
    torch.manual_seed(5)
    images = torch.randn(2, 3, 32, 32)
    boxes, index = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0]]), torch.tensor([1, 0])
    assert model.foveal_bias(boxes, TINY_SIZE)[0].abs().sum() == 0  # the bias is exactly zero
    with torch.no_grad():
        masked = model.region_features(images, boxes, index, "falip")
        plain = F.normalize(tiny_clip.encode_image(images), dim=-1)[index]
    assert (masked - plain).abs().max() <= 1e-6  # SDPA with a zero mask vs none: float-level equal


def test_samples_of_one_image_share_features_and_match_unshared(tiny_clip):
    model = rec(tiny_clip)
    batch = make_batch(model.tokenizer)
    first, inverse = FALIPRec.unique_images(batch)
    assert first.tolist() == [0, 1] and inverse.tolist() == [0, 1, 1]
    distinct = dict(batch, image_id=["p", "q1", "q2"])
    with torch.no_grad():
        assert torch.allclose(model.score(batch), model.score(distinct), atol=1e-6)
    # same id but different pixels: no sharing, still correct
    clash = dict(batch, image_id=["p", "p", "p"])
    assert FALIPRec.unique_images(clash)[0].tolist() == [0, 1, 2]


def test_prefix_tokenizer_and_prompt_parsing(tiny_tokenizer):
    tok = PrefixTokenizer(tiny_tokenizer, "a photo of ")
    assert torch.equal(tok(["red circle"]), tiny_tokenizer(["a photo of red circle"]))
    assert parse_prompt("RedCircle + FALIP") == (("circle",), True)
    assert parse_prompt("none") == ((), False) and parse_prompt("redcircle+blur") == (("circle", "blur"), False)
    with pytest.raises(ValueError, match="unknown visual prompt"):
        parse_prompt("sparkles")


def test_random_tie_breaking():
    scores = torch.tensor([[1.0, 1.0, 1.0, float("-inf")], [0.1, 0.5, 0.2, 0.3]])
    picks = torch.stack([pick_with_random_ties(scores, torch.Generator().manual_seed(s)) for s in range(300)])
    assert set(picks[:, 0].tolist()) == {0, 1, 2}  # ties: every tied candidate, never the padding
    assert (picks[:, 1] == 1).all()  # no tie: the argmax
    counts = torch.bincount(picks[:, 0], minlength=3).float()
    assert counts.min() > 70  # roughly uniform (100 expected each)


def test_subtract_arithmetic():
    torch.manual_seed(6)
    b, k, q, e = 2, 3, 5, 8
    text = F.normalize(torch.randn(b, e), dim=-1)
    negatives = F.normalize(torch.randn(b, q, e), dim=-1)
    region = F.normalize(torch.randn(b, k, e), dim=-1)
    got = subtract_negatives(text, negatives.mean(1), region)
    for i in range(b):
        for j in range(k):
            expected = region[i, j] @ text[i] - sum(region[i, j] @ negatives[i, n] for n in range(q)) / q
            assert got[i, j] == pytest.approx(expected.item(), abs=1e-6)


def test_negative_selection_excludes_own_image_and_its_texts():
    # texts: 0 "a", 1 "b", 2 "c", 3 "d"; bank entries with owners
    bank_text = torch.tensor([0, 1, 1, 2, 3, 0])
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    has_text = torch.zeros(3, 4, dtype=torch.bool)
    has_text[owner, bank_text] = True
    w = negative_weights(torch.arange(3), has_text, owner, bank_text, num_negatives=2,
                         generator=torch.Generator().manual_seed(0))
    # image 0 owns "a", "b": allowed entries are "c" (3) and "d" (4) -> both, 1/2 each
    assert w[0].tolist() == [0, 0, 0, 0.5, 0.5, 0]
    # image 1 owns "b", "c": allowed are "a" (0, 5) and "d" (4): two of three, weights 1/2
    assert w[1, [1, 2, 3]].sum() == 0 and (w[1] > 0).sum() == 2 and w[1].sum() == pytest.approx(1.0)
    # image 2 owns "d", "a": only "b" (1, 2) and "c" (3) remain; with Q = 10 all three, 1/3 each
    w_all = negative_weights(torch.arange(3), has_text, owner, bank_text, num_negatives=10,
                             generator=torch.Generator().manual_seed(0))
    assert torch.allclose(w_all[2], torch.tensor([0, 1 / 3, 1 / 3, 1 / 3, 0, 0]))
    again = negative_weights(torch.arange(3), has_text, owner, bank_text, num_negatives=2,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, again)  # seeded


def test_negative_bank_means(tiny_clip):
    model = rec(tiny_clip, subtract=True, num_negatives=10)
    sentences = [["red circle"], ["blue star", "red circle"], ["green square"]]
    lookup, means = model.build_negative_bank(sentences, ["x", "y", "z"])
    with torch.no_grad():
        feats = F.normalize(tiny_clip.encode_text(model.tokenizer(["red circle", "blue star", "green square"])), dim=-1)
    # x owns "red circle": negatives "blue star" (y) and "green square" (z); "red circle" of y is excluded
    assert torch.allclose(means[lookup["x"]], (feats[1] + feats[2]) / 2, atol=1e-6)
    assert torch.allclose(means[lookup["y"]], feats[2], atol=1e-6)
    assert torch.allclose(means[lookup["z"]], (feats[0] + feats[1] + feats[0]) / 3, atol=1e-6)


def test_ensemble_sums_softmaxes(tiny_clip):
    model = rec(tiny_clip, prompt=["falip", "crop"])
    batch = make_batch(model.tokenizer)
    scale = tiny_clip.logit_scale.exp()
    with torch.no_grad():
        total = model.score(batch)
        parts = []
        for p in ("falip", "crop"):
            model.prompts = [p]
            parts.append((scale * model.score(batch)).softmax(-1))
    expected = (parts[0] + parts[1]).masked_fill(~batch["candidate_mask"], float("-inf"))
    assert torch.allclose(total, expected, atol=1e-6)
    assert torch.allclose(total[0, :2].sum(), torch.tensor(2.0), atol=1e-5)


def test_unleash_identity_and_effect(tiny_clip):
    """The [CLS] decomposition sums to the real embedding; with a no-op prompt unleash changes nothing."""
    torch.manual_seed(7)
    images = torch.randn(2, 3, 32, 32)
    boxes, index = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0]]), torch.tensor([0, 1])
    bias = {1: foveal_mask(boxes, TINY_GRID, TINY_SIZE, alpha=1.0)}
    with torch.no_grad():
        dec = tiny_clip.decompose_image_cls(images, attn_bias=bias)
        assert (dec.total() - tiny_clip.encode_image(images, attn_bias=bias)).abs().max() <= 1e-4
        noop = rec(tiny_clip, alpha=0.0, layers="all", unleash=True)
        plain = F.normalize(tiny_clip.encode_image(images), dim=-1)
        assert (noop.region_features(images, boxes, index, "falip") - plain).abs().max() <= 1e-4
        # Eq. 5-6 by hand: total(G') + sum over unleashed heads of (G' - G)
        model = rec(tiny_clip, alpha=1.0, layers=[1], unleash=True)
        got = model.region_features(images, boxes, index, "falip")
        base = tiny_clip.decompose_image_cls(images)
        expected = dec.total() + dec.attn_heads[:, 1].sum(1) - base.attn_heads[:, 1].sum(1)
    assert (got - F.normalize(expected, dim=-1)).abs().max() <= 1e-5


def test_forward_picks_boxes_and_predictions_map_back(tiny_clip):
    from vpg.methods.falip import prediction_records

    model = rec(tiny_clip)
    batch = make_batch(model.tokenizer)
    with torch.no_grad():
        out = model(batch)
    rows = torch.arange(3)
    assert torch.equal(out["box"], batch["candidates"][rows, out["scores"].argmax(-1)])
    records = prediction_records(batch, out)
    assert records[1]["box_xyxy"] == [v * 2 for v in out["box"][1].tolist()]  # scale 0.5 -> x 2
    assert len(records[0]["scores"]) == 2 and records[2]["expression"] == "the big star"


def test_classifier_uses_one_mask_per_image(tiny_clip):
    model = FALIPClassifier(tiny_clip, layers=[1], class_names=["red circle", "blue star"]).eval()
    model.classifier = model.class_text_features(model._class_names, model.templates)
    torch.manual_seed(8)
    images, boxes = torch.randn(2, 3, 32, 32), torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0]])
    with torch.no_grad():
        logits = model(images, boxes)
        bias = {1: foveal_mask(boxes, TINY_GRID, TINY_SIZE)}
        feats = F.normalize(tiny_clip.encode_image(images, attn_bias=bias), dim=-1)
        expected = tiny_clip.logit_scale.exp() * feats @ model.classifier.t()
    assert torch.allclose(logits, expected, atol=1e-4)
