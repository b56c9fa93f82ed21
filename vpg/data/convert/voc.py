"""PASCAL VOC (``VOCdevkit/VOC2007``: ``Annotations/*.xml``, ``ImageSets/Main/<split>.txt``) -> multi-label.

Rows: one per image id of each requested split, ``labels`` over the 20 VOC classes (alphabetical,
the standard order). An object marked ``<difficult>1</difficult>`` does **not** make its class
positive (TaI-DPT / DualCoOp convention: difficult-only classes are negatives); the class is
positive as soon as one non-difficult object of it is in the image. Difficult-only labels are
counted in the summary. ``image_path`` = ``JPEGImages/<id>.jpg``, relative to the VOC year folder
(pass it as ``--image-root`` to check or embed the images).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from vpg.data.schemas import multilabel_features

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
    read_lines,
)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
DEFAULT_SPLITS = ("train", "val", "trainval", "test")


def voc_labels(xml_path: PathLike, bad: BadSamples) -> tuple[list[int], int] | None:
    """Positive class indices of one annotation file and the number of difficult-only classes."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        bad(xml_path, None, "unreadable file", str(exc))
        return None
    positive, difficult = set(), set()
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            bad(xml_path, f"object {k}", "unknown class", repr(name))
            continue
        is_difficult = (obj.findtext("difficult") or "0").strip() == "1"
        (difficult if is_difficult else positive).add(VOC_CLASSES.index(name))
    return sorted(positive), len(difficult - positive)


def convert_voc(
    voc_root: PathLike,
    out: PathLike | None = None,
    *,
    splits: list[str] | None = None,
    drop_unlabeled: bool = False,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """VOC year folder -> multi-label DatasetDict, one split per ``ImageSets/Main/<split>.txt``.

    ``splits`` default: those of train/val/trainval/test whose list file exists.
    """
    voc_root = Path(voc_root)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    main = voc_root / "ImageSets" / "Main"
    if splits is None:
        splits = [s for s in DEFAULT_SPLITS if (main / f"{s}.txt").is_file()]
        if not splits:
            raise ConversionError(
                main, "no split list found (expected train.txt / val.txt / trainval.txt / test.txt)"
            )
    difficult_only, unlabeled = 0, 0
    rows_by_split = {}
    for split in splits:
        list_file = main / f"{split}.txt"
        if not list_file.is_file():
            raise ConversionError(list_file, f"unknown split {split!r}: no such list file")
        rows = []
        for i, line in enumerate(read_lines(list_file)):
            image_id = line.split()[0]
            xml_path = voc_root / "Annotations" / f"{image_id}.xml"
            if not xml_path.is_file():
                bad(list_file, f"line {i + 1} ({image_id})", "missing annotation file", str(xml_path))
                continue
            parsed = voc_labels(xml_path, bad)
            if parsed is None:
                continue
            labels, n_difficult = parsed
            difficult_only += n_difficult
            if not labels:
                unlabeled += 1
                if drop_unlabeled:
                    continue
            rel = f"JPEGImages/{image_id}.jpg"
            if images.missing(rel):
                bad(list_file, f"line {i + 1} ({image_id})", "missing image file", str(images.path(rel)))
                continue
            rows.append({"image_path": rel, "image_id": image_id, "labels": labels})
        rows_by_split[split] = rows
    return finish(
        rows_by_split,
        multilabel_features(list(VOC_CLASSES)),
        out,
        images,
        bad,
        difficult_only_labels=difficult_only,
        unlabeled_images=unlabeled,
        dropped_unlabeled=unlabeled if drop_unlabeled else 0,
    )


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "voc-xml", "PASCAL VOC Annotations + ImageSets -> multi-label (20 classes)", __doc__
    )
    p.add_argument("--in", dest="inp", required=True, help="VOC year folder, e.g. VOCdevkit/VOC2007")
    p.add_argument(
        "--splits", nargs="+", default=None, help="ImageSets/Main list names (default: all present)"
    )
    p.add_argument("--drop-unlabeled", action="store_true", help="leave out images without a positive class")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_voc(a.inp, splits=a.splits, drop_unlabeled=a.drop_unlabeled, **common_kwargs(a))
    )
