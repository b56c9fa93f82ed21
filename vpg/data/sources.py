"""Where a DataModule's rows come from: vpg-shapes, a local copy, or the Hugging Face hub.

``dataset`` strings:
- ``vpg-shapes/<name>`` (captions, ref, phrase, multilabel, cls, 3d, pretrain): generated
  on demand and cached (``vpg.data.shapes``); ``options`` are its generation parameters.
- a local directory written by ``save_to_disk`` (a converter's output);
- a local file or glob: ``*.parquet``, ``*.json``/``*.jsonl``, ``*.csv``;
- a local directory of images in class folders: ``imagefolder:<dir>`` (``label`` from the folders);
- anything else is a hub id for ``datasets.load_dataset`` (``options`` are passed on, e.g.
  ``name``/``revision``); with ``streaming`` the split is an ``IterableDataset``.

Errors a user can cause (unknown split, missing files, a hub id that cannot be loaded offline)
are raised as :class:`vpg.errors.DataError` / :class:`~vpg.errors.MissingFileError` naming the
dataset and split, so the CLI prints one line instead of a traceback.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import datasets

from vpg.errors import DataError, MissingFileError

SHAPES_PREFIX = "vpg-shapes/"
IMAGEFOLDER_PREFIX = "imagefolder:"
_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
# Local data converted to an IterableDataset is cut into this many shards (at most one row each),
# so DDP ranks and loader workers can be given whole shards instead of every n-th row.
STREAMING_SHARDS = 64


def load_split(dataset: str, split: str, options: dict[str, Any] | None = None, streaming: bool = False):
    """One split of a dataset as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming)."""
    options = dict(options or {})
    if dataset.startswith(SHAPES_PREFIX):
        from vpg.data.shapes import load_shapes

        dd = load_shapes("shapes-" + dataset[len(SHAPES_PREFIX) :], **options)
        return _pick(dd, split, dataset, streaming)
    if dataset.startswith(IMAGEFOLDER_PREFIX):
        folder = Path(dataset[len(IMAGEFOLDER_PREFIX) :]).expanduser()
        if not folder.is_dir():
            raise MissingFileError(f"image folder not found: {folder}")
        return _load(dataset, split, streaming, "imagefolder", data_dir=str(folder), **options)
    path = Path(dataset).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        return _pick(datasets.load_from_disk(str(path)), split, dataset, streaming)
    suffix = "".join(path.suffixes[-1:])
    if suffix in _FILE_BUILDERS or glob.has_magic(dataset):
        files = sorted(glob.glob(str(path))) if glob.has_magic(dataset) else [str(path)]
        if not files or not all(Path(f).is_file() for f in files):
            raise MissingFileError(f"dataset file(s) not found: {dataset}")
        builder = _FILE_BUILDERS.get(Path(files[0]).suffix, "parquet")
        return _load(dataset, split, streaming, builder, data_files={split: files}, **options)
    if path.exists():
        raise DataError(
            f"{dataset}: a directory without a saved HF dataset (no dataset_dict.json/dataset_info.json)"
        )
    return _load(dataset, split, streaming, dataset, **options)


def _load(name: str, split: str, streaming: bool, path: str, **kwargs):
    try:
        return datasets.load_dataset(path, split=split, streaming=streaming, **kwargs)
    except ValueError as err:  # unknown split names come back as ValueError
        raise DataError(f"dataset {name!r}: unknown split {split!r}: {err}") from err
    except (
        FileNotFoundError,
        ConnectionError,
    ) as err:  # includes DatasetNotFoundError; offline without a cache
        raise DataError(
            f"dataset {name!r}: cannot load split {split!r}: {err} (is it in the HF cache when offline?)"
        ) from err


def _pick(dd, split: str, name: str, streaming: bool):
    if isinstance(dd, datasets.DatasetDict):
        if split not in dd:
            raise DataError(f"dataset {name!r}: unknown split {split!r}; splits: {sorted(dd)}")
        dd = dd[split]
    if not streaming:
        return dd
    return dd.to_iterable_dataset(num_shards=max(1, min(STREAMING_SHARDS, len(dd))))
