"""What every vpg method shares: the CLIP core, preprocessing, trainable-parameter bookkeeping."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from torch import Tensor

from vpg.clip import CLIP, class_text_features, get_tokenizer
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

    def class_text_features(self, class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
        """(C, E): normalised mean of each class's normalised template features (CLIP's prompt ensembling)."""
        return class_text_features(self.clip, class_names, templates, self.tokenizer)

    # -- evaluation splits
    def test_split_names(self) -> list[str]:
        """Names of the DataModule's test splits, in dataloader order (["test"] without a DataModule)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "test_split_names", None) or getattr(dm, "test_splits", None) or ["test"]
        return [str(n) for n in names]

    def split_name(self, stage: str, dataloader_idx: int = 0) -> str:
        """The split a validation / test dataloader index reads (log keys carry it)."""
        if stage == "val":
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            return str(getattr(dm, "val_split", None) or "val")
        names = self.test_split_names()
        return names[dataloader_idx] if dataloader_idx < len(names) else f"test{dataloader_idx}"

    def prediction_path(self) -> Path:
        """Where `vpg predict` writes files: ``prediction_dir`` if the method has one set, else
        <log_dir>/predictions."""
        chosen = getattr(self, "prediction_dir", None)
        return Path(chosen or Path(self.trainer.log_dir or ".") / "predictions")

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


class ClassifierEval:
    """Mixin for zero-shot classifiers over class text features: top-1/top-5 per stage, logged
    as ``val/acc@1`` ... Subclasses set ``templates`` / ``_class_names`` and implement
    ``batch_logits(batch) -> (B, C)``; class names default to the DataModule's."""

    def setup_classifier(self) -> None:
        from vpg.metrics import TopKAccuracy

        names = self._class_names or self.trainer.datamodule.class_names
        self.class_names = list(names)
        n = len(self.class_names)
        for split in ("val", "test"):  # separate metric objects per stage
            self.metrics[f"{split}_top1"] = TopKAccuracy(n, k=1)
            self.metrics[f"{split}_top5"] = TopKAccuracy(n, k=min(5, n))
        self.classifier = self.class_text_features(self.class_names, self.templates)

    def setup(self, stage: str) -> None:
        self.setup_classifier()

    def batch_logits(self, batch: dict) -> Tensor:
        raise NotImplementedError

    def _eval_step(self, batch: dict, split: str) -> None:
        logits = self.batch_logits(batch)
        for k in ("top1", "top5"):
            self.metrics[f"{split}_{k}"].update(logits, batch["label"])
        self.log(f"{split}/acc@1", self.metrics[f"{split}_top1"], on_epoch=True, prog_bar=True)
        self.log(f"{split}/acc@5", self.metrics[f"{split}_top5"], on_epoch=True)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self.batch_logits(batch).softmax(-1)


class GroundingEval:
    """Mixin for box-predicting methods (REC): Acc@``iou_threshold`` per stage and test split,
    logged as ``val/acc@0.5`` and ``test/acc@0.5/<split>`` from separate metric objects.
    Subclasses set ``iou_threshold`` and a ``metrics`` ModuleDict, call :meth:`setup_grounding`
    from ``setup`` and implement ``_eval_step(batch, batch_idx, dataloader_idx, stage)``."""

    def setup_grounding(self) -> None:
        from vpg.metrics import GroundingAccuracy

        self.metrics["val"] = GroundingAccuracy(self.iou_threshold)
        for name in self.test_split_names():
            self.metrics[f"test_{name}"] = GroundingAccuracy(self.iou_threshold)

    def _eval_step(self, batch: dict, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(batch, batch_idx, dataloader_idx, "test")

    def log_grounding(self, pred_boxes: Tensor, gold_boxes: Tensor, stage: str, split: str) -> None:
        """Update and log the Acc@t of one evaluation batch (boxes (B, 4) xyxy)."""
        from vpg.metrics import GroundingAccuracy

        key = "val" if stage == "val" else f"test_{split}"
        if key not in self.metrics:  # a split the DataModule did not announce at setup
            self.metrics[key] = GroundingAccuracy(self.iou_threshold).to(self.device)
        self.metrics[key].update(pred_boxes, gold_boxes)
        name = f"val/acc@{self.iou_threshold:g}" if stage == "val" else f"test/acc@{self.iou_threshold:g}/{split}"
        self.log(name, self.metrics[key], on_epoch=True, prog_bar=True, add_dataloader_idx=False,
                 batch_size=len(gold_boxes))
