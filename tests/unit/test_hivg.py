"""HiVG parts on the 2-block vpg-tiny CLIP: bridge (per-sample text, gates, padding, identity at
init), perceiver/encoder masks, box and region-text losses, transforms, prediction records."""

import pytest
import torch
from torchvision.ops import generalized_box_iou

from vpg.clip import create_model, get_tokenizer
from vpg.data.transforms import CLIP_MEAN, IMAGENET_MEAN, HiVGTrainTransform, Letterbox
from vpg.losses.grounding import box_losses, dice_loss, region_text_losses, token_box_targets
from vpg.methods.hivg import HiVG, default_bridge_layers, default_perceiver_layers, prediction_records
from vpg.modules.bridge import CrossModalBridge
from vpg.modules.grounding import BoxHead, GroundingEncoder, padding_token_mask

SMALL = dict(width=32, encoder_layers=2, encoder_heads=2, encoder_ffn=64, bridge_heads=2, dropout=0.0)


def tiny_hivg(**kwargs) -> HiVG:
    torch.manual_seed(0)
    return HiVG(create_model("vpg-tiny"), **{**SMALL, **kwargs}).eval()


def randomise_bridge_outputs(model: HiVG) -> None:
    """The bridges start as the identity (zero FFN output layer); give them a real effect."""
    with torch.no_grad():
        for bridge in model.bridges.values():
            bridge.ffn[3].weight.normal_(0, 0.5)
            bridge.text_gates.normal_(0, 0.5)


@pytest.fixture
def batch():
    torch.manual_seed(1)
    tokens = get_tokenizer("vpg-tiny")(["the red circle", "a big blue square on the left", "the star"])
    return torch.randn(3, 3, 32, 32), tokens


# ------------------------------------------------------------------ bridge


def test_default_layers_follow_the_paper_for_vit_b():
    assert default_bridge_layers(12) == [3, 7, 11]  # paper: 4, 8, 12 (1-indexed)
    assert default_perceiver_layers(12) == [0, 3, 7, 11]  # paper: 1, 4, 8, 12
    assert default_bridge_layers(6) == [1, 3, 5]


def test_bridge_is_the_identity_at_initialisation(batch):
    model = tiny_hivg()
    images, tokens = batch
    text = model.clip.forward_text(tokens, hidden_layers=model.text_layers)
    states = torch.stack([text.hidden[i] for i in model.text_layers], 1)
    with torch.no_grad():
        bridged = model.clip.forward_image(images, inserts={i: model.bridges[str(i)].bind(states, text.padding_mask)
                                                            for i in model.bridge_layers}).pooled
        plain = model.clip.forward_image(images).pooled
    assert torch.allclose(bridged, plain, atol=1e-6)


@pytest.mark.parametrize("mixing", [False, True])
def test_each_image_attends_only_to_its_own_text(batch, mixing):
    """Perturb sample 1's expression: sample 0's and 2's outputs must not move (unless the
    authors' batch mixing is switched on, which is what makes their accuracy batch-dependent)."""
    model = tiny_hivg(faithful_batch_mixing=mixing)
    randomise_bridge_outputs(model)
    images, tokens = batch
    other = tokens.clone()
    other[1] = get_tokenizer("vpg-tiny")(["a completely different yellow triangle"])[0]
    with torch.no_grad():
        a, b = model(images, tokens), model(images, other)
    assert not torch.allclose(a["box"][1], b["box"][1], atol=1e-4)  # its own text matters
    others = [0, 2]
    if mixing:
        assert not torch.allclose(a["image_feature"][others], b["image_feature"][others], atol=1e-4)
    else:
        assert torch.allclose(a["image_feature"][others], b["image_feature"][others], atol=1e-6)
        assert torch.allclose(a["box"][others], b["box"][others], atol=1e-6)


def test_bridge_ignores_text_padding_and_applies_gates():
    torch.manual_seed(0)
    bridge = CrossModalBridge(16, 8, text_levels=2, context_length=6, heads=2, dropout=0.0).eval()
    with torch.no_grad():
        bridge.ffn[3].weight.normal_()
    x = torch.randn(2, 5, 16)
    states = torch.randn(2, 2, 6, 8)
    padding = torch.tensor([[False, False, False, True, True, True]] * 2)
    changed = states.clone()
    changed[:, :, 3:] = torch.randn(2, 2, 3, 8) * 10  # only padded positions
    with torch.no_grad():
        assert torch.allclose(bridge(x, states, padding), bridge(x, changed, padding), atol=1e-6)
        # (1 + E) gates: E = -1 on level 1 removes that level's text entirely
        bridge.text_gates[1] = -1.0
        level1 = states.clone()
        level1[:, 1] = torch.randn(2, 6, 8)
        assert torch.allclose(bridge(x, states, padding), bridge(x, level1, padding), atol=1e-6)
        level0 = states.clone()
        level0[:, 0, :3] += 1.0
        assert not torch.allclose(bridge(x, states, padding), bridge(x, level0, padding), atol=1e-4)


# ------------------------------------------------------------------ encoder, masks, head


def test_padding_tokens_follow_the_letterbox():
    image = Letterbox(32, IMAGENET_MEAN, (0.229, 0.224, 0.225))
    from PIL import Image

    tensor, _ = image(Image.new("RGB", (64, 28), (10, 200, 30)))  # 32 x 14 after resizing: rows 14..31 padded
    mask = padding_token_mask(tensor[None], (8, 8)).view(4, 4)
    assert mask.tolist() == [[False] * 4, [False] * 4, [True] * 4, [True] * 4]  # row 1 (px 8-15) has content
    assert not padding_token_mask(torch.zeros(1, 3, 32, 32).add(0.3), (8, 8)).any()


def test_encoder_ignores_padded_tokens():
    torch.manual_seed(0)
    encoder = GroundingEncoder(16, layers=2, heads=2, ffn=32, dropout=0.0, num_visual=4, num_text=3).eval()
    visual, text = torch.randn(1, 4, 16), torch.randn(1, 3, 16)
    vpad, tpad = torch.tensor([[False, False, True, True]]), torch.tensor([[False, True, True]])
    reg, _, _ = encoder(visual, text, vpad, tpad)
    visual2, text2 = visual.clone(), text.clone()
    visual2[:, 2:] += torch.randn(2, 16) * 5  # (a constant shift would vanish in the pre-norm)
    text2[:, 1:] -= torch.randn(2, 16) * 5
    reg2, _, _ = encoder(visual2, text2, vpad, tpad)
    assert torch.allclose(reg, reg2, atol=1e-5)
    visual2[:, 0] += torch.randn(16) * 5
    assert not torch.allclose(reg, encoder(visual2, text2, vpad, tpad)[0], atol=1e-3)


def test_box_head_outputs_normalised_cxcywh_and_model_gives_pixels(batch):
    assert BoxHead(8)(torch.randn(5, 8) * 100).min() >= 0
    model = tiny_hivg()
    images, tokens = batch
    with torch.no_grad():
        out = model(images, tokens)
    cx, cy, w, h = out["box_cxcywh"].unbind(-1)
    expected = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * 32
    assert torch.allclose(out["box"], expected, atol=1e-5)
    assert out["token_logits"].shape == (3, 16) and out["visual_padding"].shape == (3, 16)


# ------------------------------------------------------------------ losses


def test_box_losses_zero_at_the_gold_box_and_giou_matches_torchvision():
    gold = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1]])
    regression, giou = box_losses(gold, gold)
    assert regression.item() == 0 and giou.abs().item() < 1e-4  # torchvision eps 1e-7
    pred = torch.tensor([[0.4, 0.5, 0.2, 0.2], [0.9, 0.1, 0.05, 0.05]])
    regression, giou = box_losses(pred, gold)
    assert regression.item() == pytest.approx((pred - gold).abs().sum(-1).mean().item())

    def xyxy(b):
        return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)

    assert giou.item() == pytest.approx((1 - generalized_box_iou(xyxy(pred), xyxy(gold)).diag()).mean().item(), abs=1e-6)
    smooth, _ = box_losses(pred, gold, "smooth_l1")
    assert 0 < smooth.item() < regression.item()
    with pytest.raises(ValueError, match="smooth_l1"):
        box_losses(pred, gold, "l2")


def test_token_targets_by_patch_centre_and_tiny_boxes():
    # 4 x 4 grid of 8-px patches; centres at 4, 12, 20, 28
    boxes = torch.tensor([[0.0, 0.0, 16.0, 8.0], [13.0, 13.0, 15.0, 15.0]])
    targets = token_box_targets(boxes, (4, 4), (32, 32)).view(2, 4, 4)
    assert targets[0].nonzero().tolist() == [[0, 0], [0, 1]]
    assert targets[1].nonzero().tolist() == [[1, 1]]  # covers no centre: the patch holding its centre


def test_region_text_losses_reward_the_box_mask_and_skip_padding():
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    good, bad = torch.tensor([[9.0, 9.0, -9.0, -9.0]]), torch.tensor([[-9.0, -9.0, 9.0, 9.0]])
    focal_good, dice_good = region_text_losses(good, targets)
    focal_bad, dice_bad = region_text_losses(bad, targets)
    assert focal_good < 1e-3 < focal_bad and dice_good < 0.01 and dice_bad > 0.75  # smooth 1 over 2 + 2 tokens: 1 - 1/5
    valid = torch.tensor([[True, True, False, False]])
    wrong_on_padding = torch.tensor([[9.0, 9.0, 9.0, 9.0]])
    assert dice_loss(wrong_on_padding, targets, valid) < 0.01


def test_losses_sum_with_weights(batch):
    model = tiny_hivg(focal_weight=0.0, dice_weight=0.0, contrastive_weight=0.5)
    images, tokens = batch
    gold = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 4.0, 30.0, 20.0], [1.0, 1.0, 31.0, 31.0]])
    terms = model.losses(model(images, tokens), gold)
    assert set(terms) == {"box", "giou", "contrastive", "loss"}
    assert terms["loss"].item() == pytest.approx((terms["box"] + terms["giou"] + 0.5 * terms["contrastive"]).item())


def test_only_heads_and_bridges_train_without_lora():
    model = tiny_hivg()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"bridges", "perceiver", "text_proj", "encoder", "box_head", "region_scale", "region_shift"}
    assert not tiny_hivg(use_bridge=False).bridges
    with pytest.raises(ValueError, match="bridge_layers: block 7 out of range"):
        tiny_hivg(bridge_layers=[7])


# ------------------------------------------------------------------ data and outputs


def test_transforms_are_hivgs():
    model = tiny_hivg()
    train, test = model.image_transform(True), model.image_transform(False)
    assert isinstance(train, HiVGTrainTransform) and train.mean == list(IMAGENET_MEAN) and train.size == 32
    assert isinstance(test, Letterbox) and test.size == 32
    assert tiny_hivg(normalize="clip").image_transform(False).mean == list(CLIP_MEAN)


def test_prediction_records_map_back_to_original_pixels():
    batch = {"sentences": ["a", "b"], "image_id": ["x", "y"],
             "scale": torch.tensor([[0.5, 0.5], [2.0, 2.0]]), "offset": torch.tensor([[0.0, 0.0], [-4.0, 0.0]]),
             "orig_size": torch.tensor([[64, 40], [16, 16]])}
    out = {"box": torch.tensor([[2.0, 4.0, 10.0, 18.0], [0.0, 2.0, 40.0, 40.0]])}
    records = prediction_records(batch, out)
    assert records[0]["box_xyxy"] == [4.0, 8.0, 20.0, 36.0]
    assert records[1]["box_xyxy"] == [2.0, 1.0, 16.0, 16.0]  # clipped to the 16 x 16 photo
