"""CLIPPretraining: the temperature it starts from, the clamp it keeps, the optimizer it builds."""

import math
from types import SimpleNamespace

import pytest
import torch

from vpg.clip import CLIP
from vpg.methods import CLIPPretraining


def test_init_logit_scale_sets_the_learnable_temperature():
    module = CLIPPretraining(CLIP("vpg-tiny", frozen=False), init_logit_scale=50.0)
    assert module.clip.logit_scale.exp().item() == pytest.approx(50.0, rel=1e-5)
    assert module.clip.logit_scale.requires_grad


def test_default_keeps_clips_temperature():
    module = CLIPPretraining(CLIP("vpg-tiny", frozen=False))
    assert module.clip.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-4)


def test_init_logit_scale_above_the_clamp_is_rejected():
    with pytest.raises(ValueError, match="init_logit_scale=200.0 must be in"):
        CLIPPretraining(CLIP("vpg-tiny", frozen=False), init_logit_scale=200.0)


def test_clamp_after_each_batch():
    module = CLIPPretraining(CLIP("vpg-tiny", frozen=False))
    with torch.no_grad():
        module.clip.logit_scale.fill_(math.log(500.0))
    module.on_train_batch_end(None, None, 0)
    assert module.clip.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)


def test_adamw_takes_the_configured_betas_and_eps():
    module = CLIPPretraining(CLIP("vpg-tiny", frozen=False), betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100)  # what configure_optimizers reads
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    default = CLIPPretraining(CLIP("vpg-tiny", frozen=False))
    default._trainer = SimpleNamespace(estimated_stepping_batches=100)
    assert default.configure_optimizers()["optimizer"].defaults["betas"] == (0.9, 0.98)  # the CLIP paper's
