"""CoOp few-shot splits: ``split_zhou_<Name>.json`` -> classification DatasetDict, K-shot sampling.

A split file is ``{"train": [...], "val": [...], "test": [...]}`` with entries
``[relative_path, label, classname]``; paths are relative to the dataset's image folder (e.g.
``caltech-101/101_ObjectCategories``). Class names are ordered by label id and must be consistent
(one name per id, ids 0..C-1).

- :func:`convert_coop_split`: the split file (+ image root) -> DatasetDict ``train``/``val``/``test``
  in ``classification_features``; ``image_id`` = ``image_path`` = the relative path.
- :func:`sample_few_shot`: CoOp's few-shot subsets (K per class from train, min(K, 4) from val).
- :func:`apply_coop_split`: re-split a hub dataset (which lacks CoOp's splits) by matching paths.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    Value,
    concatenate_datasets,
    load_from_disk,
)

from vpg.data.schemas import classification_features

from .common import (
    BadSamples,
    Conversion,
    ConversionError,
    ImageSource,
    PathLike,
    add_common_arguments,
    common_kwargs,
    finish,
    load_json,
    new_parser,
)

COOP_SPLITS = ("train", "val", "test")


def read_coop_split(path: PathLike) -> tuple[dict[str, list[tuple[str, int, str]]], list[str]]:
    """Parse and validate a CoOp split file -> (``{split: [(rel_path, label, classname)]}``, class names)."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, Mapping):
        raise ConversionError(
            path, f"expected an object with train/val/test lists, got {type(data).__name__}"
        )
    unknown = [k for k in data if k not in COOP_SPLITS]
    if unknown:
        raise ConversionError(path, f"unknown split {unknown[0]!r} (expected {', '.join(COOP_SPLITS)})")
    entries: dict[str, list[tuple[str, int, str]]] = {}
    names: dict[int, str] = {}
    for split in COOP_SPLITS:
        if split not in data:
            continue
        items = []
        for i, item in enumerate(data[split]):
            where = f"{split}[{i}]"
            if not (isinstance(item, (list, tuple)) and len(item) == 3):
                raise ConversionError(
                    path, f"expected [relative_path, label, classname], got {item!r:.80}", where
                )
            rel, label, classname = item
            if not isinstance(rel, str) or not rel.strip():
                raise ConversionError(path, f"empty or non-string image path {rel!r}", where)
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise ConversionError(path, f"label must be a non-negative integer, got {label!r}", where)
            if not isinstance(classname, str) or not classname.strip():
                raise ConversionError(path, f"empty class name for label {label}", where)
            if names.setdefault(label, classname) != classname:
                raise ConversionError(
                    path, f"label {label} is {classname!r} here but {names[label]!r} before", where
                )
            items.append((rel, label, classname))
        entries[split] = items
    if not names:
        raise ConversionError(path, "no entries")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise ConversionError(path, f"label ids are not contiguous: no entry with label {missing[:10]}")
    return entries, [names[i] for i in range(len(names))]


def convert_coop_split(
    split_json: PathLike,
    out: PathLike | None = None,
    *,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """CoOp split file -> DatasetDict train/val/test (``classification_features``, names by label id)."""
    split_json = Path(split_json)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    entries, class_names = read_coop_split(split_json)
    rows_by_split = {}
    for split, items in entries.items():
        rows = []
        for i, (rel, label, _) in enumerate(items):
            if images.missing(rel):
                bad(split_json, f"{split}[{i}]", "missing image file", str(images.path(rel)))
                continue
            rows.append({"image_path": rel, "image_id": rel, "label": label})
        rows_by_split[split] = rows
    return finish(
        rows_by_split, classification_features(class_names), out, images, bad, num_classes=len(class_names)
    )


def sample_few_shot(dataset_dict: DatasetDict, shots: int, seed: int) -> DatasetDict:
    """CoOp's K-shot subsets: K images per class from ``train``, min(K, 4) from ``val``; others as is.

    Mirrors CoOp/Dassl ``generate_fewshot_dataset(repeat=False)`` after ``random.seed(seed)``: classes
    in order of first appearance, ``random.sample`` of each class's images (all of them when a
    class has fewer), train first, then val from the same generator. Deterministic for a seed.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = random.Random(seed)
    result = dict(dataset_dict)
    for split, k in (("train", shots), ("val", min(shots, 4))):
        if split not in dataset_dict:
            continue
        by_label: dict[int, list[int]] = {}
        for idx, label in enumerate(dataset_dict[split]["label"]):
            by_label.setdefault(label, []).append(idx)
        picked: list[int] = []
        for idxs in by_label.values():
            picked.extend(rng.sample(idxs, k) if len(idxs) >= k else idxs)
        result[split] = dataset_dict[split].select(picked)
    return DatasetDict(result)


def _normalise(path: Any) -> str:
    return str(path).replace("\\", "/").removeprefix("./")


def apply_coop_split(
    hf_dataset: Dataset | DatasetDict,
    split_json: PathLike,
    path_column: str = "image",
) -> DatasetDict:
    """Re-split a hub dataset with a CoOp split file by matching image paths.

    ``path_column`` holds each row's path: a string column or an ``Image`` column (its stored
    ``path`` is used; images are not decoded). A DatasetDict is concatenated first.

    Matching: paths are compared as ``/``-separated suffixes. A CoOp entry ``Faces/image_0274.jpg``
    matches the row whose path ends with exactly those components (``.../101_ObjectCategories/
    Faces/image_0274.jpg``); when no row ends with the whole relative path, a row whose bare file
    name equals the entry's file name is used if that file name is unique in the dataset. Anything
    else (no match, or several rows ending the same way) is missing: a :class:`ConversionError`
    lists the missing paths. Output splits keep the ``image`` column (if any) and get ``image_id``
    = the CoOp path and ``label`` = CoOp's label (ClassLabel with CoOp's names); without an
    ``image`` column an ``image_path`` = the CoOp path is written instead.
    """
    split_json = Path(split_json)
    entries, class_names = read_coop_split(split_json)
    if isinstance(hf_dataset, DatasetDict):
        hf_dataset = concatenate_datasets(list(hf_dataset.values()))
    if path_column not in hf_dataset.column_names:
        raise ValueError(
            f"path_column {path_column!r} is not a column of the dataset ({hf_dataset.column_names})"
        )
    column = hf_dataset
    if isinstance(hf_dataset.features[path_column], Image):
        column = hf_dataset.cast_column(path_column, Image(decode=False))
    raw_paths = [v.get("path") if isinstance(v, Mapping) else v for v in column[path_column]]
    depth = max(len(PurePosixPath(rel).parts) for items in entries.values() for rel, _, _ in items)
    ambiguous = -1
    by_suffix: dict[str, int] = {}  # "/"-joined last n components -> row index (or ambiguous)
    for idx, raw in enumerate(raw_paths):
        if raw is None:
            continue
        parts = PurePosixPath(_normalise(raw)).parts
        for n in range(1, min(depth, len(parts)) + 1):
            key = "/".join(parts[-n:])
            by_suffix[key] = idx if by_suffix.get(key, idx) == idx else ambiguous

    splits, missing = {}, []
    for split, items in entries.items():
        idxs, labels, ids = [], [], []
        for rel, label, _ in items:
            parts = PurePosixPath(_normalise(rel)).parts
            idx = by_suffix.get("/".join(parts), ambiguous)
            if idx == ambiguous:
                idx = by_suffix.get(parts[-1], ambiguous)
            if idx == ambiguous:
                missing.append(f"{split}: {rel}")
                continue
            idxs.append(idx)
            labels.append(label)
            ids.append(rel)
        splits[split] = (idxs, labels, ids)
    if missing:
        shown = "; ".join(missing[:10]) + (f"; ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise ConversionError(
            split_json,
            f"{len(missing)} paths match no single row of the dataset: {shown}",
            f"column {path_column!r}",
        )
    has_image = "image" in hf_dataset.column_names and isinstance(hf_dataset.features["image"], Image)
    label_feature = ClassLabel(names=class_names)
    result = {}
    for split, (idxs, labels, ids) in splits.items():
        if has_image:
            ds = hf_dataset.select(idxs).select_columns(["image"])
            ds = ds.add_column("image_id", ids, feature=Value("string"))
            ds = ds.add_column("label", labels, feature=label_feature)
        else:
            features = Features(
                {"image_path": Value("string"), "image_id": Value("string"), "label": label_feature}
            )
            ds = Dataset.from_dict({"image_path": ids, "image_id": ids, "label": labels}, features=features)
        result[split] = ds
    return DatasetDict(result)


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "coop-split", "CoOp split_zhou_<Name>.json (+ images) -> classification", __doc__
    )
    p.add_argument("--in", dest="inp", required=True, help="split_zhou_<Name>.json")
    p.add_argument("--shots", type=int, default=None, help="write CoOp's K-shot train/val subsets instead")
    p.add_argument("--seed", type=int, default=1, help="seed of the K-shot sampling (default: 1)")
    add_common_arguments(p)
    p.set_defaults(run=_run)


def _run(a) -> Conversion:
    kwargs = common_kwargs(a)
    if a.shots is None:
        return convert_coop_split(a.inp, **kwargs)
    out = kwargs.pop("out")
    full = convert_coop_split(a.inp, **kwargs)  # in memory; only the sampled subsets are saved
    few = sample_few_shot(full.dataset, a.shots, a.seed)
    few.save_to_disk(str(out))
    summary = dict(full.summary, shots=a.shots, seed=a.seed, rows={k: len(v) for k, v in few.items()})
    return Conversion(load_from_disk(str(out)), summary)
