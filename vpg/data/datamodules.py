"""LightningDataModules over Hugging Face datasets: one per task family, same schema for
vpg-shapes and real data (``vpg.data.schemas``).

The method (LightningModule) owns preprocessing: a DataModule asks the attached module
for ``image_transform(train)`` and ``tokenizer`` in ``setup``; tests and scripts may pass
``transform`` / ``tokenizer`` explicitly with ``attach``.

Families and their batches (B samples; S = the transform's output size; boxes are xyxy pixels of
the model input, ``model = original * scale + offset``):

- :class:`ClassificationDataModule`: ``image`` (B,3,S,S), ``label`` (B,), ``bbox`` (B,4) if the
  dataset has a ``bbox`` column.
- :class:`CaptionsDataModule`: ``image`` (B,3,S,S), ``text`` (T,ctx), ``caption_image`` (T,).
- :class:`RefDataModule`: ``image``, ``candidates`` (B,K,4), ``candidate_mask`` (B,K),
  ``gold`` (B,4), ``gold_index`` (B,), ``text`` (B,ctx), ``sentences``, ``image_id``,
  ``orig_size`` (B,2), ``scale`` (B,2), ``offset`` (B,2).
- :class:`PhraseDataModule`: see the class; ``boxes`` is a list of (Ki,4) tensors.
- :class:`MultiLabelDataModule`: ``image``, ``labels`` (B,C) multi-hot, ``image_id``.
- :class:`PointCloudDataModule`: ``points`` (B,N,3), ``label`` (B,).

Bad rows (``on_bad_sample``): ``raise`` (default) raises :class:`vpg.errors.DataError` naming
dataset, split, row and problem; ``skip`` drops the row from its batch and counts it per reason.
After each pass over a split the counts are logged (one warning line) and kept in
``dm.skipped[split]``; other notable events (texts truncated to the tokenizer context, REC images
without detections) are counted the same way in ``dm.events[split]``. Schema problems (a missing
column, an unknown split, relative image paths without ``image_root``) always raise.
"""

from __future__ import annotations

import inspect
import io
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import datasets
import lightning as L
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from vpg.errors import ConfigurationError, DataError, MissingFileError

from .convert.common import BOX_TOLERANCE_PX
from .sources import load_split
from .transforms import to_rgb

log = logging.getLogger("vpg.data")

BAD_SAMPLE_POLICIES = ("raise", "skip")
_REPORT_KEY = "_vpg_report"  # collate -> loader: skipped reasons and events of one batch
_EVENTS_KEY = "_vpg_events"  # make_sample -> collate: events of one sample
TRUNCATED = "text truncated to the tokenizer context"
WHOLE_IMAGE = "no detections: whole-image candidate"


# ----------------------------------------------------------------------------- bad rows


class BadSample(Exception):
    """A problem with one row, raised while building its sample. The DataModule adds dataset,
    split and row and applies ``on_bad_sample``. ``reason`` is the count key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class MissingColumn(Exception):
    """A row lacks a schema column: a mapping problem of the whole dataset, always raised."""


@dataclass(frozen=True)
class Skipped:
    """Stands in a batch for a skipped row; the collate wrapper counts and drops it."""

    reason: str


# ----------------------------------------------------------------------------- datasets / samplers


class RowDataset(Dataset):
    """Map-style view of an HF dataset that turns each row into a sample with ``make``.

    Keys are sample indices or ``(index, epoch)`` pairs from :class:`EpochSampler`, so random
    per-sample choices (which caption to train on) depend on (seed, epoch, index) only and a
    resumed run sees exactly the samples an uninterrupted one would.

    ``items`` (N, 2) int array: sample -> (row, item) when one row gives several samples (every
    expression of a REC row at evaluation); ``make(rows, row_index, epoch, item)``.
    """

    def __init__(
        self, rows, make: Callable[[Any, int, int, int | None], Any], items: np.ndarray | None = None
    ):
        self.rows, self.make, self.items = rows, make, items

    def __len__(self) -> int:
        return len(self.items) if self.items is not None else len(self.rows)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if self.items is None:
            return self.make(self.rows, int(index), epoch, None)
        row, item = self.items[index]
        return self.make(self.rows, int(row), epoch, int(item))


class EpochSampler(Sampler):
    """Shuffled order seeded by (seed, epoch); Lightning calls ``set_epoch`` every epoch (also
    through its DDP wrapper, which forwards it)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(
                self.size, generator=torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
            )
        else:
            order = torch.arange(self.size)
        return iter([(int(i), self.epoch) for i in order])


class StreamingRows(IterableDataset):
    """Samples of a streamed (``IterableDataset``) split, sharded over DDP ranks and loader workers.

    Each reader (rank r of R, worker w of W) gets ``split_dataset_by_node(rows, r, R)`` and then
    ``split_dataset_by_node(..., w, W)``: whole shards when their number divides R * W, else every
    (R * W)-th row, so readers see disjoint rows that together are the whole split. The k-th row of
    a reader gets the sample index ``k * R * W + r * W + w`` (for per-sample randomness). There is
    no EpochSampler order: training (``train``) shuffles with a seeded buffer (``shuffle_buffer``),
    and ``set_epoch`` re-seeds it and reorders the shards (the same on every rank, which all have
    the trainer's epoch); this is not resumable mid-epoch. Evaluation ignores the epoch: every pass
    reads the same rows in the same order.
    """

    def __init__(
        self,
        rows,
        make: Callable,
        count_items: Callable,
        rank: int = 0,
        world_size: int = 1,
        train: bool = False,
        shuffle_seed: int | None = None,
        shuffle_buffer: int = 0,
        read_batch: int = 64,
    ):
        self.rows, self.make, self.count_items, self.train = rows, make, count_items, train
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle_seed, self.shuffle_buffer = shuffle_seed, int(shuffle_buffer)
        self.read_batch = read_batch  # rows per Arrow read
        self.epoch = 0
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch) if self.train else 0  # `datasets` reorders shards for epoch > 0

    def reader_rows(self, worker: int = 0, num_workers: int = 1):
        """The rows this reader (this rank, ``worker`` of ``num_workers``) iterates."""
        from datasets.distributed import split_dataset_by_node

        rows = self.rows
        if self.train and self.shuffle_buffer > 0:  # same seed on every rank: the shard order must agree
            rows = rows.shuffle(seed=self.shuffle_seed, buffer_size=self.shuffle_buffer)
        rows = split_dataset_by_node(rows, rank=self.rank, world_size=self.world_size)
        if num_workers > 1:
            rows = split_dataset_by_node(rows, rank=worker, world_size=num_workers)
        rows.set_epoch(self.epoch)
        return rows

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        readers, reader = self.world_size * num_workers, self.rank * num_workers + worker
        position = 0
        # .iter() reads this reader's rows directly; plain iteration inside a worker would let
        # `datasets` split the shards among workers a second time.
        for chunk in self.reader_rows(worker, num_workers).iter(batch_size=self.read_batch):
            columns = list(chunk)
            for values in zip(*(chunk[c] for c in columns)):
                row = dict(zip(columns, values))
                index = position * readers + reader
                position += 1
                count = self.count_items(row)
                for item in [None] if count is None else range(count):
                    yield self.make(row, index, self.epoch, item)


class VPGDataLoader(DataLoader):
    """DataLoader that removes the per-batch bad-sample report from each batch, skips batches whose
    samples were all skipped, and hands the pass's counts to the DataModule when the pass ends.

    ``split_name``: the split it reads (``test/acc@0.5/<split_name>`` when several test splits).
    """

    def __init__(
        self,
        *args,
        datamodule: VPGDataModule | None = None,
        split_name: str | None = None,
        train: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.datamodule, self.split_name, self.train = datamodule, split_name, train

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", None)
        if self.datamodule is not None:
            epoch = self.datamodule._pass_epoch(self.split_name, self.train, epoch)
            if isinstance(self.dataset, StreamingRows):
                self.dataset.set_epoch(epoch)  # before workers start: they copy the dataset
        return self._batches(super().__iter__(), epoch)

    def _batches(self, batches, epoch):
        try:
            expected = len(self)  # Lightning stops after this many batches without exhausting us
        except TypeError:  # streaming: no length, the pass ends when the rows do
            expected = None
        skipped, events, seen, reported = Counter(), Counter(), 0, False

        def report(complete: bool) -> None:
            nonlocal reported
            if not reported and self.datamodule is not None:
                self.datamodule._end_pass(self.split_name, epoch, skipped, events, complete)
            reported = True

        try:
            for batch in batches:
                batch_skipped, batch_events = batch.pop(_REPORT_KEY, (Counter(), Counter()))
                skipped.update(batch_skipped)
                events.update(batch_events)
                seen += 1
                if expected is not None and seen >= expected:
                    report(complete=True)  # before the last yield: the consumer may never come back
                if batch:  # empty when every sample of the batch was skipped
                    yield batch
            report(complete=True)
        finally:
            report(complete=False)  # stopped early (sanity check, limit_*_batches, an error)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for one sample's random choices, independent of loader order and workers."""
    return np.random.default_rng([seed, epoch, index])


# ----------------------------------------------------------------------------- geometry helpers


def _whole_image(width: int, height: int) -> list[float]:
    return [0.0, 0.0, float(width), float(height)]


def _geometry(probe: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (sx, sy) and offset (ox, oy) of a transform from the image of the box [0, 0, W, H]."""
    scale = torch.stack([(probe[2] - probe[0]) / width, (probe[3] - probe[1]) / height]).float()  # (2,)
    return scale, probe[:2].float().clone()  # (2,), (2,)


def _clip(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Clip xyxy boxes (..., 4) to a width x height frame."""
    limit = torch.tensor([width, height, width, height], dtype=boxes.dtype)
    return torch.minimum(boxes.clamp_min(0), limit)


def _text(value: Any) -> str:
    """An expression as a stripped string; refer-style dicts give their ``raw`` (else ``sent``)."""
    if isinstance(value, Mapping):
        value = value.get("raw") or value.get("sent")
    return value.strip() if isinstance(value, str) else ""


def _label(value: Any) -> int:
    """A class index; -1 (HF's "no label") and non-integers are bad rows."""
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise BadSample("invalid label", f"{value!r} is not a class index") from None
    if label < 0:
        raise BadSample("invalid label", f"label {label} (unlabelled row)")
    return label


def _list_lengths(rows, column: str) -> np.ndarray:
    """Length of the list in ``column`` of every row (null -> 0), read from Arrow without decoding."""
    lengths = pc.list_value_length(rows.with_format("arrow")[column]).fill_null(0)
    return np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64)  # (N,)


# ----------------------------------------------------------------------------- base


class VPGDataModule(L.LightningDataModule):
    """Shared plumbing: sources, splits, column mapping, image resolution, bad rows, loaders.

    Args:
        dataset: ``vpg-shapes/<name>``, a local dataset dir/file, ``imagefolder:<dir>``, or a hub
            id (see ``vpg.data.sources``).
        options: passed to the source (vpg-shapes generation parameters, hub ``name``...).
        train_split / val_split / test_splits: split names (None skips the stage; several test
            splits give several test loaders, named by ``test_split_names``).
        columns: schema column -> dataset column, for datasets whose names differ.
        image_root: directory joined to relative ``image_path`` values.
        image_path_template: build the image path from row columns, e.g. ``"{filepath}/{filename}"``
            (COCO Karpathy); resolved against ``image_root`` like ``image_path``.
        box_format: ``xyxy`` (the schema's, default) or ``xywh`` (COCO-style hub datasets) for the
            dataset's box columns; converted to xyxy when read.
        streaming: read the splits as ``IterableDataset`` shards, split over DDP ranks and loader
            workers (:class:`StreamingRows`); no EpochSampler order, no ``len``.
        shuffle_buffer: streaming training only: size of the seeded shuffle buffer (0: file order).
        on_bad_sample: ``raise`` (default) or ``skip`` bad rows (see the module doc).
        eval_dataset / eval_options: a different source for the val and test splits (train on
            one corpus, evaluate on another: caption-trained prompts tested on images).
        seed: seeds the training order and per-sample random choices (with the epoch).
    """

    needs_image = True  # point clouds have none

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
        on_bad_sample: Literal["raise", "skip"] = "raise",
        image_path_template: str | None = None,
        box_format: Literal["xyxy", "xywh"] = "xyxy",
        shuffle_buffer: int = 1000,
    ):
        super().__init__()
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ConfigurationError(
                f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}"
            )
        if box_format not in ("xyxy", "xywh"):
            raise ConfigurationError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
        self.dataset, self.options = dataset, dict(options or {})
        self.eval_dataset = eval_dataset
        self.eval_options = dict(eval_options if eval_options is not None else (options or {}))
        self.train_split, self.val_split = train_split, val_split
        self.test_splits = list(test_splits) if test_splits is not None else ["test"]
        self.columns = dict(columns or {})
        self.image_root = Path(image_root).expanduser() if image_root else None
        self.image_path_template = image_path_template
        self.box_format = box_format
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.streaming, self.seed = num_workers, streaming, seed
        self.shuffle_buffer = shuffle_buffer
        self.on_bad_sample = on_bad_sample
        self.transform: Callable | None = None
        self.train_transform: Callable | None = None
        self.tokenizer: Callable | None = None
        self.splits: dict[str, Any] = {}
        self.skipped: dict[str, Counter] = {}  # split -> skipped rows per reason, last pass
        self.events: dict[str, Counter] = {}  # split -> other counted events, last pass
        self.pass_reports: list[dict[str, Any]] = []  # every pass: split, epoch, skipped, events, complete
        self._items_cache: dict[tuple[str, bool], np.ndarray | None] = {}
        self._passes: Counter = Counter()
        self._collate_events: Counter = Counter()
        self._transform_params: dict[int, set[str]] = {}

    # -- preprocessing comes from the method
    def attach(
        self,
        transform: Callable | None,
        tokenizer: Callable | None = None,
        train_transform: Callable | None = None,
    ) -> VPGDataModule:
        self.transform, self.tokenizer = transform, tokenizer
        self.train_transform = train_transform or transform
        return self

    def _attach_from_module(self) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if self.transform is None and module is not None and hasattr(module, "image_transform"):
            self.attach(
                module.image_transform(train=False),
                getattr(module, "tokenizer", None),
                module.image_transform(train=True),
            )
        if self.transform is None and self.needs_image:
            raise RuntimeError(f"{type(self).__name__}: no image transform; attach a method or call attach()")

    # -- splits
    @property
    def test_split_names(self) -> list[str]:
        """Names of the test loaders, in ``test_dataloader`` order (log ``test/<metric>/<name>``)."""
        return list(self.test_splits)

    @test_split_names.setter
    def test_split_names(self, names: list[str]) -> None:
        self.test_splits = list(names)

    def source_of(self, split: str) -> str:
        return self.eval_dataset if self.eval_dataset and split != self.train_split else self.dataset

    def load(self, split: str):
        if split not in self.splits:
            if self.eval_dataset and split != self.train_split:
                rows = load_split(self.eval_dataset, split, self.eval_options, self.streaming)
            else:
                rows = load_split(self.dataset, split, self.options, self.streaming)
            rows = self._map_columns(rows, split)
            self._check_columns(rows, split)
            self.splits[split] = self._prepare(rows, split)
        return self.splits[split]

    def _map_columns(self, rows, split: str):
        if not self.columns:
            return rows
        names = rows.column_names
        renames = {v: k for k, v in self.columns.items() if v != k}
        if names is not None:
            absent = sorted(v for v in renames if v not in names)
            if absent:
                raise DataError(
                    f"{self.source_of(split)}, split {split!r}: missing column(s) {absent} named in "
                    f"`columns`; the dataset has {sorted(names)}"
                )
            # the mapped column replaces a dataset column that already has the schema name
            # (`{sentences: raw_sentences}` on a dataset that also has `sentences`)
            clash = [k for k in renames.values() if k in names and k not in renames]
            if clash:
                rows = rows.remove_columns(clash)
        return rows.rename_columns(renames)

    def required_columns(self, split: str, names: list[str]) -> list[str]:
        """Schema columns the rows of ``split`` must have (besides the image); ``names`` = what it has."""
        return []

    def _check_columns(self, rows, split: str) -> None:
        names = rows.column_names
        if names is None:  # some streamed hub datasets: checked row by row instead
            return
        missing = [c for c in self.required_columns(split, names) if c not in names]
        if (
            self.needs_image
            and "image" not in names
            and "image_path" not in names
            and not self.image_path_template
        ):
            missing.append("image (or image_path)")
        if missing:
            raise DataError(
                f"{self.source_of(split)}, split {split!r}: missing column(s) {missing}; the dataset has "
                f"{sorted(names)}. Map them with `columns: {{<schema name>: <dataset column>}}`"
            )

    def _prepare(self, rows, split: str):
        """Images stay encoded until a sample needs them: decode errors then become bad rows."""
        features = rows.features
        if (
            features is not None
            and isinstance(features.get("image"), datasets.Image)
            and features["image"].decode
        ):
            rows = rows.cast_column("image", datasets.Image(decode=False))
        return rows

    def setup(self, stage: str | None = None) -> None:
        self._attach_from_module()
        wanted = {
            "fit": [self.train_split, self.val_split],
            "validate": [self.val_split],
            "test": self.test_splits,
            "predict": self.test_splits,
        }.get(stage or "fit", [])
        for split in wanted:
            if split:
                self.load(split)

    # -- reading rows (raise BadSample / MissingColumn; the caller adds where)
    def value(self, row: Mapping, column: str, allow_none: bool = False) -> Any:
        if column not in row:
            raise MissingColumn(column)
        value = row[column]
        if value is None and not allow_none:
            raise BadSample("missing value", f"{column!r} is null")
        return value

    def image_id(self, row: Mapping, index: int) -> str:
        value = row.get("image_id")
        return str(index) if value is None else str(value)

    def _resolve(self, path: str) -> Path:
        full = Path(path)
        if not full.is_absolute():
            if self.image_root is None:
                raise ConfigurationError(
                    f"{self.dataset}: rows hold relative image paths ({path!r}); set image_root"
                )
            full = self.image_root / full
        if not full.is_file():
            raise BadSample("missing image file", str(full))
        return full

    def _image_path(self, row: Mapping) -> str | None:
        if not self.image_path_template:
            return row.get("image_path")
        try:
            return self.image_path_template.format(**row)
        except KeyError as err:
            raise MissingColumn(str(err.args[0])) from None

    def load_image(self, row: Mapping) -> Image.Image:
        """The row's image as RGB with EXIF orientation applied (the frame its boxes refer to)."""
        value = row.get("image")
        data, path = None, None
        if isinstance(value, Image.Image):  # decoded by `datasets` (a streamed set without features)
            image = value
        elif isinstance(value, Mapping):  # Image(decode=False): bytes, or a path
            data, path = value.get("bytes"), value.get("path")
        elif isinstance(value, (bytes, bytearray)):
            data = value
        elif isinstance(value, str):
            path = value
        elif value is None:
            path = self._image_path(row)
        else:
            raise BadSample("missing value", f"an image value of type {type(value).__name__}")
        if not isinstance(value, Image.Image):
            if not data and not path:
                raise BadSample("missing value", "the row has neither image bytes nor an image path")
            source = io.BytesIO(data) if data else self._resolve(path)
        try:
            if not isinstance(value, Image.Image):
                image = Image.open(source)
            image.load()  # decode now: truncated files fail here, not inside the transform
            return to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            name = f" {path}" if path and not data else ""
            raise BadSample("corrupt image", f"cannot decode{name}: {type(err).__name__}: {err}") from None

    def box(
        self, raw: Any, size: tuple[int, int], what: str = "box", box_format: str | None = None
    ) -> list[float]:
        """One box of the dataset (``box_format``, default the DataModule's) as xyxy pixels,
        checked against the image (width, height).

        Corners up to ``BOX_TOLERANCE_PX`` outside are clipped (rounded annotations), as in the
        converters; further out is "<what> outside the image"; no area is "zero-area <what>".
        """
        try:
            values = [float(v) for v in raw]
        except (TypeError, ValueError):
            raise BadSample(f"invalid {what}", f"{raw!r} is not a list of numbers") from None
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise BadSample(f"invalid {what}", f"{values} is not 4 finite numbers")
        if (box_format or self.box_format) == "xywh":
            values = [values[0], values[1], values[0] + values[2], values[1] + values[3]]
        x1, y1, x2, y2 = values
        width, height = size
        tol = BOX_TOLERANCE_PX
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise BadSample(
                f"{what} outside the image",
                f"{[round(v, 2) for v in values]} (xyxy) exceeds the {width}x{height} image",
            )
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            raise BadSample(f"zero-area {what}", f"{[round(v, 2) for v in values]} (xyxy) has no area")
        return [x1, y1, x2, y2]

    def apply_transform(
        self,
        image: Image.Image,
        boxes: torch.Tensor | None,
        train: bool,
        text: str | None = None,
        rng: np.random.Generator | None = None,
    ):
        """The method's transform; ``text`` / ``rng`` are passed to transforms that take them."""
        transform = self.train_transform if train else self.transform
        if id(transform) not in self._transform_params:
            try:
                params = set(inspect.signature(transform).parameters)
            except (TypeError, ValueError):
                params = set()
            self._transform_params[id(transform)] = params
        params = self._transform_params[id(transform)]
        kwargs = {}
        if "text" in params and text is not None:
            kwargs["text"] = text
        if "rng" in params and rng is not None:
            kwargs["rng"] = rng
        return transform(image, boxes, **kwargs)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``self.tokenizer(texts)`` (N, ctx); texts longer than the context are truncated by the
        tokenizer and counted (open_clip tokenizers with ``encode``)."""
        if self.tokenizer is None:
            raise ConfigurationError(f"{type(self).__name__}: no tokenizer; attach a method or call attach()")
        tokens = self.tokenizer(texts)
        encode = getattr(self.tokenizer, "encode", None)
        if callable(encode) and hasattr(self.tokenizer, "sot_token_id"):
            context = tokens.shape[-1]
            over = sum(len(encode(t)) + 2 > context for t in texts)  # + start and end tokens
            if over:
                self._collate_events[TRUNCATED] += over
        return tokens

    # -- samples
    def make_sample(
        self, row: dict, index: int, train: bool, epoch: int = 0, item: int | None = None
    ) -> dict:
        """One sample (dict) of row ``index``; ``item`` picks one of several samples of a row at
        evaluation (see ``item_column``). Raise :class:`BadSample` for a bad row."""
        raise NotImplementedError

    def item_column(self, train: bool) -> str | None:
        """A list column whose every entry is its own sample (None: one sample per row)."""
        return None

    empty_items_are_bad = True  # a row with an empty item list gives one bad sample, not none

    def _count_items(self, train: bool, row: Mapping) -> int | None:
        column = self.item_column(train)
        if column is None:
            return None
        count = len(row.get(column) or [])
        return max(count, 1) if self.empty_items_are_bad else count

    def _items(self, split: str, train: bool) -> np.ndarray | None:
        column = self.item_column(train)
        if column is None:
            return None
        if (split, train) not in self._items_cache:
            lengths = _list_lengths(self.load(split), column)  # (N,)
            if self.empty_items_are_bad:
                lengths = np.maximum(lengths, 1)
            elif (lengths == 0).any():
                log.info(
                    "%s, split %r: %d of %d rows have no %s (nothing to evaluate there)",
                    self.source_of(split),
                    split,
                    int((lengths == 0).sum()),
                    len(lengths),
                    column,
                )
            rows = np.repeat(np.arange(len(lengths)), lengths)  # (S,)
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)  # (S,)
            self._items_cache[(split, train)] = np.stack(
                [rows, np.arange(len(rows)) - starts], axis=1
            )  # (S, 2)
        return self._items_cache[(split, train)]

    def _where(self, split: str, index: int, item: int | None) -> str:
        where = f"{self.source_of(split)}, split {split!r}, row {index}"
        return where + (f" ({self.item_column(False)}[{item}])" if item is not None else "")

    def _make_row(self, split: str, train: bool, row: Mapping, index: int, epoch: int, item: int | None):
        try:
            if item is None:  # subclasses written before `item` existed take four arguments
                return self.make_sample(row, index, train, epoch)
            return self.make_sample(row, index, train, epoch, item=item)
        except BadSample as bad:
            if self.on_bad_sample == "raise":
                raise DataError(
                    f"{self._where(split, index, item)}: {bad} (on_bad_sample: skip would skip and count it)"
                ) from None
            return Skipped(bad.reason)
        except MissingColumn as err:
            raise DataError(
                f"{self._where(split, index, item)}: missing column {err}; the row has "
                f"{sorted(row)}. Map it with `columns`"
            ) from None

    def _make_at(self, split: str, train: bool, rows, index: int, epoch: int, item: int | None):
        return self._make_row(split, train, rows[index], index, epoch, item)

    # -- batches
    def collate(self, samples: list[dict]) -> dict:
        return torch.utils.data.default_collate(samples)

    def _collate_batch(self, split: str, samples: list) -> dict:
        """Drops skipped samples, collates the rest, attaches the batch's counts for the loader."""
        good, skipped, events = [], Counter(), Counter()
        for sample in samples:
            if isinstance(sample, Skipped):
                skipped[sample.reason] += 1
            elif sample is None:
                skipped["skipped (None sample)"] += 1
            else:
                events.update(sample.pop(_EVENTS_KEY, ()))
                good.append(sample)
        self._collate_events = Counter()
        batch = self.collate(good) if good else {}
        events.update(self._collate_events)
        batch[_REPORT_KEY] = (skipped, events)
        return batch

    def _end_pass(
        self, split: str, epoch: int | None, skipped: Counter, events: Counter, complete: bool
    ) -> None:
        self._passes[split] += 1
        self.skipped[split], self.events[split] = skipped, events
        self.pass_reports.append(
            {
                "split": split,
                "epoch": epoch,
                "skipped": dict(skipped),
                "events": dict(events),
                "complete": complete,
            }
        )
        if skipped or events:
            parts = []
            if skipped:
                parts.append(
                    f"skipped {sum(skipped.values())} bad samples ("
                    + ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
                    + ")"
                )
            parts.extend(f"{k}: {v}" for k, v in sorted(events.items()))
            log.warning(
                "%s, split %r, epoch %s%s: %s",
                self.source_of(split),
                split,
                epoch,
                "" if complete else " (pass stopped early)",
                "; ".join(parts),
            )

    # -- loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _pass_epoch(self, split: str, train: bool, sampler_epoch: int | None) -> int:
        """Epoch of a pass: the trainer's, else the EpochSampler's, else the count of passes."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.current_epoch)
        return int(sampler_epoch) if sampler_epoch is not None else self._passes[split]

    def dataloader(
        self, split: str, train: bool = False, *, rank: int | None = None, world_size: int | None = None
    ) -> VPGDataLoader:
        """Loader over ``split``; ``rank`` / ``world_size`` (streaming only) default to the
        trainer's, else torch.distributed's, else 0 / 1."""
        rows = self.load(split)
        kwargs = dict(
            batch_size=self.batch_size if train else self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=partial(self._collate_batch, split),
            drop_last=train,
            datamodule=self,
            split_name=split,
            train=train,
        )
        if self.streaming:
            if rank is None or world_size is None:
                rank, world_size = self._rank_world()
            dataset = StreamingRows(
                rows,
                partial(self._make_row, split, train),
                partial(self._count_items, train),
                rank,
                world_size,
                train=train,
                shuffle_seed=self.seed,
                shuffle_buffer=self.shuffle_buffer,
            )
            # workers must be re-created every pass: they copy the dataset with its epoch
            return VPGDataLoader(dataset, persistent_workers=False, **kwargs)
        dataset = RowDataset(rows, partial(self._make_at, split, train), self._items(split, train))
        sampler = EpochSampler(len(dataset), self.seed, shuffle=train)
        return VPGDataLoader(dataset, sampler=sampler, persistent_workers=self.num_workers > 0, **kwargs)

    def _loader(self, split: str, train: bool) -> VPGDataLoader:
        return self.dataloader(split, train)

    def train_dataloader(self) -> DataLoader:
        return self.dataloader(self.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader(self.val_split, train=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader, or a list in ``test_split_names`` order when there are several test splits."""
        loaders = [self.dataloader(s, train=False) for s in self.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self):
        return self.test_dataloader()

    # -- helpers for subclasses
    def _image_sample(
        self,
        image: Image.Image,
        train: bool,
        boxes: list[list[float]] | None = None,
        text: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> dict:
        """Transform a loaded image with ``boxes`` (xyxy original pixels); returns the tensor,
        boxes in model-input pixels (clipped), original size, scale and offset."""
        width, height = image.size
        probe = torch.tensor([*(boxes or []), _whole_image(width, height)], dtype=torch.float32)  # (K+1, 4)
        tensor, out = self.apply_transform(image, probe, train, text=text, rng=rng)
        out_h, out_w = tensor.shape[-2:]
        scale, offset = _geometry(out[-1], width, height)
        return {
            "image": tensor,
            "boxes": _clip(out[:-1], out_w, out_h),
            "orig_size": (width, height),
            "scale": scale,
            "offset": offset,
        }

    @staticmethod
    def _geometry_batch(samples: list[dict]) -> dict:
        return {
            "orig_size": torch.tensor([s["orig_size"] for s in samples], dtype=torch.long),  # (B, 2)
            "scale": torch.stack([s["scale"] for s in samples]),  # (B, 2)
            "offset": torch.stack([s["offset"] for s in samples]),  # (B, 2)
        }


# ----------------------------------------------------------------------------- classification


class ClassificationDataModule(VPGDataModule):
    """Single-label classification (shapes-cls, the few-shot sets, FALIP's boxed classification).

    Batch: ``image`` (B,3,S,S), ``label`` (B,) long; ``bbox`` (B,4) model-input pixels when the
    dataset has a ``bbox`` column.

    shots: CoOp's few-shot protocol: K per class from the train split and min(K, 4) from the val
        split, drawn exactly as CoOp/Dassl with ``random.seed(seed)`` (``vpg.data.convert.coop``).
    class_names: names for datasets whose ``label`` column is not a ClassLabel.
    """

    def __init__(self, *args, shots: int | None = None, class_names: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if shots is not None and shots < 1:
            raise ConfigurationError(f"shots must be >= 1, got {shots}")
        if shots and self.streaming:
            raise ConfigurationError(
                "shots (few-shot subsets) need a map-style dataset; set streaming: false"
            )
        self.shots, self._class_names = shots, class_names

    @property
    def class_names(self) -> list[str]:
        if self._class_names:
            return list(self._class_names)
        split = next(s for s in (*self.test_splits, self.val_split, self.train_split) if s)
        feature = (self.load(split).features or {}).get("label")
        if not isinstance(feature, datasets.ClassLabel):
            raise DataError(f"{self.source_of(split)}: 'label' is not a ClassLabel; pass class_names")
        return list(feature.names)

    def required_columns(self, split: str, names: list[str]) -> list[str]:
        return ["label"]

    def load(self, split: str):
        first = split not in self.splits
        super().load(split)
        if first and self.shots and split in (self.train_split, self.val_split):
            self._sample_shots()
        return self.splits[split]

    def _sample_shots(self) -> None:
        """Train and val subsets together: CoOp draws val from the same generator after train."""
        from vpg.data.convert.coop import sample_few_shot

        names = {"train": self.train_split, "val": self.val_split}
        for split in names.values():
            if split and split not in self.splits:
                super().load(split)
        present = {key: split for key, split in names.items() if split}
        few = sample_few_shot(
            datasets.DatasetDict({k: self.splits[s] for k, s in present.items()}), self.shots, self.seed
        )
        for key, split in present.items():
            self.splits[split] = few[key]

    def make_sample(
        self, row: dict, index: int, train: bool, epoch: int = 0, item: int | None = None
    ) -> dict:
        label = _label(self.value(row, "label"))
        image = self.load_image(row)
        boxes = [self.box(self.value(row, "bbox"), image.size)] if "bbox" in row else None
        rng = sample_rng(self.seed, epoch, index) if train else None
        sample = self._image_sample(image, train, boxes, rng=rng)
        out = {"image": sample["image"], "label": label}
        if boxes is not None:
            out["bbox"] = sample["boxes"][0]
        return out

    def collate(self, samples: list[dict]) -> dict:
        batch = {
            "image": torch.stack([s["image"] for s in samples]),  # (B, 3, S, S)
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),  # (B,)
        }
        if all("bbox" in s for s in samples):
            batch["bbox"] = torch.stack([s["bbox"] for s in samples])  # (B, 4)
        return batch


# ----------------------------------------------------------------------------- captions


class CaptionsDataModule(VPGDataModule):
    """Image-caption pairs (shapes-captions, COCO captions, the tiny-CLIP pretraining corpus).

    Training samples one caption per image at random; evaluation uses every caption
    (batch: image (B,3,S,S), text (B*C, ctx) tokens, caption_image (B*C,) owner row).

    first_caption_prob: None (default) draws the training caption uniformly; p draws a row's
        first caption with probability p and one of the others uniformly otherwise. In the tiny-CLIP
        corpus the first caption of a single-object image is its class prompt ("a photo of a red
        circle"), so p > 1/6 weights training toward the prompt that zero-shot evaluation uses.
    """

    def __init__(self, *args, first_caption_prob: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if first_caption_prob is not None and not 0.0 <= first_caption_prob <= 1.0:
            raise ConfigurationError(f"first_caption_prob must be in [0, 1], got {first_caption_prob}")
        self.first_caption_prob = first_caption_prob

    def required_columns(self, split: str, names: list[str]) -> list[str]:
        return ["captions"]

    def make_sample(
        self, row: dict, index: int, train: bool, epoch: int = 0, item: int | None = None
    ) -> dict:
        captions = [_text(c) for c in self.value(row, "captions")]
        if not captions:
            raise BadSample("empty expression", "the row has no captions")
        if not all(captions):
            raise BadSample("empty expression", f"caption {captions.index('')} is empty")
        rng = sample_rng(self.seed, epoch, index)
        if train:
            p = self.first_caption_prob
            if p is None or len(captions) == 1:
                captions = [captions[rng.integers(len(captions))]]
            else:
                captions = [captions[0] if rng.random() < p else captions[1 + rng.integers(len(captions) - 1)]]
        image, _ = self.apply_transform(self.load_image(row), None, train, rng=rng if train else None)
        return {"image": image, "captions": captions}

    def collate(self, samples: list[dict]) -> dict:
        images = torch.stack([s["image"] for s in samples])  # (B, 3, S, S)
        texts = [c for s in samples for c in s["captions"]]
        owner = torch.tensor([i for i, s in enumerate(samples) for _ in s["captions"]])  # (T,)
        return {"image": images, "text": self.tokenize(texts), "caption_image": owner}


# ----------------------------------------------------------------------------- referring expressions


class RefDataModule(VPGDataModule):
    """Referring expression comprehension (RefCOCO / RefCOCO+ / RefCOCOg, ReferItGame, shapes-ref).

    Training: one sample per row, its expression drawn with ``sample_rng(seed, epoch, row)``.
    Evaluation: every (row, expression) pair is a sample (the standard protocol), from a flat
    index built when the split is first used.

    Batch (K = most candidates in the batch):
        image (B,3,S,S) float; candidates (B,K,4) float, zero-padded; candidate_mask (B,K) bool;
        gold (B,4); gold_index (B,) long, the gold box among the candidates or -1;
        text (B,ctx) long = tokenizer(sentences); sentences list[str]; image_id list[str];
        orig_size (B,2) long (width, height); scale (B,2) float (sx, sy) and offset (B,2):
        model-input pixel = original pixel * scale + offset (offset 0 for squash / letterbox).
    Boxes are xyxy pixels of the model input, clipped to it.

    candidates_file: ReCLIP detections (``*_dets_dict.json``, read by
        ``vpg.data.convert.reclip.load_detections``; ``candidates_box_format`` xywh by default)
        replacing every row's candidates by its image's detections (the "prop" setting). An image
        without detections gets the whole-image box, counted in ``events[split]`` per pass and
        logged per split at load (``images_without_detections``).
    Without a ``candidates`` column (e.g. the jxu124 hub copies) and without a file, K = 0.
    """

    def __init__(
        self,
        *args,
        candidates_file: str | None = None,
        candidates_box_format: Literal["xywh", "xyxy"] = "xywh",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.candidates_file, self.candidates_box_format = candidates_file, candidates_box_format
        self._detections: dict[str, torch.Tensor] | None = None
        self.images_without_detections: dict[str, int] = {}

    def required_columns(self, split: str, names: list[str]) -> list[str]:
        return ["bbox", "sentences"]

    def item_column(self, train: bool) -> str | None:
        return None if train else "sentences"

    @property
    def detections(self) -> dict[str, torch.Tensor] | None:
        if self.candidates_file and self._detections is None:
            from vpg.data.convert import ConversionError, load_detections

            if not Path(self.candidates_file).expanduser().is_file():
                raise MissingFileError(f"candidates_file not found: {self.candidates_file}")
            try:
                self._detections = load_detections(
                    Path(self.candidates_file).expanduser(), self.candidates_box_format
                )
            except ConversionError as err:
                raise DataError(f"candidates_file: {err}") from None
        return self._detections

    def load(self, split: str):
        first = split not in self.splits
        rows = super().load(split)
        if first and self.detections is not None and not self.streaming and "image_id" in rows.column_names:
            ids = {str(i) for i in rows["image_id"]}
            missing = sum(1 for i in ids if i not in self.detections or len(self.detections[i]) == 0)
            self.images_without_detections[split] = missing
            if missing:
                log.warning(
                    "%s, split %r: %d of %d images have no detections in %s; their candidate is "
                    "the whole image",
                    self.source_of(split),
                    split,
                    missing,
                    len(ids),
                    self.candidates_file,
                )
        return rows

    def make_sample(
        self, row: dict, index: int, train: bool, epoch: int = 0, item: int | None = None
    ) -> dict:
        rng = sample_rng(self.seed, epoch, index)
        sentences = list(self.value(row, "sentences"))
        if not sentences:
            raise BadSample("empty expression", "the row has no expressions")
        choice = int(rng.integers(len(sentences))) if train else int(item or 0)
        sentence = _text(sentences[choice])
        if not sentence:
            raise BadSample("empty expression", f"expression {choice} is empty")
        image = self.load_image(row)
        size = image.size
        gold = self.box(self.value(row, "bbox"), size)
        image_id = self.image_id(row, index)
        events = Counter()
        if self.detections is not None:
            found = self.detections.get(image_id)
            if found is None or len(found) == 0:
                candidates = [_whole_image(*size)]
                events[WHOLE_IMAGE] += 1
            else:  # load_detections gives xyxy
                candidates = [self.box(b, size, "candidate box", "xyxy") for b in found.tolist()]
        else:
            candidates = [self.box(b, size, "candidate box") for b in (row.get("candidates") or [])]
        gold_index = next(
            (k for k, c in enumerate(candidates) if max(abs(a - b) for a, b in zip(c, gold)) <= 0.5), -1
        )
        sample = self._image_sample(image, train, [gold, *candidates], text=sentence, rng=rng)
        boxes = sample["boxes"]  # (1 + K, 4)
        cand = boxes[1:]  # (K, 4)
        return {
            "image": sample["image"],
            "gold": boxes[0],
            "candidates": cand,
            "candidate_valid": (cand[:, 2] > cand[:, 0])
            & (cand[:, 3] > cand[:, 1]),  # (K,) a crop can empty one
            "gold_index": gold_index,
            "sentence": sentence,
            "image_id": image_id,
            "orig_size": sample["orig_size"],
            "scale": sample["scale"],
            "offset": sample["offset"],
            _EVENTS_KEY: events,
        }

    def collate(self, samples: list[dict]) -> dict:
        batch_size = len(samples)
        most = max(len(s["candidates"]) for s in samples)
        candidates = torch.zeros(batch_size, most, 4)  # (B, K, 4)
        mask = torch.zeros(batch_size, most, dtype=torch.bool)  # (B, K)
        for i, s in enumerate(samples):
            k = len(s["candidates"])
            candidates[i, :k] = s["candidates"]
            mask[i, :k] = s["candidate_valid"]
        sentences = [s["sentence"] for s in samples]
        return {
            "image": torch.stack([s["image"] for s in samples]),  # (B, 3, S, S)
            "candidates": candidates,
            "candidate_mask": mask,
            "gold": torch.stack([s["gold"] for s in samples]),  # (B, 4)
            "gold_index": torch.tensor([s["gold_index"] for s in samples], dtype=torch.long),  # (B,)
            "text": self.tokenize(sentences),  # (B, ctx)
            "sentences": sentences,
            "image_id": [s["image_id"] for s in samples],
            **self._geometry_batch(samples),
        }


# ----------------------------------------------------------------------------- phrase grounding


def drop_words(text: str, p: float, rng: np.random.Generator) -> str:
    """Drop each word with probability ``p`` (WWbL's caption augmentation); keeps >= 1 word."""
    words = text.split()
    if p <= 0 or len(words) <= 1:
        return text
    keep = rng.random(len(words)) >= p  # (W,)
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(w for w, k in zip(words, keep) if k)


class PhraseDataModule(VPGDataModule):
    """Phrase grounding (Flickr30k Entities, VG regions, ReferIt WSG, shapes-phrase).

    Training (``train_text``):
        ``caption``: one sample per row: (image, caption) (WWbL trains on captions); rows in the
        CAPTIONS schema (a ``captions`` list, e.g. COCO) give one caption drawn by ``sample_rng``;
        ``phrase``: one sample per row with one phrase drawn by ``sample_rng`` (VG regions).
        ``word_dropout`` p drops each word with probability p (WWbL: 0.2 on COCO captions).
        Batch: image (B,3,S,S), text (B,ctx), sentences list[str] (after dropout), image_id,
        orig_size (B,2), scale (B,2), offset (B,2); ``phrase`` mode adds boxes (list of (Ki,4)).
    Evaluation: every (row, phrase) pair is a sample. Batch: image, text (B,ctx) of the phrases,
        phrases list[str], boxes list of B (Ki,4) float tensors (model-input pixels, clipped),
        entity_id list[str], phrase_type list[str], caption list[str], image_id list[str],
        orig_size (B,2) long, scale (B,2), offset (B,2).
    Rows without phrases (Flickr sentences whose phrases all lack boxes) give no eval samples;
    their number is logged when the split's index is built.
    """

    empty_items_are_bad = False

    def __init__(
        self, *args, train_text: Literal["caption", "phrase"] = "caption", word_dropout: float = 0.0, **kwargs
    ):
        super().__init__(*args, **kwargs)
        if train_text not in ("caption", "phrase"):
            raise ConfigurationError(f"train_text must be 'caption' or 'phrase', got {train_text!r}")
        if not 0.0 <= word_dropout < 1.0:
            raise ConfigurationError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.train_text, self.word_dropout = train_text, float(word_dropout)

    def required_columns(self, split: str, names: list[str]) -> list[str]:
        if split == self.train_split and self.train_text == "caption":
            return ["captions"] if "captions" in names else ["caption"]
        return ["phrases", "boxes"]

    def item_column(self, train: bool) -> str | None:
        return None if train else "phrases"

    def make_sample(
        self, row: dict, index: int, train: bool, epoch: int = 0, item: int | None = None
    ) -> dict:
        rng = sample_rng(self.seed, epoch, index)
        if train and self.train_text == "caption":
            if "caption" in row:  # PHRASE rows: one caption each
                caption = _text(self.value(row, "caption"))
            else:  # CAPTIONS rows (COCO): one of the image's captions, drawn like the expression of a REC row
                captions = list(self.value(row, "captions"))
                caption = _text(captions[rng.integers(len(captions))]) if captions else ""
            if not caption:
                raise BadSample("empty expression", "empty caption")
            text = drop_words(caption, self.word_dropout, rng)
            sample = self._image_sample(self.load_image(row), train, None, text=text, rng=rng)
            return {
                "image": sample["image"],
                "sentence": text,
                "image_id": self.image_id(row, index),
                "orig_size": sample["orig_size"],
                "scale": sample["scale"],
                "offset": sample["offset"],
            }
        phrases = list(self.value(row, "phrases"))
        all_boxes = list(self.value(row, "boxes"))
        if not phrases:
            raise BadSample("empty expression", "the row has no phrases")
        if len(all_boxes) != len(phrases):
            raise BadSample("invalid box", f"{len(phrases)} phrases but {len(all_boxes)} box lists")
        k = int(rng.integers(len(phrases))) if train else int(item or 0)
        phrase = _text(phrases[k])
        if not phrase:
            raise BadSample("empty expression", f"phrase {k} is empty")
        if train:
            phrase = drop_words(phrase, self.word_dropout, rng)
        if not all_boxes[k]:
            raise BadSample("missing value", f"phrase {k} has no boxes")
        image = self.load_image(row)
        boxes = [self.box(b, image.size) for b in all_boxes[k]]
        sample = self._image_sample(image, train, boxes, text=phrase, rng=rng)
        entity_ids, types = row.get("entity_ids") or [], row.get("phrase_types") or []
        return {
            "image": sample["image"],
            "phrase": phrase,
            "boxes": sample["boxes"],
            "entity_id": str(entity_ids[k]) if k < len(entity_ids) else "",
            "phrase_type": str(types[k]) if k < len(types) else "",
            "caption": _text(row.get("caption")),
            "image_id": self.image_id(row, index),
            "orig_size": sample["orig_size"],
            "scale": sample["scale"],
            "offset": sample["offset"],
            "train": train,
        }

    def collate(self, samples: list[dict]) -> dict:
        images = torch.stack([s["image"] for s in samples])  # (B, 3, S, S)
        geometry = self._geometry_batch(samples)
        ids = [s["image_id"] for s in samples]
        if "sentence" in samples[0]:  # training on captions
            texts = [s["sentence"] for s in samples]
            return {
                "image": images,
                "text": self.tokenize(texts),
                "sentences": texts,
                "image_id": ids,
                **geometry,
            }
        texts = [s["phrase"] for s in samples]
        boxes = [s["boxes"] for s in samples]  # B x (Ki, 4)
        if samples[0]["train"]:
            return {
                "image": images,
                "text": self.tokenize(texts),
                "sentences": texts,
                "boxes": boxes,
                "image_id": ids,
                **geometry,
            }
        return {
            "image": images,
            "text": self.tokenize(texts),
            "phrases": texts,
            "boxes": boxes,
            "entity_id": [s["entity_id"] for s in samples],
            "phrase_type": [s["phrase_type"] for s in samples],
            "caption": [s["caption"] for s in samples],
            "image_id": ids,
            **geometry,
        }


# ----------------------------------------------------------------------------- multi-label


class MultiLabelDataModule(VPGDataModule):
    """Multi-label recognition (VOC2007, COCO-80, NUS-WIDE-81, shapes-multilabel).

    Batch: ``image`` (B,3,S,S), ``labels`` (B,C) float multi-hot, ``image_id`` list[str].
    ``class_names`` come from the ``labels`` column's ClassLabel, else the argument.
    ``label_format``: ``indices`` (the schema: the classes present) or ``multi_hot`` (C 0/1 values).
    """

    def __init__(
        self,
        *args,
        class_names: list[str] | None = None,
        label_format: Literal["indices", "multi_hot"] = "indices",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if label_format not in ("indices", "multi_hot"):
            raise ConfigurationError(f"label_format must be 'indices' or 'multi_hot', got {label_format!r}")
        self._class_names, self.label_format = class_names, label_format

    def required_columns(self, split: str, names: list[str]) -> list[str]:
        return ["labels"]

    @property
    def class_names(self) -> list[str]:
        if not self._class_names:  # cached: make_sample asks for every row
            split = next(s for s in (*self.test_splits, self.val_split, self.train_split) if s)
            feature = (self.load(split).features or {}).get("labels")
            inner = getattr(feature, "feature", None)
            if not isinstance(inner, datasets.ClassLabel):
                raise DataError(
                    f"{self.source_of(split)}: 'labels' is not a list of ClassLabel; pass class_names"
                )
            self._class_names = list(inner.names)
        return list(self._class_names)

    def make_sample(
        self, row: dict, index: int, train: bool, epoch: int = 0, item: int | None = None
    ) -> dict:
        labels = [int(v) for v in self.value(row, "labels")]
        count = len(self.class_names)
        if self.label_format == "multi_hot":
            if len(labels) != count or any(v not in (0, 1) for v in labels):
                raise BadSample("invalid label", f"expected {count} values of 0/1, got {labels[:10]}...")
            labels = [c for c, v in enumerate(labels) if v]
        elif any(not 0 <= v < count for v in labels):
            raise BadSample("invalid label", f"labels {labels} outside 0..{count - 1}")
        rng = sample_rng(self.seed, epoch, index) if train else None
        image, _ = self.apply_transform(self.load_image(row), None, train, rng=rng)
        return {"image": image, "labels": labels, "image_id": self.image_id(row, index)}

    def collate(self, samples: list[dict]) -> dict:
        multi_hot = torch.zeros(len(samples), len(self.class_names))  # (B, C)
        for i, s in enumerate(samples):
            multi_hot[i, s["labels"]] = 1.0
        return {
            "image": torch.stack([s["image"] for s in samples]),  # (B, 3, S, S)
            "labels": multi_hot,
            "image_id": [s["image_id"] for s in samples],
        }


# ----------------------------------------------------------------------------- point clouds


class PointCloudDataModule(VPGDataModule):
    """Point-cloud classification (ModelNet40, ScanObjectNN, shapes-3d).

    Batch: ``points`` (B,N,3) float with N = ``num_points``, ``label`` (B,) long.
    Every cloud is resampled to N points: a random subset without replacement when it has more,
    all its points plus random repeats when it has fewer; drawn from ``sample_rng(seed, epoch,
    index)`` in training and ``sample_rng(seed, 0, index)`` in evaluation (fixed).
    No image and no transform; ``class_names`` from the ClassLabel or the argument.
    """

    needs_image = False

    def __init__(self, *args, num_points: int = 1024, class_names: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if num_points < 1:
            raise ConfigurationError(f"num_points must be >= 1, got {num_points}")
        self.num_points, self._class_names = int(num_points), class_names

    def required_columns(self, split: str, names: list[str]) -> list[str]:
        return ["points", "label"]

    @property
    def class_names(self) -> list[str]:
        if self._class_names:
            return list(self._class_names)
        split = next(s for s in (*self.test_splits, self.val_split, self.train_split) if s)
        feature = (self.load(split).features or {}).get("label")
        if not isinstance(feature, datasets.ClassLabel):
            raise DataError(f"{self.source_of(split)}: 'label' is not a ClassLabel; pass class_names")
        return list(feature.names)

    def make_sample(
        self, row: dict, index: int, train: bool, epoch: int = 0, item: int | None = None
    ) -> dict:
        label = _label(self.value(row, "label"))
        try:
            points = np.asarray(self.value(row, "points"), dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise BadSample("invalid points", str(err)) from None
        if points.ndim != 2 or points.shape[1] < 3 or len(points) == 0:
            raise BadSample("invalid points", f"expected (N, 3) with N > 0, got shape {points.shape}")
        points = points[:, :3]  # (N, 3); extra columns (normals) are not part of the schema
        if not np.isfinite(points).all():
            raise BadSample("invalid points", "non-finite coordinates")
        rng = sample_rng(self.seed, epoch if train else 0, index)
        n = len(points)
        if n >= self.num_points:
            keep = rng.choice(n, self.num_points, replace=False)  # (N',)
        else:
            keep = np.concatenate([np.arange(n), rng.choice(n, self.num_points - n, replace=True)])  # (N',)
        return {"points": torch.from_numpy(points[keep]), "label": label}

    def collate(self, samples: list[dict]) -> dict:
        return {
            "points": torch.stack([s["points"] for s in samples]),  # (B, N, 3)
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),  # (B,)
        }
