"""DPT / CAVPT: prompts in the encoder, top-K selection, Eq. 10 targets, variants, parameter counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from vpg.methods.cavpt import (
    VARIANTS,
    PromptTuningClassifier,
    resolve_cavpt_blocks,
    warmup_cosine_factor,
)
from vpg.methods.zeroshot import ZeroShotClassifier
from vpg.metrics import TopKAccuracy
from vpg.modules.prompts import (
    ClassAwarePrompts,
    TextContext,
    VisualPrompts,
    class_aware_loss,
    class_aware_targets,
)

NAMES = ["red circle", "blue square", "green star", "yellow ring", "purple cross", "orange diamond"]
TINY = dict(width=32, embed=32, text_width=32, layers=2, grid=16)  # vpg-tiny: 32 px, patch 8 -> 16 patches


def make_model(tiny_clip, variant, **kwargs):
    """A PromptTuningClassifier on the shared tiny CLIP, set up for NAMES without a Trainer."""
    torch.manual_seed(0)
    kwargs.setdefault("context_length", 4)  # vpg-tiny's text context is 16 tokens
    model = PromptTuningClassifier(tiny_clip, variant=variant, **kwargs)
    model._class_names = NAMES
    model.class_names = list(NAMES)
    model.classifier = model.class_text_features(NAMES, model.templates)
    model.prepare_classes(NAMES)
    return model.eval()


@pytest.fixture()
def images():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------ the core's prompt semantics


def reference_forward(clip, images, prompts_at: dict[int, torch.Tensor], accumulate: bool = False):
    """Block loop by hand: prompts given at block i replace (or, accumulate=True, are appended to) the
    previous block's prompt outputs. Returns the final [CLS] embedding (N, E)."""
    x = clip.image_tokens(images)  # (N, 1 + hw, D)
    n_keep = x.shape[1]
    for i, block in enumerate(clip.vision_blocks):
        if i in prompts_at:
            p = prompts_at[i].expand(x.shape[0], -1, -1) if prompts_at[i].dim() == 2 else prompts_at[i]
            x = torch.cat([x if accumulate else x[:, :n_keep], p], dim=1)
        x = x + block.attn.attend(block.ln_1(x))
        x = x + block.mlp(block.ln_2(x))
    return clip._project_image(x[:, 0])


def test_vpt_deep_replaces_prompts_at_every_block(tiny_clip, images):
    torch.manual_seed(1)
    prompts = VisualPrompts(4, TINY["width"], blocks=[0, 1], std=1.0)
    tokens = prompts()
    assert set(tokens) == {0, 1} and tokens[1].shape == (4, TINY["width"])
    with torch.no_grad():
        out = tiny_clip.forward_image(images, extra_tokens=tokens, hidden_layers=[0, 1], dense="tokens")
        replaced = reference_forward(tiny_clip, images, tokens)
        accumulated = reference_forward(tiny_clip, images, tokens, accumulate=True)
    # 1 + 16 patches + 4 prompts at every block: block 1's prompts replaced block 0's outputs
    assert out.hidden[0].shape[1] == out.hidden[1].shape[1] == 1 + TINY["grid"] + 4
    assert torch.allclose(out.pooled, replaced, atol=1e-5)
    assert not torch.allclose(out.pooled, accumulated, atol=1e-3)  # appending would differ


def test_vpt_shallow_prompts_are_carried_through(tiny_clip, images):
    torch.manual_seed(2)
    tokens = VisualPrompts(3, TINY["width"], blocks=[0], std=1.0)()
    with torch.no_grad():
        out = tiny_clip.forward_image(images, extra_tokens=tokens, hidden_layers=[1])
        carried = reference_forward(tiny_clip, images, tokens)
        plain = tiny_clip.encode_image(images)
    assert torch.allclose(out.pooled, carried, atol=1e-5)
    assert out.hidden[1].shape[1] == 1 + TINY["grid"] + 3
    assert not torch.allclose(out.pooled, plain, atol=1e-3)


def test_prompt_generator_sees_the_block_input_without_old_prompts(tiny_clip, images):
    seen = {}
    fixed = torch.randn(4, TINY["width"], generator=torch.Generator().manual_seed(5))

    def generator(x):
        seen["x"] = x.clone()
        return fixed.expand(x.shape[0], -1, -1)  # (N, P, D)

    with torch.no_grad():
        deep = torch.randn(2, TINY["width"])
        out = tiny_clip.forward_image(images, extra_tokens={0: deep, 1: generator}, hidden_layers=[0])
        as_tensor = tiny_clip.forward_image(images, extra_tokens={0: deep, 1: fixed})
    assert seen["x"].shape == (5, 1 + TINY["grid"], TINY["width"])  # block 0's prompt outputs dropped
    assert torch.equal(seen["x"], out.hidden[0][:, : 1 + TINY["grid"]])
    assert torch.allclose(out.pooled, as_tensor.pooled, atol=1e-6)  # a generator == the tensor it returns


# ------------------------------------------------------------------ zero-shot equivalence


@pytest.mark.parametrize("variant, kwargs", [("zeroshot", {}), ("vpt_deep", {"prompt_length": 0}),
                                             ("vpt_shallow", {"prompt_length": 0})])
def test_no_visual_prompts_and_no_cavpt_equal_zero_shot_clip(tiny_clip, images, variant, kwargs):
    model = make_model(tiny_clip, variant, **kwargs)
    assert model.visual_prompts is None and model.cavpt is None and model.text_context is None
    reference = ZeroShotClassifier(tiny_clip)
    reference.classifier = reference.class_text_features(NAMES, reference.templates)
    with torch.no_grad():
        assert torch.equal(model(images).logits, reference(images))
        assert torch.equal(model.batch_logits({"image": images}), reference(images))


def test_prompts_change_the_prediction_features(tiny_clip, images):
    zs = make_model(tiny_clip, "zeroshot")
    deep = make_model(tiny_clip, "vpt_deep")
    with torch.no_grad():
        assert not torch.allclose(zs(images).logits, deep(images).logits, atol=1e-4)


# ------------------------------------------------------------------ CAVPT


def test_top_k_is_the_zero_shot_ranking(tiny_clip, images):
    model = make_model(tiny_clip, "vpt_cavpt", top_k=3)
    with torch.no_grad():
        out = model(images)
        zs = F.normalize(tiny_clip.encode_image(images), dim=-1)
    scores = zs @ model.classifier.t()  # (B, C) template classifier
    assert out.topk.shape == (5, 3)
    for b in range(5):
        ranked = scores[b].argsort(descending=True)
        assert out.topk[b].tolist() == ranked[:3].tolist()  # the 3 best classes, best first
    assert torch.allclose(out.zero_shot_image, zs)
    # K_N larger than the number of classes: all classes
    assert make_model(tiny_clip, "vpt_cavpt", top_k=50)(images).topk.shape == (5, len(NAMES))


def test_cavpt_prompts_come_from_the_top_k_text_features(tiny_clip, images):
    model = make_model(tiny_clip, "vlp_cavpt", top_k=2)
    assert model.cavpt_blocks == [1] and model.visual_prompts.blocks == [0]  # deep below, CAVPT in the last
    captured = {}
    generator = model.cavpt[0]
    original = generator.forward

    def spy(text, tokens):
        captured["text"], captured["tokens"] = text, tokens
        return original(text, tokens)

    generator.forward = spy
    with torch.no_grad():
        out = model(images)
        hidden = tiny_clip.forward_image(images, extra_tokens=model.visual_prompts(), hidden_layers=[0]).hidden[0]
    assert torch.allclose(captured["text"], out.text[out.topk])  # (B, K, E) current text prompts' features
    assert torch.allclose(captured["tokens"], hidden[:, : 1 + TINY["grid"]], atol=1e-6)  # block 1's input
    assert len(out.aux_logits) == 1 and out.aux_logits[0].shape == (5, 2, len(NAMES))


def test_cavpt_with_class_token_keys_attends_to_the_class_token_only(tiny_clip):
    torch.manual_seed(0)
    gen = ClassAwarePrompts(8, 16, num_classes=4, keys="cls", output_proj=False)
    text = torch.randn(2, 3, 8)
    tokens = torch.randn(2, 5, 16)
    changed = tokens.clone()
    changed[:, 1:] += 10.0  # patch tokens do not matter
    prompts, logits = gen(text, tokens)
    assert torch.allclose(prompts, gen(text, changed)[0])
    # one key: the attention output is out_proj(cls) for every query -> O = LN(out_proj(cls) + MLP(t))
    expected = gen.norm(gen.out_proj(tokens[:, :1]) + gen.query(text))
    assert torch.allclose(prompts, expected, atol=1e-6)
    assert torch.allclose(logits, gen.classifier(expected), atol=1e-6)
    with_tokens = ClassAwarePrompts(8, 16, num_classes=4, keys="tokens", num_keys=10)
    assert with_tokens.learned_keys.shape == (10, 16)
    assert not torch.allclose(with_tokens(text, tokens)[0], with_tokens(text, changed)[0])


def test_eq10_targets_paper_and_authors():
    topk = torch.tensor([[2, 0, 1], [3, 1, 0]])  # image 0: ground truth 0 at rank 2; image 1: 2 not in top 3
    labels = torch.tensor([0, 2])
    targets, used = class_aware_targets(topk, labels, num_classes=4, mode="paper")
    uniform = torch.full((4,), 0.25)
    assert torch.equal(targets[0, 1], torch.tensor([1.0, 0, 0, 0]))  # the ground-truth class's prompt
    for b, j in [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)]:
        assert torch.equal(targets[b, j], uniform)
    assert used.all()
    _, used_authors = class_aware_targets(topk, labels, num_classes=4, mode="authors")
    assert used_authors.tolist() == [[False, True, False], [False, False, False]]
    # the loss: mean soft cross-entropy over the used prompts
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    log_p = logits.log_softmax(-1)
    by_hand = -(targets * log_p).sum(-1).mean()
    assert torch.allclose(class_aware_loss(logits, topk, labels, "paper"), by_hand)
    assert torch.allclose(class_aware_loss(logits, topk, labels, "authors"), -log_p[0, 1, 0])
    only_image_1 = class_aware_loss(logits, topk, torch.tensor([3, 3]), "authors")  # 3 is ranked in image 1 only
    assert torch.allclose(only_image_1, -log_p[1, 0, 3])
    assert class_aware_loss(logits, topk[:, 1:], torch.tensor([2, 2]), "authors").item() == 0.0
    with pytest.raises(ValueError, match="aux targets"):
        class_aware_targets(topk, labels, 4, "other")


def test_training_step_combines_main_and_auxiliary_loss(tiny_clip, images):
    model = make_model(tiny_clip, "vlp_cavpt", top_k=3, aux_weight=0.5).train()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)
    model.metrics["train_top1"] = TopKAccuracy(len(NAMES))
    labels = torch.tensor([0, 1, 2, 3, 4])
    torch.manual_seed(7)
    loss = model.training_step({"image": images, "label": labels}, 0)
    torch.manual_seed(7)
    out = model(images)
    expected = F.cross_entropy(out.logits, labels) + 0.5 * class_aware_loss(out.aux_logits[0], out.topk, labels)
    assert torch.allclose(loss, expected, atol=1e-5)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert not any(p.grad is not None for p in tiny_clip.parameters())  # CLIP frozen


# ------------------------------------------------------------------ variants and parameter counts


def cavpt_params(e, d, c):
    """keys="cls": query Linear(E, D) + out (D, D) + LN (2D) + LP Linear(D, D) + classifier (D, C)."""
    return e * d + d + d * d + 2 * d + d * d + d + d * c


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_trainable_parameter_counts_per_variant(tiny_clip, variant):
    model = make_model(tiny_clip, variant)
    d, e, w, layers, c = TINY["width"], TINY["embed"], TINY["text_width"], TINY["layers"], len(NAMES)
    text = 4 * w  # make_model's context_length
    expected = {
        "zeroshot": 0,
        "coop": text,
        "vpt_shallow": 10 * d,
        "vpt_deep": layers * 10 * d,
        "vpt_cavpt": (layers - 1) * 10 * d + cavpt_params(e, d, c),
        "vlp_deep": text + layers * 10 * d,
        "vlp_cavpt": text + (layers - 1) * 10 * d + cavpt_params(e, d, c),
    }[variant]
    summary = model.trainable_summary()
    assert summary["total"] == expected
    assert "clip" not in summary
    model.check_frozen_backbone()


def test_cavpt_blocks_and_schedule():
    assert resolve_cavpt_blocks(1, 12) == [11] and resolve_cavpt_blocks(3, 12) == [9, 10, 11]
    assert resolve_cavpt_blocks([-2, 11], 12) == [10, 11]
    with pytest.raises(ValueError, match="cavpt_blocks"):
        resolve_cavpt_blocks(13, 12)
    # constant warm-up, then the cosine restarts from the full lr (Dassl's ConstantWarmupScheduler)
    assert warmup_cosine_factor(0, 10, 60, 1e-3) == 1e-3 and warmup_cosine_factor(9, 10, 60, 1e-3) == 1e-3
    assert warmup_cosine_factor(10, 10, 60, 1e-3) == 1.0
    assert math.isclose(warmup_cosine_factor(40, 10, 60, 1e-3), 0.5 * (1 + math.cos(math.pi * 30 / 60)))


def test_bad_configuration_is_refused(tiny_clip):
    with pytest.raises(ValueError, match="variant"):
        PromptTuningClassifier(tiny_clip, variant="cavpt_only")
    with pytest.raises(ValueError, match="aux_targets"):
        PromptTuningClassifier(tiny_clip, aux_targets="mine")
    with pytest.raises(ValueError, match="context vectors do not fit"):
        model = make_model(tiny_clip, "coop", context_length=14)  # vpg-tiny's context is 16 tokens
        model.text_features()


def test_text_context_and_aux_classifier_size(tiny_clip):
    ctx = TextContext(4, TINY["text_width"])
    tokens = make_model(tiny_clip, "coop").tokenizer([f"{n}." for n in NAMES])
    feats = ctx(tiny_clip, tokens)
    emb, eot = tiny_clip.splice_context(tokens, ctx.context)
    assert torch.allclose(feats, tiny_clip.forward_text(embeddings=emb, eot_index=eot).pooled)
    gen = ClassAwarePrompts(8, 16)
    assert gen.classifier is None
    gen.set_num_classes(5)
    with pytest.raises(ValueError, match="5 classes"):
        gen.set_num_classes(6)
