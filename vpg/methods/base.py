"""What every vpg method shares: the CLIP core, preprocessing, trainable-parameter bookkeeping."""

from __future__ import annotations

import logging

import lightning as L
from torch import nn

from vpg.clip import CLIP, get_tokenizer
from vpg.data.transforms import clip_transform

log = logging.getLogger(__name__)


class VPGModule(L.LightningModule):
    """Base LightningModule. Subclasses receive their parts as typed constructor arguments.

    ``trains_clip``: whether the method updates CLIP's own weights (only CLIP pretraining does).
    Adapter parameters injected into CLIP (names containing ``lora_``) are not CLIP's own.
    """

    trains_clip: bool = False

    def __init__(self, clip: CLIP):
        super().__init__()
        self.clip = clip
        self.tokenizer = get_tokenizer(clip.name)

    # -- preprocessing the DataModule asks for
    def image_transform(self, train: bool):
        return clip_transform(self.clip)

    # -- trainable parameters
    def trainable_summary(self) -> dict[str, int]:
        """Trainable parameter count per top-level child (plus 'total')."""
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                top = name.split(".")[0]
                counts[top] = counts.get(top, 0) + p.numel()
        counts["total"] = sum(counts.values())
        return counts

    def has_trainable_parameters(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def check_frozen_backbone(self) -> None:
        """Refuse to train CLIP's own weights unless the method says it does."""
        if self.trains_clip:
            return
        leaked = [n for n, p in self.clip.named_parameters() if p.requires_grad and "lora_" not in n]
        if leaked:
            raise RuntimeError(f"{type(self).__name__} would train CLIP's frozen weights ({leaked[:3]}...); "
                               "freeze them or use a method that trains CLIP")

    def on_fit_start(self) -> None:
        self.check_frozen_backbone()
        summary = self.trainable_summary()
        log.info("trainable parameters: %s", summary)
        if self.logger is not None and hasattr(self.logger, "log_hyperparams"):
            self.logger.log_hyperparams({f"trainable/{k}": v for k, v in summary.items()})


def frozen(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module
