"""Waterbirds -> classification (landbird / waterbird) with the bird's box from CUB.

The released Waterbirds folder (e.g. ``waterbird_complete95_forest2water2``, made by group DRO's
``generate_waterbirds.py``) holds ``metadata.csv`` with the columns ``img_id`` (CUB's image id),
``img_filename`` (CUB's relative path, e.g. ``001.Black_footed_Albatross/<stem>.jpg``), ``y``
(0 landbird, 1 waterbird), ``split`` (0 train, 1 val, 2 test), ``place`` (0 land, 1 water
background) and ``place_filename``, and the images under ``<img_filename>``. Each image is a CUB
bird pasted at its original position onto a Places background resized to the bird image's size,
so CUB's ``bounding_boxes.txt`` (x y w h) boxes apply unchanged.

The box of a row is looked up by ``img_id`` in ``CUB_200_2011/bounding_boxes.txt``, and the id is
checked against CUB's ``images.txt`` (same file name); without an ``img_id`` column the id is
found from ``img_filename`` through ``images.txt``.

Rows: splits ``train``/``val``/``test``, ``label`` = ``y`` with class names ``landbird``,
``waterbird`` (``--class-names`` to change), ``bbox`` xyxy, ``image_id`` = the CUB image id,
``image_path`` = ``img_filename`` (relative to the Waterbirds folder). The four (bird, place)
groups are counted per split in the summary (the ``place`` column is not a schema column).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

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
    new_parser,
    parse_box,
)
from .cub import read_id_file

WATERBIRDS_SPLITS = {"0": "train", "1": "val", "2": "test"}
WATERBIRDS_CLASSES = ("landbird", "waterbird")
PLACES = {"0": "land", "1": "water"}


def read_metadata(path: PathLike) -> list[dict[str, str]]:
    """Rows of ``metadata.csv`` (header required: ``img_filename``, ``y``, ``split``)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConversionError(path, f"unreadable file: {exc}") from exc
    missing = [c for c in ("img_filename", "y", "split") if c not in header]
    if missing:
        raise ConversionError(path, f"missing column {missing[0]!r} (header: {', '.join(header)})")
    return rows


def convert_waterbirds(
    metadata: PathLike,
    cub_root: PathLike,
    out: PathLike | None = None,
    *,
    class_names: tuple[str, str] | list[str] = WATERBIRDS_CLASSES,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """``metadata.csv`` (or its folder) + the CUB_200_2011 folder -> DatasetDict (see module doc)."""
    metadata = Path(metadata)
    if metadata.is_dir():
        metadata = metadata / "metadata.csv"
    cub_root = Path(cub_root)
    if len(class_names) != 2:
        raise ValueError(f"Waterbirds has 2 classes, got class_names={list(class_names)}")
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    cub_files = {rel: image_id for image_id, (rel, *_) in read_id_file(cub_root / "images.txt").items()}
    cub_file_of = {image_id: rel for rel, image_id in cub_files.items()}
    boxes_file = cub_root / "bounding_boxes.txt"
    boxes = read_id_file(boxes_file, 5)
    rows_by_split: dict[str, list[dict]] = {name: [] for name in WATERBIRDS_SPLITS.values()}
    groups: dict[str, Counter] = {name: Counter() for name in WATERBIRDS_SPLITS.values()}
    for i, record in enumerate(read_metadata(metadata)):
        where = f"row {i + 1}"  # data row, header not counted
        rel = (record.get("img_filename") or "").strip()
        if not rel:
            bad(metadata, where, "missing value", "'img_filename' is empty")
            continue
        where = f"row {i + 1} ({rel})"
        image_id = (record.get("img_id") or "").strip()
        if image_id:
            if cub_file_of.get(image_id) != rel:
                found = cub_file_of.get(image_id, "no such id")
                bad(
                    metadata,
                    where,
                    "image id mismatch",
                    f"CUB images.txt has {found!r} for img_id {image_id}",
                )
                continue
        elif rel in cub_files:
            image_id = cub_files[rel]
        else:
            bad(metadata, where, "unknown image", f"{rel!r} is not in {cub_root / 'images.txt'}")
            continue
        split = WATERBIRDS_SPLITS.get((record.get("split") or "").strip())
        if split is None:
            bad(metadata, where, "unknown split", f"{record.get('split')!r} (expected 0, 1 or 2)")
            continue
        y = (record.get("y") or "").strip()
        if y not in ("0", "1"):
            bad(metadata, where, "invalid label", f"y = {y!r} (expected 0 or 1)")
            continue
        if image_id not in boxes:
            bad(boxes_file, f"image id {image_id}", "missing record", f"no box for {rel}")
            continue
        if images.missing(rel):
            bad(metadata, where, "missing image file", str(images.path(rel)))
            continue
        box = parse_box(
            boxes[image_id][:4], "xywh", images.size(rel), bad, boxes_file, f"image id {image_id}"
        )
        if box is None:
            continue
        place = PLACES.get((record.get("place") or "").strip(), "unknown place")
        groups[split][f"{class_names[int(y)]} on {place}"] += 1
        rows_by_split[split].append({"image_path": rel, "image_id": image_id, "label": int(y), "bbox": box})
    return finish(
        rows_by_split,
        classification_features(list(class_names), with_box=True),
        out,
        images,
        bad,
        groups={f"{split} {g}": n for split, c in groups.items() for g, n in sorted(c.items())},
    )


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "waterbirds", "Waterbirds metadata.csv + CUB boxes -> classification with boxes", __doc__
    )
    p.add_argument("--in", dest="inp", required=True, help="metadata.csv or the Waterbirds folder holding it")
    p.add_argument("--cub", required=True, help="CUB_200_2011 folder (images.txt, bounding_boxes.txt)")
    p.add_argument(
        "--class-names",
        nargs=2,
        default=list(WATERBIRDS_CLASSES),
        metavar=("Y0", "Y1"),
        help="names of y=0, y=1",
    )
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_waterbirds(a.inp, a.cub, class_names=a.class_names, **common_kwargs(a))
    )
