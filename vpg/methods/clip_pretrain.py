"""Contrastive CLIP pretraining (symmetric InfoNCE, learnable temperature) - makes the tiny CLIP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vpg.clip import CLIP
from vpg.losses import clip_contrastive_loss

from .base import VPGModule
from .optim import decay_groups, warmup_cosine


class CLIPPretraining(VPGModule):
    """Train every weight of ``clip`` on image-caption pairs. Validation: retrieval R@1.

    Args:
        clip: the model to train (build it with ``frozen: false``).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay per step.
        betas, eps: AdamW's; the defaults are the CLIP paper's (0.9, 0.98) and 1e-6. The tiny CLIP
            trains from scratch for a few thousand steps, where PyTorch's (0.9, 0.999) and 1e-8 learn
            shape sooner (README: tiny CLIP, optimizer probe).
        max_logit_scale: CLIP clamps exp(logit_scale) at 100.
        init_logit_scale: set exp(logit_scale) to this before training (still learnable); None keeps
            the model's (CLIP's 1/0.07). From scratch on vpg-shapes a sharper start learns shape
            sooner (README: tiny CLIP, temperature probe).
    """

    trains_clip = True

    def __init__(self, clip: CLIP, lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 200,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                 max_logit_scale: float = 100.0, init_logit_scale: float | None = None):
        super().__init__(clip)
        self.save_hyperparameters()
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.betas, self.eps = (float(betas[0]), float(betas[1])), eps
        self.max_log_scale = math.log(max_logit_scale)
        if init_logit_scale is not None:
            if not 0 < init_logit_scale <= max_logit_scale:
                raise ValueError(f"init_logit_scale={init_logit_scale} must be in (0, max_logit_scale={max_logit_scale}]")
            with torch.no_grad():
                self.clip.logit_scale.fill_(math.log(init_logit_scale))
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        img, txt, scale = self.clip(batch["image"], batch["text"])
        loss = clip_contrastive_loss(img, txt, scale)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():  # CLIP's clamp of the temperature
            self.clip.logit_scale.clamp_(0, self.max_log_scale)

    def validation_step(self, batch, batch_idx):
        img = F.normalize(self.clip.encode_image(batch["image"]), dim=-1)
        txt = F.normalize(self.clip.encode_text(batch["text"]), dim=-1)
        self._val.append((img, txt, batch["caption_image"] + sum(v[0].shape[0] for v in self._val)))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        img = torch.cat([v[0] for v in self._val])  # (I, E)
        txt = torch.cat([v[1] for v in self._val])  # (T, E)
        owner = torch.cat([v[2] for v in self._val])  # (T,) image row of each caption
        self._val.clear()
        sim = img @ txt.t()  # (I, T)
        i2t = (owner[sim.argmax(dim=1)] == torch.arange(img.shape[0], device=sim.device)).float().mean()
        t2i = (sim.argmax(dim=0) == owner).float().mean()
        # Under DDP each rank ranks within its own shard; the logged value is the mean over ranks.
        self.log("val/i2t_r@1", i2t, prog_bar=True, sync_dist=True)
        self.log("val/t2i_r@1", t2i, sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(decay_groups(self.clip, self.weight_decay), lr=self.lr, betas=self.betas, eps=self.eps)
        total = self.trainer.estimated_stepping_batches
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": warmup_cosine(opt, self.warmup_steps, total), "interval": "step"}}
