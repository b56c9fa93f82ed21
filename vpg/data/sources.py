"""Where a DataModule's rows come from: vpg-shapes, a local copy, or the Hugging Face hub.

``dataset`` strings:
- ``vpg-shapes/<name>`` (captions, ref, phrase, multilabel, cls, 3d, pretrain): generated
  on demand and cached (``vpg.data.shapes``); ``options`` are its generation parameters.
- a local directory written by ``save_to_disk`` (a converter's output);
- a local file or glob: ``*.parquet``, ``*.json``/``*.jsonl``, ``*.csv``;
- anything else is a hub id for ``datasets.load_dataset`` (``options`` are passed on, e.g.
  ``name``/``revision``); with ``streaming`` the split is an ``IterableDataset``.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import datasets

SHAPES_PREFIX = "vpg-shapes/"
_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def load_split(dataset: str, split: str, options: dict[str, Any] | None = None, streaming: bool = False):
    """One split of a dataset as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming)."""
    options = dict(options or {})
    if dataset.startswith(SHAPES_PREFIX):
        from vpg.data.shapes import load_shapes

        dd = load_shapes("shapes-" + dataset[len(SHAPES_PREFIX):], **options)
        return _pick(dd, split, dataset, streaming)
    path = Path(dataset).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        return _pick(datasets.load_from_disk(str(path)), split, dataset, streaming)
    suffix = "".join(path.suffixes[-1:])
    if suffix in _FILE_BUILDERS or glob.has_magic(dataset):
        files = sorted(glob.glob(str(path))) if glob.has_magic(dataset) else [str(path)]
        if not files or not all(Path(f).is_file() for f in files):
            raise FileNotFoundError(f"dataset file(s) not found: {dataset}")
        builder = _FILE_BUILDERS.get(Path(files[0]).suffix, "parquet")
        ds = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=streaming, **options)
        return ds
    if path.exists():
        raise ValueError(f"{dataset}: a directory without a saved HF dataset (no dataset_dict.json/dataset_info.json)")
    try:
        return datasets.load_dataset(dataset, split=split, streaming=streaming, **options)
    except ValueError as err:  # unknown split names come back as ValueError
        raise ValueError(f"dataset {dataset!r}: cannot load split {split!r}: {err}") from err


def _pick(dd, split: str, name: str, streaming: bool):
    if isinstance(dd, datasets.DatasetDict):
        if split not in dd:
            raise KeyError(f"dataset {name!r} has no split {split!r}; splits: {sorted(dd)}")
        dd = dd[split]
    return dd.to_iterable_dataset() if streaming else dd
