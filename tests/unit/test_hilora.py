"""HiLoRA adapter bookkeeping (vpg.callbacks.hilora) on the vpg-tiny CLIP: targets, merge ==
unmerged outputs, re-freezing after a merge, stage sequence, checkpoint round trip, the callback."""

import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vpg.callbacks.hilora import CHECKPOINT_KEY, HiLoRAScheduler, LoRAStage, StagedLoRA, target_regex
from vpg.clip import create_model, get_tokenizer
from vpg.methods.hivg import HiVG

SMALL = dict(width=32, encoder_layers=1, encoder_heads=2, encoder_ffn=64, bridge_heads=2, dropout=0.0)
STAGES = [LoRAStage(1, 1e-3), LoRAStage(1, 5e-4, [0], [1]), LoRAStage(1, 2.5e-4, [0, 1], [1])]


def tiny_hivg() -> HiVG:
    torch.manual_seed(0)
    return HiVG(create_model("vpg-tiny"), **SMALL).eval()


def inputs():
    torch.manual_seed(3)
    return torch.randn(2, 3, 32, 32), get_tokenizer("vpg-tiny")(["the red circle", "a blue square"])


def randomise_adapters(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)


def clip_trainable(model) -> list[str]:
    return [n for n, p in model.clip.named_parameters() if p.requires_grad and "lora_" not in n]


def test_target_regex_selects_exactly_the_adapted_projections():
    clip = create_model("vpg-tiny")
    regex = target_regex([1], [0])
    names = {n for n, _ in clip.named_modules() if re.fullmatch(regex, n)}
    expected = {f"model.visual.transformer.resblocks.1.{t}" for t in
                ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.c_fc")}
    expected |= {e.replace("visual.transformer.resblocks.1", "transformer.resblocks.0") for e in expected}
    assert names == expected
    assert target_regex([], []) is None


def test_merged_and_unmerged_outputs_are_equal_and_clip_is_frozen_after_merge():
    model = tiny_hivg()
    images, tokens = inputs()
    original = {n: p.clone() for n, p in model.clip.named_parameters()}
    model.start_lora_stage(1, STAGES[1], rank=4, alpha=2)
    lora = model.lora_parameters()
    assert lora and all(p.requires_grad for p in lora) and not clip_trainable(model)
    # r*(in+out) per Linear: q, k, v, out (32->32) and c_fc (32->128) in vision block 0 and text block 1
    assert sum(p.numel() for p in lora) == 2 * (4 * 4 * 64 + 4 * (32 + 128))
    randomise_adapters(model)
    with torch.no_grad():
        unmerged = model(images, tokens)["box"]
    model.merge_live_adapter()
    with torch.no_grad():
        merged = model(images, tokens)["box"]
    assert torch.allclose(unmerged, merged, atol=1e-5)
    assert not model.lora_parameters() and not clip_trainable(model)
    changed = {n for n, p in model.clip.named_parameters() if not torch.equal(p, original[n])}
    assert "model.visual.transformer.resblocks.0.attn.q_proj.weight" in changed
    assert not any(".resblocks.1." in n and "visual" in n for n in changed)  # block 1 was not adapted


class _MHAHost(StagedLoRA, nn.Module):
    """A stand-in 'CLIP' with an nn.MultiheadAttention, the layer PEFT 0.21 leaves trainable after a merge."""

    def __init__(self):
        super().__init__()
        self.clip = nn.Sequential()
        self.clip.add_module("attn", nn.MultiheadAttention(8, 2, batch_first=True))
        self.clip.requires_grad_(False)
        self.init_staged_lora(1e-3)


def test_merge_refreezes_multihead_attention_weights():
    from peft import LoraConfig, LoraModel

    bare = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True)).requires_grad_(False)
    LoraModel(bare, LoraConfig(r=2, target_modules=["0"]), "a").merge_and_unload()
    leaked_by_peft = [n for n, p in bare.named_parameters() if p.requires_grad]  # the quirk, for the record
    host = _MHAHost()  # its module name is not a CLIP block: wrap it by name instead of by spec
    host._set_wrapper(LoraModel(host.clip, LoraConfig(r=2, target_modules=["attn"]), "s1"))
    assert any("lora_" in n for n, _ in host.clip.named_parameters())
    host.merge_live_adapter()
    assert not [n for n, p in host.clip.named_parameters() if p.requires_grad], leaked_by_peft


def test_stages_merge_then_start_a_fresh_adapter():
    model = tiny_hivg()
    images, tokens = inputs()
    model.start_lora_stage(1, STAGES[1], rank=4, alpha=2)
    randomise_adapters(model)
    with torch.no_grad():
        stage1 = model(images, tokens)["box"]
    model.start_lora_stage(2, STAGES[2], rank=4, alpha=2)
    names = {n for n, _ in model.clip.named_parameters() if "lora_" in n}
    assert names and all(".stage2." in n for n in names)
    assert any("visual.transformer.resblocks.1." in n for n in names)
    with torch.no_grad():  # a fresh adapter (B = 0) on the merged weights changes nothing yet
        assert torch.allclose(model(images, tokens)["box"], stage1, atol=1e-5)
    assert (model.hilora_stage, model.hilora_lr, model.hilora_epochs) == (2, 2.5e-4, 1)
    assert not clip_trainable(model)


def test_adapter_init_does_not_depend_on_the_global_rng():
    a, b = tiny_hivg(), tiny_hivg()
    torch.manual_seed(123)
    a.start_lora_stage(1, STAGES[1], rank=4)
    torch.manual_seed(456)
    b.start_lora_stage(1, STAGES[1], rank=4)
    for pa, pb in zip(a.lora_parameters(), b.lora_parameters()):
        assert torch.equal(pa, pb)
    c = tiny_hivg()
    c.start_lora_stage(1, STAGES[1], rank=4, seed=7)
    assert not torch.equal(a.lora_parameters()[0], c.lora_parameters()[0])


def test_checkpoint_restores_stage_merged_weights_and_live_adapter():
    model = tiny_hivg()
    images, tokens = inputs()
    model.start_lora_stage(1, STAGES[1], rank=4, alpha=2)
    randomise_adapters(model)
    model.start_lora_stage(2, STAGES[2], rank=4, alpha=2)
    randomise_adapters(model)
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint[CHECKPOINT_KEY]["stage"] == 2 and checkpoint[CHECKPOINT_KEY]["adapter"]["name"] == "stage2"
    restored = tiny_hivg()
    restored.on_load_checkpoint(checkpoint)  # Lightning's order: hook, then load_state_dict
    restored.load_state_dict(checkpoint["state_dict"], strict=True)
    with torch.no_grad():
        assert torch.allclose(restored(images, tokens)["box"], model(images, tokens)["box"], atol=1e-6)
    assert restored.hilora_stage == 2 and restored.hilora_lr == 2.5e-4
    assert {n for n, _ in restored.named_parameters() if "lora_" in n} == \
        {n for n, _ in model.named_parameters() if "lora_" in n}
    assert not clip_trainable(restored)


def fake_trainer(epoch: int):
    calls = []
    strategy = SimpleNamespace(setup_optimizers=lambda trainer: calls.append(trainer.current_epoch))
    return SimpleNamespace(current_epoch=epoch, strategy=strategy, world_size=1, max_epochs=3), calls


def test_scheduler_walks_the_stages_and_rebuilds_the_optimizer():
    scheduler = HiLoRAScheduler([{"epochs": 2, "lr": 1e-3}, {"epochs": 1, "lr": 5e-4, "vision_blocks": [0]}],
                                rank=4, alpha=2)
    assert [scheduler.stage_at(e) for e in range(5)] == [0, 0, 1, 1, 1]
    model = tiny_hivg()
    trainer, calls = fake_trainer(0)
    scheduler.setup(trainer, model, "fit")
    assert model.hilora_lr == 1e-3 and model.hilora_epochs == 2
    for epoch in range(3):
        trainer.current_epoch = epoch
        scheduler.on_train_epoch_start(trainer, model)
    assert calls == [0, 2]  # warm-up at epoch 0, stage 1 at epoch 2; nothing in between
    assert model.hilora_stage == 1 and model.lora_parameters()
    assert scheduler.state_dict()["stage"] == 1
    # a plain one-round LoRA is the same callback with one stage over every block
    one_round = HiLoRAScheduler([{"epochs": 3, "lr": 1e-4, "vision_blocks": [0, 1], "text_blocks": [0, 1]}], rank=4)
    other = tiny_hivg()
    trainer, calls = fake_trainer(0)
    one_round.on_train_epoch_start(trainer, other)
    assert {n.split(".resblocks.")[1].split(".")[0] for n, _ in other.clip.named_parameters() if "lora_" in n} == {"0", "1"}
    with pytest.raises(TypeError, match="StagedLoRA"):
        one_round.on_train_epoch_start(trainer, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="at least 1 epoch"):
        LoRAStage(0, 1e-3)
