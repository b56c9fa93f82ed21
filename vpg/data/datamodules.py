"""LightningDataModules over Hugging Face datasets: one per task family, same schema for
vpg-shapes and real data (``vpg.data.schemas``).

The method (LightningModule) owns preprocessing: a DataModule asks the attached module
for ``image_transform(train)`` and ``tokenizer`` in ``setup``; tests and scripts may pass
``transform`` / ``tokenizer`` explicitly instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from vpg.errors import DataError

from .sources import load_split


class RowDataset(Dataset):
    """Map-style view of an HF dataset that turns each row into a sample with ``make``.

    Keys are row indices or ``(index, epoch)`` pairs from :class:`EpochSampler`, so random
    per-sample choices (which caption to train on) depend on (seed, epoch, index) only and a
    resumed run sees exactly the samples an uninterrupted one would.
    """

    def __init__(self, rows, make: Callable[[dict, int, int], dict]):
        self.rows, self.make = rows, make

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        return self.make(self.rows[index], index, epoch)


class EpochSampler(Sampler):
    """Shuffled order seeded by (seed, epoch); Lightning calls ``set_epoch`` every epoch."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + 7919 * self.epoch))
        else:
            order = torch.arange(self.size)
        return iter([(int(i), self.epoch) for i in order])


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for one sample's random choices, independent of loader order and workers."""
    return np.random.default_rng([seed, epoch, index])


class VPGDataModule(L.LightningDataModule):
    """Shared plumbing: sources, splits, column mapping, image resolution, loaders.

    Args:
        dataset: ``vpg-shapes/<name>``, a local dataset dir/file, or a hub id (see ``vpg.data.sources``).
        options: passed to the source (vpg-shapes generation parameters, hub ``name``...).
        train_split / val_split / test_splits: split names (None skips the stage).
        columns: schema column -> dataset column, for datasets whose names differ.
        image_root: directory joined to ``image_path`` for datasets that store paths.
        eval_dataset / eval_options: a different source for the val and test splits (train on
            one corpus, evaluate on another: caption-trained prompts tested on images).
        seed: seeds the training order and per-sample random choices (with the epoch).
    """

    def __init__(
        self,
        dataset: str,
        options: dict[str, Any] | None = None,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_splits: list[str] | None = None,
        columns: dict[str, str] | None = None,
        image_root: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        streaming: bool = False,
        eval_dataset: str | None = None,
        eval_options: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.dataset, self.options = dataset, dict(options or {})
        self.eval_dataset = eval_dataset
        self.eval_options = dict(eval_options if eval_options is not None else (options or {}))
        self.train_split, self.val_split = train_split, val_split
        self.test_splits = list(test_splits) if test_splits is not None else ["test"]
        self.columns = dict(columns or {})
        self.image_root = Path(image_root).expanduser() if image_root else None
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.streaming, self.seed = num_workers, streaming, seed
        self.transform: Callable | None = None
        self.train_transform: Callable | None = None
        self.tokenizer: Callable | None = None
        self.splits: dict[str, Any] = {}

    # -- preprocessing comes from the method
    def attach(self, transform: Callable, tokenizer: Callable | None = None,
               train_transform: Callable | None = None) -> VPGDataModule:
        self.transform, self.tokenizer = transform, tokenizer
        self.train_transform = train_transform or transform
        return self

    def _attach_from_module(self) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if self.transform is None and module is not None and hasattr(module, "image_transform"):
            self.attach(module.image_transform(train=False), getattr(module, "tokenizer", None),
                        module.image_transform(train=True))
        if self.transform is None:
            raise RuntimeError(f"{type(self).__name__}: no image transform; attach a method or call attach()")

    def load(self, split: str):
        if split not in self.splits:
            if self.eval_dataset and split != self.train_split:
                rows = load_split(self.eval_dataset, split, self.eval_options, self.streaming)
            else:
                rows = load_split(self.dataset, split, self.options, self.streaming)
            if self.columns:
                rows = rows.rename_columns({v: k for k, v in self.columns.items() if v != k})
            self.splits[split] = rows
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        self._attach_from_module()
        wanted = {"fit": [self.train_split, self.val_split], "validate": [self.val_split],
                  "test": self.test_splits, "predict": self.test_splits}.get(stage or "fit", [])
        for split in wanted:
            if split:
                self.load(split)

    def image(self, row: dict) -> Image.Image:
        if row.get("image") is not None:
            return row["image"]
        path = row.get("image_path")
        if path is None:
            raise KeyError(f"{self.dataset}: row has neither 'image' nor 'image_path'")
        if self.image_root is None:
            raise ValueError(f"{self.dataset}: rows hold image paths; set image_root")
        return Image.open(self.image_root / path)

    # -- loaders
    def make_sample(self, row: dict, index: int, train: bool, epoch: int = 0) -> dict:
        raise NotImplementedError

    def collate(self, samples: list[dict]) -> dict:
        return torch.utils.data.default_collate(samples)

    def _loader(self, split: str, train: bool) -> DataLoader:
        rows = self.load(split)
        ds = RowDataset(rows, lambda row, i, epoch: self.make_sample(row, i, train, epoch))
        sampler = EpochSampler(len(rows), self.seed, shuffle=train)
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=self.collate,
                          persistent_workers=self.num_workers > 0, drop_last=train)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, train=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(s, train=False) for s in self.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self):
        return self.test_dataloader()


class ClassificationDataModule(VPGDataModule):
    """Single-label classification (shapes-cls, few-shot sets). Batch: image (B,3,S,S), label (B,).

    shots: CoOp's few-shot protocol (K per class from train, min(K, 4) from val, by ``seed``).
    """

    def __init__(self, *args, shots: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.shots = shots

    @property
    def class_names(self) -> list[str]:
        split = next(s for s in (self.test_splits[0], self.val_split, self.train_split) if s)
        return list(self.load(split).features["label"].names)

    def load(self, split: str):
        first = split not in self.splits
        rows = super().load(split)
        if first and self.shots and split in (self.train_split, self.val_split):
            from vpg.data.shapes import few_shot_indices

            k = self.shots if split == self.train_split else min(self.shots, 4)
            rows = rows.select(few_shot_indices(rows["label"], k, self.seed))
            self.splits[split] = rows
        return rows

    def make_sample(self, row: dict, index: int, train: bool, epoch: int = 0) -> dict:
        transform = self.train_transform if train else self.transform
        image, _ = transform(self.image(row), None)
        return {"image": image, "label": int(row["label"])}


class CaptionsDataModule(VPGDataModule):
    """Image-caption pairs (shapes-captions, COCO captions, the tiny-CLIP pretraining corpus).

    Training samples one caption per image at random; evaluation uses every caption
    (batch: image (B,3,S,S), text (B*C, ctx) tokens, caption_image (B*C,) owner row).
    """

    def make_sample(self, row: dict, index: int, train: bool, epoch: int = 0) -> dict:
        transform = self.train_transform if train else self.transform
        image, _ = transform(self.image(row), None)
        captions = list(row["captions"])
        if not captions:
            raise DataError(f"{self.dataset}: row {index} has no captions")
        if train:
            captions = [captions[sample_rng(self.seed, epoch, index).integers(len(captions))]]
        return {"image": image, "captions": captions}

    def collate(self, samples: list[dict]) -> dict:
        images = torch.stack([s["image"] for s in samples])
        texts = [c for s in samples for c in s["captions"]]
        owner = torch.tensor([i for i, s in enumerate(samples) for _ in s["captions"]])
        return {"image": images, "text": self.tokenizer(texts), "caption_image": owner}
