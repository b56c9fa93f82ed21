"""Zero-shot classification accuracy watched during CLIP pretraining (is shape being learnt yet?)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from vpg.clip import class_text_features, get_tokenizer
from vpg.data.sources import load_split
from vpg.data.transforms import clip_transform
from vpg.errors import ConfigurationError


class ZeroShotMonitor(L.Callback):
    """Every ``every_n_train_steps`` steps (and when fit ends), zero-shot top-1 of ``pl_module.clip``.

    Classes are the split's ``label`` ClassLabel names, one prompt each (``template``); logged as
    ``zeroshot/top1`` at the global step and printed, so a pretraining run shows when the towers
    start to separate the classes instead of only retrieval R@1 at epoch ends.

    Args:
        dataset, split, options: the labelled split (a vpg source: hub id, path or ``vpg-shapes/cls``;
            options go to its loader, e.g. the shapes generator's ``seed``).
        template: prompt with one ``{}`` for the class name.
        every_n_train_steps: evaluation period in optimizer steps (0: only at fit end). Under DDP
            every rank scores the whole split (a few hundred images) and rank 0 logs it.
    """

    def __init__(self, dataset: str = "vpg-shapes/cls", split: str = "val", options: dict | None = None,
                 template: str = "a photo of a {}.", every_n_train_steps: int = 200):
        self.dataset, self.split, self.options = dataset, split, dict(options or {})
        self.template, self.every = template, every_n_train_steps
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._names: list[str] = []
        self._tokenizer = None
        self.history: list[tuple[int, float]] = []

    def _load(self, clip) -> None:
        rows = load_split(self.dataset, self.split, self.options)
        if "label" not in rows.column_names or not hasattr(rows.features["label"], "names"):
            raise ConfigurationError(f"ZeroShotMonitor: {self.dataset}:{self.split} needs a ClassLabel column 'label'")
        transform = clip_transform(clip)
        self._names = list(rows.features["label"].names)
        self._tokenizer = get_tokenizer(clip.name)
        self._images = torch.stack([transform(row["image"])[0] for row in rows])  # (N, 3, S, S)
        self._labels = torch.tensor(list(rows["label"]))  # (N,)

    @torch.no_grad()
    def evaluate(self, clip) -> float:
        if self._images is None:
            self._load(clip)
        was_training = clip.training
        clip.eval()
        device = next(clip.parameters()).device
        classes = class_text_features(clip, self._names, [self.template], self._tokenizer)  # (C, E)
        pred = torch.cat([(F.normalize(clip.encode_image(chunk.to(device)), dim=-1) @ classes.t()).argmax(-1).cpu()
                          for chunk in self._images.split(256)])  # (N,)
        clip.train(was_training)
        return (pred == self._labels).float().mean().item()

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        top1 = self.evaluate(pl_module.clip)
        self.history.append((trainer.global_step, top1))
        if trainer.is_global_zero:
            if trainer.logger is not None:
                trainer.logger.log_metrics({"zeroshot/top1": top1}, step=trainer.global_step)
            print(f"zero-shot top-1 ({self.dataset}:{self.split}) at step {trainer.global_step}: {top1:.3f}",
                  flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and (not self.history or self.history[-1][0] != step):
            self._record(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history or self.history[-1][0] != trainer.global_step:
            self._record(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(h) for h in state_dict.get("history", [])]
