"""TaI-DPT: losses by hand, local aggregation vs a loop, caption/image features in one space,
the ResNet (RN50-style) image tower of the core, the prompt learner, the caption DataModule."""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vpg.clip import create_model, get_tokenizer
from vpg.data.text import CaptionTextDataModule
from vpg.errors import ConfigurationError
from vpg.losses.ranking import asymmetric_loss, bce_loss, multilabel_loss, ranking_loss
from vpg.methods.tai_dpt import TaIDPT
from vpg.modules.dpt import DualPromptLearner, dual_scores, local_aggregate

CLASSES = ["circle", "ring", "square", "star"]


# ------------------------------------------------------------------ losses


def test_ranking_loss_by_hand():
    scores = torch.tensor([[2.0, 0.5, 1.8, -1.0], [0.0, 0.3, 0.2, 0.1]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    # sample 0: positives {0: 2.0, 3: -1.0}, negatives {1: 0.5, 2: 1.8}
    #   i=0: max(0, 1-2+0.5)=0, max(0, 1-2+1.8)=0.8; i=3: 1+1+0.5=2.5, 1+1+1.8=3.8 -> 7.1
    # sample 1: positive {2: 0.2}, negatives {0: 0.0, 1: 0.3, 3: 0.1}: 0.8 + 1.1 + 0.9 = 2.8
    assert ranking_loss(scores, targets).item() == pytest.approx((7.1 + 2.8) / 2, abs=1e-6)
    assert ranking_loss(scores, targets, margin=0.0).item() == pytest.approx((0 + 0 + 1.5 + 2.8 + 0.1) / 2)
    # no negatives (all positive) or no positives: nothing to rank
    assert ranking_loss(scores[:1], torch.ones(1, 4)).item() == 0.0
    assert ranking_loss(scores[:1], torch.zeros(1, 4)).item() == 0.0


def test_bce_and_asl():
    torch.manual_seed(0)
    scores, targets = torch.randn(5, 6), (torch.rand(5, 6) > 0.5).float()
    expected = -(targets * F.logsigmoid(scores) + (1 - targets) * F.logsigmoid(-scores)).sum(1).mean()
    assert bce_loss(scores, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    # ASL without focusing and shifting is BCE
    assert asymmetric_loss(scores, targets, 0.0, 0.0, 0.0).item() == pytest.approx(expected.item(), rel=1e-4)
    # one negative by hand: p = sigmoid(0) = 0.5, p_m = 0.45, loss = 0.45^4 * -log(0.55)
    one = asymmetric_loss(torch.zeros(1, 1), torch.zeros(1, 1)).item()
    assert one == pytest.approx(0.45**4 * -math.log(0.55), rel=1e-5)
    # an easy negative below the clip contributes nothing
    assert asymmetric_loss(torch.tensor([[-5.0]]), torch.zeros(1, 1)).item() == 0.0
    with pytest.raises(ValueError, match="loss must be one of"):
        multilabel_loss("hinge", scores, targets)


# ------------------------------------------------------------------ local aggregation


def test_local_aggregate_matches_a_loop():
    torch.manual_seed(0)
    similarity = torch.randn(3, 7, 5)  # (N, L, C)
    valid = torch.rand(3, 7) > 0.3
    valid[:, 0] = True
    tau = 0.02
    got = local_aggregate(similarity, valid, tau)
    for n in range(3):
        for c in range(5):
            values = [similarity[n, j, c].item() for j in range(7) if valid[n, j]]
            weights = [math.exp(v / tau - max(values) / tau) for v in values]
            expected = sum(w * v for w, v in zip(weights, values)) / sum(weights)
            assert got[n, c].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # masked tokens do not count, whatever their value
    louder = similarity.masked_fill(~valid.unsqueeze(-1), 100.0)
    assert torch.allclose(local_aggregate(louder, valid, tau), got)
    # τ -> large: the plain mean; τ -> small: the max
    assert torch.allclose(local_aggregate(similarity, None, 1e4), similarity.mean(1), atol=1e-3)
    assert torch.allclose(local_aggregate(similarity, None, 1e-4), similarity.amax(1), atol=1e-4)


# ------------------------------------------------------------------ ResNet tower in the core


@pytest.fixture(scope="module")
def tiny_rn():
    torch.manual_seed(0)
    return create_model("vpg-tiny-rn").eval()


def test_resnet_encode_image_equals_open_clip(tiny_rn):
    ref = open_clip.create_model("vpg-tiny-rn")
    ref.load_state_dict(tiny_rn.open_clip_state_dict())
    ref.eval()
    images = torch.randn(3, 3, 64, 64)
    tokens = get_tokenizer("vpg-tiny-rn")(["a dog", "two cats on a sofa"])
    with torch.no_grad():
        assert (tiny_rn.encode_image(images) - ref.encode_image(images)).abs().max() < 1e-5
        assert (tiny_rn.encode_text(tokens) - ref.encode_text(tokens)).abs().max() < 1e-5
        out = tiny_rn.forward_image(images, dense="values")
    assert tiny_rn.vision_kind == "resnet" and out.dense.shape == (3, 4, tiny_rn.embed_dim)  # 64 px: 2x2


def test_resnet_value_path_reproduces_the_pool():
    """With the query projection zeroed the pool attends uniformly, so its output is the mean of
    the per-position value-path features: the pooled slot's (mean of x + pos_0) and the dense ones."""
    torch.manual_seed(1)
    core = create_model("vpg-tiny-rn").eval()
    pool = core.model.visual.attnpool
    with torch.no_grad():
        pool.q_proj.weight.zero_()
        pool.q_proj.bias.zero_()
        images = torch.randn(2, 3, 64, 64)
        out = core.forward_image(images, dense="values")
        v = core.model.visual
        fmap = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images))))).flatten(2).transpose(1, 2)  # (2, 4, C)
        slot = pool.c_proj(pool.v_proj(fmap.mean(1) + pool.positional_embedding[0]))  # (2, E)
        dense_by_hand = pool.c_proj(pool.v_proj(fmap + pool.positional_embedding[1:]))  # (2, 4, E)
    assert torch.allclose(out.dense, dense_by_hand, atol=1e-5)
    assert torch.allclose(out.pooled, (slot + out.dense.sum(1)) / 5, atol=1e-5)


def test_resnet_other_sizes_tokens_and_limits(tiny_rn):
    with torch.no_grad():
        out = tiny_rn.forward_image(torch.randn(1, 3, 96, 96), dense="tokens")  # 3x3: resampled positions
        plain = tiny_rn.forward_image(torch.randn(1, 3, 64, 64), dense="tokens")
    assert out.dense.shape == (1, 9, tiny_rn.embed_dim) and plain.dense.shape == (1, 4, tiny_rn.embed_dim)
    with pytest.raises(NotImplementedError, match="ResNet image tower"):
        tiny_rn.forward_image(torch.randn(1, 3, 64, 64), hidden_layers=[0])
    with pytest.raises(NotImplementedError, match="needs a ViT"):
        tiny_rn.decompose_image_cls(torch.randn(1, 3, 64, 64))
    core = create_model("vpg-tiny-rn")
    core.train()  # frozen BatchNorm stays in eval mode: statistics are not overwritten
    bn = core.model.visual.bn1
    before = bn.running_mean.clone()
    core.forward_image(torch.randn(2, 3, 64, 64) + 3)
    assert not bn.training and torch.equal(bn.running_mean, before)


# ------------------------------------------------------------------ prompts and scores


def test_prompt_learner_features_and_gradients(tiny_clip, tiny_tokenizer):
    torch.manual_seed(0)
    learner = DualPromptLearner(tiny_clip.text_width, n_ctx=4)
    assert set(learner.branches) == {"global", "local"}
    assert learner.contexts["global"].std().item() == pytest.approx(0.02, rel=0.5)
    names = tiny_tokenizer([f"{c}." for c in CLASSES])
    feats = learner.class_features(tiny_clip, names)
    assert feats["global"].shape == feats["local"].shape == (4, tiny_clip.embed_dim)
    assert not torch.allclose(feats["global"], feats["local"])  # two different prompts
    feats["global"].sum().backward()
    assert learner.contexts["global"].grad.abs().sum() > 0 and learner.contexts["local"].grad is None
    assert all(p.grad is None for p in tiny_clip.parameters())
    csc = DualPromptLearner(tiny_clip.text_width, n_ctx=4, branches=("global",), class_specific=True, num_classes=4)
    assert csc.contexts["global"].shape == (4, 4, tiny_clip.text_width)
    assert csc.class_features(tiny_clip, names)["global"].shape == (4, tiny_clip.embed_dim)


@pytest.fixture()
def model(tiny_clip):
    torch.manual_seed(0)
    m = TaIDPT(tiny_clip, n_ctx=4)
    m.set_classes(CLASSES)
    return m


def test_caption_and_image_paths_give_features_in_one_space(model, tiny_clip, tiny_tokenizer):
    tokens = tiny_tokenizer(["a red circle", "two blue squares and a star"])
    u, words, valid = model.caption_features(tokens)
    g, dense, _ = model.image_features(torch.randn(2, 3, 32, 32))
    assert u.shape == g.shape == (2, tiny_clip.embed_dim)
    assert words.shape[-1] == dense.shape[-1] == tiny_clip.embed_dim
    assert dense.shape == (2, 16, tiny_clip.embed_dim)  # 4x4 patches
    # the caption's local features are in the global one's space: the EOT token's is u itself
    eot = tiny_clip.eot_index(tokens)
    assert torch.allclose(words[torch.arange(2), eot], u)
    assert valid.sum(1).tolist() == (eot + 1).tolist()  # SOT .. EOT, padding masked out
    # ViT "tokens" dense features go through the image embedding's own ln_post + proj
    model.dense = "tokens"
    out = tiny_clip.forward_image(torch.randn(1, 3, 32, 32), dense="tokens")
    assert torch.allclose(out.dense, tiny_clip._project_image(out.tokens[:, 1:]))
    # one set of class features scores both
    classes = model.class_features()
    for batch in ({"text": tokens}, {"image": torch.randn(2, 3, 32, 32)}):
        out = model.scores(batch, classes)
        assert out["global"].shape == out["local"].shape == out["final"].shape == (2, len(CLASSES))
        assert torch.allclose(out["final"], 0.5 * out["global"] + 0.5 * out["local"])
        assert out["global"].abs().max() <= 4.0 + 1e-5  # 4 x cosine


def test_scores_by_hand(model, tiny_tokenizer):
    tokens = tiny_tokenizer(["a ring and a star"])
    classes = model.class_features()
    out = model.scores({"text": tokens}, classes, training=True)
    u, words, valid = model.caption_features(tokens)
    g = F.normalize(classes["global"], dim=-1)
    assert torch.allclose(out["global"], 4 * F.normalize(u, dim=-1) @ g.t(), atol=1e-6)
    sim = F.normalize(words, dim=-1) @ F.normalize(classes["local"], dim=-1).t()  # (1, L, C)
    assert torch.allclose(out["local"], 4 * local_aggregate(sim, valid, 1 / 50), atol=1e-6)
    got = dual_scores(u, words, valid, classes["global"], None, 0.02)
    assert set(got) == {"global"}


def test_training_step_loss_and_trainable_parameters(model, tiny_tokenizer):
    batch = {"text": tiny_tokenizer(["a ring", "a star and a circle"]),
             "labels": torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 1]])}
    model.log = lambda *a, **k: None  # no trainer here
    loss = model.training_step(batch, 0)
    out = model.scores(batch, model.class_features(), training=True)
    expected = ranking_loss(out["global"], batch["labels"]) + ranking_loss(out["local"], batch["labels"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.contexts.global", "prompt_learner.contexts.local"}
    assert all(model.prompt_learner.contexts[b].grad.abs().sum() > 0 for b in ("global", "local"))


def test_variants(tiny_clip, tiny_tokenizer):
    zero = TaIDPT(tiny_clip, prompts="handcrafted", inference="dual")
    zero.set_classes(CLASSES)
    assert not zero.has_trainable_parameters()
    classes = zero.class_features()
    assert torch.equal(classes["global"], classes["local"])  # "a photo of a {}." for both branches
    expected = zero.class_text_features(CLASSES, ["a photo of a {}."])
    assert torch.allclose(classes["global"], expected)
    single = TaIDPT(tiny_clip, branches="global", n_ctx=4)
    single.set_classes(CLASSES)
    out = single.scores({"image": torch.randn(1, 3, 32, 32)}, single.class_features())
    assert set(out) == {"global", "final"} and torch.equal(out["final"], out["global"])
    with pytest.raises(ConfigurationError, match="no local branch"):
        TaIDPT(tiny_clip, branches="global", inference="dual")
    with pytest.raises(ConfigurationError, match="loss must be one of"):
        TaIDPT(tiny_clip, loss="hinge")


def test_warmup_then_cosine_schedule(model):
    class FakeTrainer:
        max_epochs = 5

    model._trainer = FakeTrainer()
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    hp = model.hparams
    assert lrs[0] == pytest.approx(hp.warmup_lr)  # the warm-up epoch
    assert lrs[1] == pytest.approx(hp.lr)  # cosine starts at the base lr
    assert lrs[1:] == sorted(lrs[1:], reverse=True)
    assert lrs[3] == pytest.approx(hp.lr * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert optimizer.param_groups[0]["momentum"] == 0.9


# ------------------------------------------------------------------ caption DataModule


def test_caption_datamodule_holds_out_rows_and_counts_drops(tmp_path, tiny_tokenizer):
    import datasets

    rows = [{"image_id": str(i), "captions": [f"a circle number {i}", f"two rings {i}", "just a background"]}
            for i in range(20)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "caps.parquet"))
    dm = CaptionTextDataModule(str(tmp_path / "caps.parquet"), classes="shapes", val_fraction=0.25,
                               templates=["a photo of a {}."], batch_size=8, seed=3)
    dm.attach(None, tiny_tokenizer)
    dm.setup("fit")
    stats = dm.stats
    assert stats["train_matched"] == 30 and stats["train_dropped"] == 15  # 15 rows x (2 matched, 1 not)
    assert stats["val_captions"] == 10 and stats["val_dropped"] == 5
    assert stats["per_class"] == {"circle": 15, "ring": 15}
    train_ids = {t.split()[-1] for t in dm.train_set.texts if t[-1].isdigit()}
    val_ids = {t.split()[-1] for t in dm.val_set.texts}
    assert len(val_ids) == 5 and not train_ids & val_ids  # whole rows held out
    assert len(dm.train_set) == 30 + 8  # + one template sentence per class
    batch = next(iter(dm.val_dataloader()))
    assert batch["text"].shape == (8, 16) and batch["labels"].shape == (8, 8)
    circle = dm.class_names.index("circle")
    assert all(batch["labels"][i, circle] == ("circle" in s) for i, s in enumerate(batch["sentences"]))
    with pytest.raises(ConfigurationError, match="val_fraction"):
        CaptionTextDataModule("x.parquet", classes="shapes", val_fraction=0.0)


def test_ensemble_fuses_scores_with_another_checkpoint(tiny_clip, tmp_path):
    torch.manual_seed(0)
    other = TaIDPT(tiny_clip, branches="global", n_ctx=4)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}, path)
    model = TaIDPT(tiny_clip, n_ctx=4, ensemble_checkpoint=str(path), ensemble_weight=0.25)
    assert "ensemble_checkpoint" not in model.hparams  # a test-time choice, never restored from a checkpoint
    model.set_classes(CLASSES)
    model.__dict__["_ensemble"] = model._load_ensemble(str(path))
    assert "_ensemble" not in dict(model.named_children())
    other.set_classes(CLASSES)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model._cache_eval_classes()
        fused = model.eval_scores({"image": images})
        expected = 0.75 * fused["own"] + 0.25 * other(images)
    assert torch.allclose(fused["final"], expected, atol=1e-6)
