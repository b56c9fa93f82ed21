"""HiVG / CLIP-VG / TransVG split files (``<dataset>_<split>.pth``) -> REF.

Each file is a ``torch.save``-d list of tuples, one per (image, box, expression). The layout is
recognised by the tuple length, as these repositories' data loaders do:

- 3 items, Flickr30k / VG layout: ``(image_file, bbox, phrase)``;
- 4+ items, RefCOCO-family and ReferIt layout: ``(image_file, mask_file_or_seg_id, bbox, phrase,
  ...)`` (the 5th item is an attribute list; forks append more, all ignored).

The box format is **not** stored in the file: the loaders treat RefCOCO/RefCOCO+/RefCOCOg boxes as
xywh and ReferIt / Flickr30k boxes as xyxy, so ``--box-format`` is required (xywh for the
RefCOCO family, xyxy for referit and flickr).

Tuples are grouped by (image, box) into one REF row whose ``sentences`` are all expressions of
that box (first-appearance order); ``candidates`` are all distinct boxes of that image within the
same file; ``image_id`` is the image file's stem, ``ref_id`` the index of the group's first tuple,
``category`` is empty (the files carry none), ``image_path`` the stored file name (relative to
the dataset's image directory, e.g. COCO ``train2014/``). The split comes from the file name
(``refcoco_testA.pth`` -> ``testA``) unless given. The files are pickles: only convert trusted ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vpg.data.schemas import REF

from .common import (
    BadSamples,
    Conversion,
    ConversionError,
    ImageSource,
    PathLike,
    add_common_arguments,
    common_kwargs,
    finish,
    new_parser,
    parse_box,
    split_files,
    split_from_name,
)

HIVG_SPLITS = ("train", "val", "test", "testA", "testB", "testC", "trainval", "train_pseudo")


def load_split_file(path: PathLike) -> list:
    path = Path(path)
    try:
        # The files hold tuples of str / list / numpy values, not tensors: full unpickling is needed.
        items = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for broken files
        raise ConversionError(path, f"unreadable file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(items, (list, tuple)):
        raise ConversionError(path, f"expected a list of tuples, got {type(items).__name__}")
    return list(items)


def _as_list(box):
    return box.tolist() if hasattr(box, "tolist") else box


def convert_hivg(
    paths: PathLike | list[PathLike],
    out: PathLike | None = None,
    *,
    box_format: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """HiVG/TransVG ``.pth`` split file(s) -> REF, one dataset split per file (see module doc)."""
    paths = split_files(paths, split, box_format)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    rows_by_split: dict[str, list[dict]] = {}
    for path in paths:
        name = split or split_from_name(path.stem, HIVG_SPLITS)
        if name is None:
            raise ConversionError(
                path, f"unknown split in file name (expected a suffix _{'/_'.join(HIVG_SPLITS)})"
            )
        if name in rows_by_split:
            raise ConversionError(path, f"split {name!r} given by two files")
        rows_by_split[name] = _rows_of_file(path, box_format, images, bad)
    return finish(rows_by_split, REF, out, images, bad)


def _rows_of_file(path: Path, box_format: str, images: ImageSource, bad: BadSamples) -> list[dict]:
    groups: dict[tuple, dict] = {}  # (image, rounded box) -> row; insertion order = first appearance
    boxes_of_image: dict[str, list[list[float]]] = {}
    seen_box: set[tuple] = set()
    for i, item in enumerate(load_split_file(path)):
        where = f"item {i}"
        if not isinstance(item, (tuple, list)) or len(item) < 3:
            bad(path, where, "unexpected tuple layout", f"expected 3 or 5+ items, got {item!r:.80}")
            continue
        image_file, raw_box, sentence = (
            (item[0], item[1], item[2]) if len(item) == 3 else (item[0], item[2], item[3])
        )
        if not isinstance(image_file, str) or not image_file:
            bad(path, where, "invalid image file", repr(image_file))
            continue
        where = f"item {i} ({image_file})"
        if images.missing(image_file):
            bad(path, where, "missing image file", str(images.path(image_file)))
            continue
        box = parse_box(_as_list(raw_box), box_format, images.size(image_file), bad, path, where)
        if box is None:
            continue
        sentence = sentence.strip() if isinstance(sentence, str) else ""
        if not sentence:
            bad(path, where, "empty sentence")
            continue
        key = (image_file, tuple(round(v, 2) for v in box))
        if key not in seen_box:
            seen_box.add(key)
            boxes_of_image.setdefault(image_file, []).append(box)
        row = groups.get(key)
        if row is None:
            groups[key] = row = {
                "image_path": image_file,
                "image_id": Path(image_file).stem,
                "ref_id": str(i),
                "bbox": box,
                "sentences": [],
                "candidates": boxes_of_image[image_file],  # same list object: grows with the file
                "category": "",
            }
        row["sentences"].append(sentence)  # duplicates kept: each tuple is one evaluation sample
    return list(groups.values())


def register(subparsers) -> None:
    p = new_parser(subparsers, "hivg-pth", "HiVG / CLIP-VG / TransVG .pth split files -> REF", __doc__)
    p.add_argument("--in", dest="inp", nargs="+", required=True, help="<dataset>_<split>.pth file(s)")
    p.add_argument(
        "--box-format",
        choices=("xywh", "xyxy"),
        required=True,
        help="xywh for refcoco/refcoco+/refcocog, xyxy for referit/flickr",
    )
    p.add_argument("--split", default=None, help="split name for a single file (default: from its name)")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_hivg(a.inp, box_format=a.box_format, split=a.split, **common_kwargs(a))
    )
