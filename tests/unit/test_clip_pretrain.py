"""CLIPPretraining: the temperature it starts from and the clamp it keeps."""

import math

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
