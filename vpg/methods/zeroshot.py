"""Zero-shot CLIP classification with prompt templates (the baseline every method compares with)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from vpg.clip import CLIP

from .base import VPGModule


class ZeroShotClassifier(VPGModule):
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

    def setup(self, stage: str) -> None:
        names = self._class_names or self.trainer.datamodule.class_names
        self.class_names = list(names)
        n = len(self.class_names)
        top5 = min(5, n)
        for split in ("val", "test"):  # separate metric objects per stage
            self.metrics[f"{split}_top1"] = MulticlassAccuracy(n, top_k=1, average="micro")
            self.metrics[f"{split}_top5"] = MulticlassAccuracy(n, top_k=top5, average="micro")
        self.classifier = self.build_classifier(self.class_names)

    @torch.no_grad()
    def build_classifier(self, class_names: list[str]) -> torch.Tensor:
        weights = []
        for name in class_names:
            tokens = self.tokenizer([t.format(name) for t in self.templates]).to(self.device)
            feats = F.normalize(self.clip.encode_text(tokens), dim=-1).mean(0)
            weights.append(F.normalize(feats, dim=-1))
        return torch.stack(weights)  # (C, E)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.clip.encode_image(images), dim=-1)  # (B, E)
        return self.clip.logit_scale.exp() * img @ self.classifier.to(img.dtype).t()  # (B, C)

    def _eval_step(self, batch, split: str):
        logits = self(batch["image"])
        self.metrics[f"{split}_top1"].update(logits, batch["label"])
        self.metrics[f"{split}_top5"].update(logits, batch["label"])
        self.log(f"{split}/acc@1", self.metrics[f"{split}_top1"], on_epoch=True, prog_bar=True)
        self.log(f"{split}/acc@5", self.metrics[f"{split}_top5"], on_epoch=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch["image"]).softmax(-1)
