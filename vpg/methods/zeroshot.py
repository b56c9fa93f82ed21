"""Zero-shot CLIP classification with prompt templates (the baseline every method compares with)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vpg.clip import CLIP

from .base import ClassifierEval, VPGModule


class ZeroShotClassifier(ClassifierEval, VPGModule):
    """Class text features = mean of normalised template features; logits = scale x cosine.

    Args:
        clip: the (frozen) CLIP core.
        templates: prompt templates with one ``{}`` for the class name.
        class_names: override the DataModule's class names (else read from it).
    """

    def __init__(self, clip: CLIP, templates: list[str] | None = None, class_names: list[str] | None = None):
        super().__init__(clip)
        self.save_hyperparameters()
        self.templates = list(templates or ["a photo of a {}."])
        self._class_names = class_names
        self.register_buffer("classifier", torch.empty(0), persistent=False)
        self.metrics = torch.nn.ModuleDict()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.clip.encode_image(images), dim=-1)  # (B, E)
        return self.clip.logit_scale.exp() * img @ self.classifier.to(img.dtype).t()  # (B, C)

    def batch_logits(self, batch: dict) -> torch.Tensor:
        return self(batch["image"])
