"""WWbL / VPT-WSG: CLIP maps, GAE's gradient path, losses, the network, stage-2 init, entity units."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from vpg.clip import create_model
from vpg.data.datamodules import PhraseDataModule
from vpg.data.transforms import clip_transform
from vpg.losses.wwbl import (
    WWbLLossWeights,
    background_loss,
    foreground_loss,
    regularization_loss,
    rmap_loss,
    wwbl_loss,
)
from vpg.methods.wsg import CLIPMapGrounding, WSGGrounding
from vpg.modules.clip_maps import MAP_KINDS, clip_map, gae_map, gradcam_map, similarity_map, to_image
from vpg.modules.wwbl import GroundingNetwork, VGG16Encoder


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_model("vpg-tiny")


@pytest.fixture()
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture()
def text(clip):
    return F.normalize(torch.randn(3, clip.embed_dim, generator=torch.Generator().manual_seed(2)), dim=-1)


# ------------------------------------------------------------------ core: attention probabilities


def test_attention_layers_keep_the_output_and_give_probabilities(clip, images):
    plain = clip.forward_image(images)
    out = clip.forward_image(images, attention_layers=[0, 1])
    assert torch.allclose(out.pooled, plain.pooled, atol=1e-5)
    assert out.attention[1].shape == (3, clip.vision_heads, 17, 17)
    assert torch.allclose(out.attention[1].sum(-1), torch.ones(3, clip.vision_heads, 17), atol=1e-5)


# ------------------------------------------------------------------ CLIP maps


def test_similarity_map_equals_direct_cosine(clip, images, text):
    got = similarity_map(clip, images, text)  # (3, 4, 4)
    last = clip.num_vision_layers - 1
    tokens = clip.forward_image(images, hidden_layers=[last]).hidden[last][:, 1:]  # (3, 16, D)
    visual = clip.model.visual
    patches = visual.ln_post(tokens) @ visual.proj  # (3, 16, E)
    for n in range(3):
        for p in range(16):
            expected = F.cosine_similarity(patches[n, p], text[n], dim=0)
            assert got[n, p // 4, p % 4].item() == pytest.approx(expected.item(), abs=1e-5)


def test_gae_map_shape_range_and_formula(clip, images, text):
    raw = gae_map(clip, images, text)
    assert raw.shape == (3, 4, 4) and (raw >= 0).all() and raw.max() > 0
    heat = to_image(raw, (32, 32))
    assert heat.shape == (3, 32, 32) and heat.min() == 0 and heat.max() == pytest.approx(1.0)
    # by hand: d score / d A of the last block, mean over heads of clamp(dA * A), [CLS] row
    last = clip.num_vision_layers - 1
    x = images.clone().requires_grad_(True)
    out = clip.forward_image(x, attention_layers=[last])
    score = (F.normalize(out.pooled, dim=-1)[1] * text[1]).sum()
    (grad,) = torch.autograd.grad(score, out.attention[last])
    expected = (grad[1] * out.attention[last][1]).clamp(min=0).mean(0)[0, 1:].view(4, 4)
    assert torch.allclose(raw[1], expected, atol=1e-6)


def test_gradient_maps_leave_clip_unchanged(clip, images, text):
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    caller = images.clone().requires_grad_(True)  # a caller's graph must not be disturbed either
    for fn in (gae_map, gradcam_map):
        out = fn(clip, caller, text)
        assert not out.requires_grad
    assert all(p.grad is None for p in clip.parameters())
    assert not any(p.requires_grad for p in clip.parameters())
    assert caller.grad is None
    assert all(torch.equal(v, before[k]) for k, v in clip.state_dict().items())


@pytest.mark.parametrize("kind", MAP_KINDS)
def test_every_map_works_under_inference_mode(clip, images, text, kind):
    with torch.inference_mode():
        raw = clip_map(kind, clip, images, text)
    assert raw.shape == (3, 4, 4) and torch.isfinite(raw).all()
    if kind in ("gae", "gradcam"):
        assert (raw >= 0).all()
    else:
        assert raw.abs().max() <= 1 + 1e-6


# ------------------------------------------------------------------ losses


def test_losses_against_hand_values():
    heat = torch.tensor([[[0.2, 0.8], [0.0, 1.0]]])  # (1, 2, 2)
    pseudo = torch.tensor([[[0.0, 1.0], [0.5, 1.0]]])
    assert rmap_loss(heat, pseudo).item() == pytest.approx((0.04 + 0.04 + 0.25 + 0.0) / 4)
    assert regularization_loss(heat).item() == pytest.approx(0.5)
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    fore = torch.tensor([[3.0, 4.0], [0.0, -1.0]])  # cos 0.6 and -1
    back = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # cos 1/sqrt2 and 0
    assert foreground_loss(fore, t).item() == pytest.approx(((1 - 0.6) + (1 - -1)) / 2)
    assert background_loss(-back, t).item() == pytest.approx((1 / math.sqrt(2) + 0) / 2)  # |cos|
    terms = wwbl_loss(heat.expand(2, -1, -1), pseudo.expand(2, -1, -1), fore, back, t)
    expected = 16 * 0.0825 + 0.25 * 1.2 + 0.5 * (1 / math.sqrt(2)) / 2 + 0.25 * 0.5
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["rmap"].item() == pytest.approx(16 * 0.0825)
    half = wwbl_loss(heat, pseudo, fore[:1], back[:1], t[:1], WWbLLossWeights(rmap=0, fore=1, back=0, reg=0))
    assert half["loss"].item() == pytest.approx(0.4)


# ------------------------------------------------------------------ network


def test_vgg16_encoder_is_torchvisions_relu4_3_and_loads_its_weights(tmp_path):
    reference = torchvision.models.vgg16(weights=None)
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    encoder = VGG16Encoder(str(tmp_path / "vgg16.pth"))
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(encoder(x), reference.features[:23](x), atol=1e-5)
    assert encoder(x).shape == (1, 512, 4, 4)  # stride 8 after relu4_3


def test_network_heatmap_and_prompt_injection():
    torch.manual_seed(0)
    net = GroundingNetwork(text_dim=32, width=0.125).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.randn(2, 32)
    heat = net(x, t)
    assert heat.shape == (2, 32, 32) and (heat > 0).all() and (heat < 1).all()
    prompted = net(x, t, torch.rand(2, 4, 4))
    assert not torch.allclose(heat, prompted)  # the prompt reaches the output
    assert torch.allclose(net(x, t, torch.zeros(2, 4, 4)), heat, atol=1e-6)  # a zero prompt adds nothing
    with pytest.raises(ValueError, match="width 16"):
        net(x, torch.randn(2, 16))


def test_training_step_trains_only_the_network(clip):
    torch.manual_seed(0)
    model = WSGGrounding(clip, GroundingNetwork(text_dim=clip.embed_dim, width=0.125), prompt="similarity")
    texts = ["a red circle", "two blue squares"]
    batch = {"image": torch.randn(2, 3, 32, 32), "text": model.tokenizer(texts), "sentences": texts}
    loss = model.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None for p in clip.parameters())
    assert all(p.grad is not None for p in model.network.parameters())
    # the tokens carry WWbL's prefix
    assert torch.equal(batch["text"][0], model.tokenizer.tokenizer(["image of a red circle"])[0])


def test_init_from_loads_the_stage_one_network(clip, tmp_path):
    torch.manual_seed(0)
    stage1 = WSGGrounding(clip, GroundingNetwork(text_dim=clip.embed_dim, width=0.125))
    torch.save({"state_dict": {f"network.{k}": v for k, v in stage1.network.state_dict().items()}},
               tmp_path / "stage1.ckpt")
    torch.manual_seed(1)
    stage2 = WSGGrounding(clip, GroundingNetwork(text_dim=clip.embed_dim, width=0.125), prompt="gae",
                          init_from=str(tmp_path / "stage1.ckpt"))
    assert not torch.equal(stage2.network.decoder.head.weight, stage1.network.decoder.head.weight)
    stage2.setup("fit")
    assert all(torch.equal(a, b) for a, b in zip(stage1.network.state_dict().values(),
                                                 stage2.network.state_dict().values()))
    missing = WSGGrounding(clip, GroundingNetwork(text_dim=clip.embed_dim, width=0.125),
                           init_from=str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        missing.setup("fit")


# ------------------------------------------------------------------ entity units on the Flickr fixture


class FixedMaps(CLIPMapGrounding):
    """Heatmap of row i = a constant i + 1 plus a peak at a position given by the phrase length."""

    def heatmaps(self, batch):
        out = torch.zeros(len(batch["phrases"]), 32, 32)
        for i, phrase in enumerate(batch["phrases"]):
            out[i] += i + 1
            out[i, len(phrase) % 32, 5] += 10
        return out


def test_entity_units_average_mentions_and_unite_boxes(clip, tmp_path):
    from PIL import Image

    from tests.unit.test_convert import FLICKR_ID, _flickr_root
    from vpg.data.convert.flickr30k import convert_flickr30k_entities

    root = _flickr_root(tmp_path)  # the real Sentences file + an XML with its real entity ids
    convert_flickr30k_entities(root, tmp_path / "out", splits={"test": root / "test.txt"})
    Image.new("RGB", (500, 421), "gray").save(tmp_path / f"{FLICKR_ID}.jpg")
    model = FixedMaps(clip, eval_unit="entity")
    dm = PhraseDataModule(str(tmp_path / "out"), image_root=str(tmp_path), train_split=None, val_split=None,
                          test_splits=["test"], batch_size=4)
    dm.attach(clip_transform(clip), model.tokenizer)
    units, mentions = [], {}
    for batch in dm.dataloader("test"):
        heat = model.heatmaps(batch)
        for b, entity in enumerate(batch["entity_id"]):
            mentions.setdefault(entity, []).append(heat[b])
        units += model._units_of_batch(batch, heat, "test")
    units += model._flush("test")
    assert len(units) == len(mentions) == 4  # 253068, 253069, 253070, 253072
    by_count = {}
    for unit in units:
        entity = next(e for e, maps in mentions.items() if len(maps) == unit.count and torch.allclose(
            unit.heat_sum / unit.count, torch.stack(maps).mean(0)))
        by_count[entity] = unit
    assert set(by_count) == set(mentions)
    # 253069 has two boxes (XML corners minus 1); its unit holds both, in original pixels
    boxes = by_count["253069"].boxes
    assert sorted(boxes.round().tolist()) == [[10.0, 20.0, 59.0, 89.0], [100.0, 50.0, 299.0, 399.0]]
    assert by_count["253069"].count == len(mentions["253069"]) == 5  # its mentions in sentences 1, 2, 3 (two), 5
    # scoring drops the 49 x 69 box (< 5 % of 500 x 421) and unites the rest: the peak must be inside
    result = model.score_unit(by_count["253069"], "test", "test")
    assert result["gold"].round().tolist() == [100.0, 50.0, 299.0, 399.0]
    assert model.unit_counts["test"]["units"] == 1
