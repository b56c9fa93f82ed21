"""Text-only training data: captions with pseudo-labels, images only for testing (TaI-DPT).

:class:`CaptionTextDataModule` reads the captions of a caption dataset (COCO captions,
shapes-captions, any dataset with a caption column), labels them with a synonym dictionary
(:mod:`vpg.data.pseudo_labels`), drops and counts captions that match no class, and adds per
class a few single-label sentences from prompt templates ("a photo of a {}."). Images are
never decoded for training.

Validation never touches the test set: a seeded ``val_fraction`` of the caption dataset's
rows (whole rows, so one image's captions stay on one side) is held out, and validation
reports the loss and the pseudo-label mAP on those captions. With ``validate_on: images``
the image DataModule's own ``val_split`` is used instead (a separate labelled image split).

Test (and image validation) batches come from a :class:`~vpg.data.datamodules.MultiLabelDataModule`
given as ``images``; its class names must be the dictionary's.

Batches: captions ``text`` (B, ctx) long, ``labels`` (B, C) float multi-hot, ``sentences``
list[str]; images: the MultiLabelDataModule's (``image``, ``labels``, ``image_id``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vpg.errors import ConfigurationError, DataError

from .datamodules import MultiLabelDataModule, VPGDataModule
from .pseudo_labels import CorpusLabels, PseudoLabeler
from .sources import load_split

log = logging.getLogger("vpg.data")

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.",
                     "a close-up photo of a {}.", "a cropped photo of a {}.")


class _Sentences(Dataset):
    def __init__(self, texts: Sequence[str], labels: Sequence[Sequence[int]]):
        self.texts, self.labels = list(texts), list(labels)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, list[int]]:
        return self.texts[index], self.labels[index]


class CaptionTextDataModule(VPGDataModule):
    """Pseudo-labelled captions for training and validation; a multi-label image set for test.

    A :class:`~vpg.data.datamodules.VPGDataModule` (so the ``vpg`` CLI takes it) that reads only
    the caption column of its source and serves sentences, not images.

    Args:
        dataset: the caption source (``vpg-shapes/captions``, a converter's output, a hub id,
            parquet/json files; see ``vpg.data.sources``).
        classes: synonym dictionary: ``voc``, ``coco``, ``nuswide``, ``shapes``, a JSON file
            ``{class: [synonyms]}`` or such a mapping (:func:`vpg.data.pseudo_labels.load_class_set`).
        options: passed to the caption source (vpg-shapes generation parameters, hub ``name``).
        split: the caption split to train on (and to hold validation captions out of).
        column: the caption column: a list of captions per row (``captions``) or one string.
        val_fraction: share of the rows held out for validation (seeded by ``seed``).
        templates: per-class single-label sentences added to the training captions ([] for none).
        max_captions: keep at most this many training captions (a seeded subset), None for all.
        images: the multi-label image DataModule for test (and ``validate_on: images``).
        validate_on: ``captions`` (held-out captions) or ``images`` (the image set's ``val_split``).
        batch_size / eval_batch_size: captions per training / validation batch (512 as the authors).
        seed: held-out split, subset and training order.
    """

    needs_image = False

    def __init__(
        self,
        dataset: str,
        classes: str | dict[str, list[str]] = "coco",
        options: dict[str, Any] | None = None,
        split: str = "train",
        column: str = "captions",
        val_fraction: float = 0.05,
        templates: list[str] | None = None,
        max_captions: int | None = None,
        images: MultiLabelDataModule | None = None,
        validate_on: Literal["captions", "images"] = "captions",
        batch_size: int = 512,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(dataset, options, train_split=split, val_split=None, test_splits=[],
                         batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        if not 0.0 < val_fraction < 1.0 and validate_on == "captions":
            raise ConfigurationError(f"val_fraction must be in (0, 1) to validate on captions, got {val_fraction}")
        if validate_on not in ("captions", "images"):
            raise ConfigurationError(f"validate_on must be 'captions' or 'images', got {validate_on!r}")
        if validate_on == "images" and (images is None or not images.val_split):
            raise ConfigurationError("validate_on: images needs `images` with a val_split")
        self.split, self.column = split, column
        self.labeler = PseudoLabeler(classes)
        self.val_fraction, self.max_captions = val_fraction, max_captions
        self.templates = list(DEFAULT_TEMPLATES if templates is None else templates)
        self.images, self.validate_on = images, validate_on
        self.train_set: _Sentences | None = None
        self.val_set: _Sentences | None = None
        self.stats: dict[str, Any] = {}

    # -- classes
    @property
    def class_names(self) -> list[str]:
        return list(self.labeler.class_names)

    @property
    def prompt_names(self) -> list[str]:
        """Names to put in prompts (the dictionaries' first synonyms: "dining table" for diningtable)."""
        return list(self.labeler.prompt_names)

    @property
    def test_split_names(self) -> list[str]:
        return self.images.test_split_names if self.images is not None else []

    # -- preprocessing from the method
    def attach(self, transform: Callable | None, tokenizer: Callable | None = None,
               train_transform: Callable | None = None) -> CaptionTextDataModule:
        """``tokenizer`` for the captions; ``transform`` for the image DataModule (test images)."""
        self.tokenizer, self.transform = tokenizer, transform
        if self.images is not None and transform is not None:
            self.images.attach(transform, tokenizer)
        return self

    def _attach_from_module(self) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if self.tokenizer is None and module is not None:
            transform = module.image_transform(train=False) if hasattr(module, "image_transform") else None
            self.attach(transform, module.tokenizer)
        if self.tokenizer is None:
            raise RuntimeError("CaptionTextDataModule: no tokenizer; attach a method or call attach()")
        if self.images is not None:
            self.images.trainer = self.trainer

    # -- captions
    def read_captions(self) -> tuple[list[list[str]], str]:
        """Captions of every row of ``split`` (a list per row) without decoding images."""
        rows = load_split(self.dataset, self.split, self.options)
        names = rows.column_names or []
        if self.column not in names:
            raise DataError(f"{self.dataset}, split {self.split!r}: no caption column {self.column!r}; the dataset "
                            f"has {sorted(names)} (set `column`)")
        values = rows.with_format("arrow")[self.column].to_pylist()
        out = []
        for i, value in enumerate(values):
            if value is None:
                value = []
            elif isinstance(value, str):
                value = [value]
            elif not all(isinstance(c, str) for c in value):
                raise DataError(f"{self.dataset}, split {self.split!r}, row {i}: {self.column!r} holds "
                                f"{type(value[0]).__name__}, not captions")
            out.append([c for c in value if c and c.strip()])
        return out, self.dataset

    def template_sentences(self) -> tuple[list[str], list[list[int]]]:
        names = self.labeler.prompt_names
        texts = [t.format(name) for c, name in enumerate(names) for t in self.templates]
        labels = [[c] for c in range(len(names)) for _ in self.templates]
        return texts, labels

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self._attach_from_module()
        if stage in (None, "fit", "validate") and self.train_set is None:
            self._build_caption_sets()
        if self.images is not None:
            self._check_image_classes()
            if stage in ("test", "predict") or (stage in (None, "fit", "validate") and self.validate_on == "images"):
                self.images.setup("validate" if stage in ("fit", "validate") else stage)

    def _build_caption_sets(self) -> None:
        per_row, _ = self.read_captions()
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(per_row))
        n_val = int(round(self.val_fraction * len(per_row))) if self.validate_on == "captions" else 0
        val_rows, train_rows = order[:n_val], order[n_val:]
        train = self.labeler.label_corpus(c for r in np.sort(train_rows) for c in per_row[r])
        val = self.labeler.label_corpus(c for r in np.sort(val_rows) for c in per_row[r])
        texts, labels = train.texts, train.labels
        if self.max_captions is not None and len(texts) > self.max_captions:
            keep = np.sort(rng.permutation(len(texts))[: self.max_captions])
            texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        extra_texts, extra_labels = self.template_sentences()
        self.train_set = _Sentences(texts + extra_texts, labels + extra_labels)
        self.val_set = _Sentences(val.texts, val.labels) if n_val else None
        if not len(self.train_set):
            raise DataError(f"{self.dataset}, split {self.split!r}: no caption matched any class")
        self.stats = self._stats(train, val, len(texts), len(extra_texts))
        log.info("%s: %d captions matched a class, %d dropped (no class); %d held out for validation "
                 "(%d dropped); %d template sentences added", self.dataset, self.stats["train_matched"],
                 self.stats["train_dropped"], self.stats["val_captions"], self.stats["val_dropped"],
                 len(extra_texts))

    def _stats(self, train: CorpusLabels, val: CorpusLabels, kept: int, templates: int) -> dict[str, Any]:
        names = self.labeler.class_names
        return {"train_matched": len(train.texts), "train_dropped": train.dropped, "train_used": kept,
                "template_sentences": templates, "val_captions": len(val.texts), "val_dropped": val.dropped,
                "per_class": {names[c]: n for c, n in sorted(train.per_class.items())}}

    def _check_image_classes(self) -> None:
        theirs = self.images.class_names
        if list(theirs) != self.class_names:
            raise ConfigurationError(
                f"the image set's classes {list(theirs)[:5]}... ({len(theirs)}) differ from the synonym "
                f"dictionary's {self.class_names[:5]}... ({len(self.class_names)}): same names in the same order")

    # -- loaders
    def collate(self, samples: list[tuple[str, list[int]]]) -> dict:
        texts = [t for t, _ in samples]
        labels = torch.zeros(len(samples), self.labeler.num_classes)  # (B, C)
        for i, (_, classes) in enumerate(samples):
            labels[i, classes] = 1.0
        return {"text": self.tokenizer(texts), "labels": labels, "sentences": texts}

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator,
                          num_workers=self.num_workers, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader | list:
        if self.validate_on == "images":
            return self.images.val_dataloader()
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=self.collate)

    def test_dataloader(self):
        if self.images is None:
            raise ConfigurationError("CaptionTextDataModule: no `images` DataModule to test on")
        return self.images.test_dataloader()

    def predict_dataloader(self):
        return self.test_dataloader()


def synonym_table(labeler: PseudoLabeler) -> Mapping[str, list[str]]:
    """Class -> the phrases that label it (for documentation and debugging)."""
    out: dict[str, list[str]] = {n: [] for n in labeler.class_names}
    for words, c in labeler.phrases.items():
        out[labeler.class_names[c]].append(" ".join(words))
    return out


__all__ = ["CaptionTextDataModule", "DEFAULT_TEMPLATES", "synonym_table"]
