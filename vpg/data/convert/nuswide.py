"""NUS-WIDE official lists -> multi-label over the 81 concepts.

Files under the NUS-WIDE root:

- ``Concepts81.txt``: the concept names, one per line (class order of the dataset);
- ``ImageList/TrainImagelist.txt`` / ``ImageList/TestImagelist.txt``: one image per line, Windows
  style (``actor\\0001_2124494179.jpg``, sometimes prefixed ``C:\\ImageData\\Flickr\\``);
- ``Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt`` / ``..._Test.txt``: one ``0``/``1`` per
  line, aligned with the image list.

Rows: ``image_id`` = the file stem, ``labels`` = the concepts marked 1, ``image_path`` =
``<image_prefix>/<category>/<file>`` (default prefix ``Flickr``, the folder of the official image
archive; relative to the NUS-WIDE root). Images without any of the 81 concepts are kept unless
``drop_unlabeled`` (counted either way).
"""

from __future__ import annotations

import re
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

_SPLIT_FILES = {"train": ("TrainImagelist.txt", "Train"), "test": ("TestImagelist.txt", "Test")}


def _relative_image(entry: str, prefix: str) -> str:
    rel = entry.replace("\\", "/")
    rel = re.sub(r"^[A-Za-z]:/(ImageData/)?", "", rel)  # absolute Windows path of the original release
    if prefix and not rel.startswith(prefix.rstrip("/") + "/"):
        rel = f"{prefix.rstrip('/')}/{rel}"
    return rel


def convert_nuswide(
    root: PathLike,
    out: PathLike | None = None,
    *,
    splits: tuple[str, ...] = ("train", "test"),
    image_prefix: str = "Flickr",
    drop_unlabeled: bool = False,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """NUS-WIDE root -> multi-label DatasetDict with ``train``/``test`` (see module doc)."""
    root = Path(root)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    concepts_file = root / "Concepts81.txt"
    concepts = read_lines(concepts_file)
    if len(set(concepts)) != len(concepts):
        raise ConversionError(concepts_file, "duplicate concept names")
    unlabeled = 0
    rows_by_split = {}
    for split in splits:
        if split not in _SPLIT_FILES:
            raise ValueError(f"unknown split {split!r} (NUS-WIDE has {', '.join(_SPLIT_FILES)})")
        list_name, suffix = _SPLIT_FILES[split]
        list_file = root / "ImageList" / list_name
        entries = read_lines(list_file)
        positives: list[list[int]] = [[] for _ in entries]
        for c, concept in enumerate(concepts):
            label_file = root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{suffix}.txt"
            values = read_lines(label_file)
            if len(values) != len(entries):
                raise ConversionError(
                    label_file, f"{len(values)} lines but {list_file.name} lists {len(entries)} images"
                )
            for i, value in enumerate(values):
                if value not in ("0", "1"):
                    raise ConversionError(label_file, f"expected 0 or 1, got {value!r}", f"line {i + 1}")
                if value == "1":
                    positives[i].append(c)
        rows = []
        for i, entry in enumerate(entries):
            labels = positives[i]
            if not labels:
                unlabeled += 1
                if drop_unlabeled:
                    continue
            rel = _relative_image(entry, image_prefix)
            if images.missing(rel):
                bad(list_file, f"line {i + 1}", "missing image file", str(images.path(rel)))
                continue
            rows.append({"image_path": rel, "image_id": Path(rel).stem, "labels": labels})
        rows_by_split[split] = rows
    return finish(
        rows_by_split,
        multilabel_features(concepts),
        out,
        images,
        bad,
        num_classes=len(concepts),
        unlabeled_images=unlabeled,
        dropped_unlabeled=unlabeled if drop_unlabeled else 0,
    )


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "nuswide", "NUS-WIDE image lists + concept labels -> multi-label (81)", __doc__
    )
    p.add_argument(
        "--in", dest="inp", required=True, help="NUS-WIDE root (Concepts81.txt, ImageList/, Groundtruth/)"
    )
    p.add_argument("--splits", nargs="+", choices=tuple(_SPLIT_FILES), default=["train", "test"])
    p.add_argument("--image-prefix", default="Flickr", help="folder prepended to the image list entries")
    p.add_argument("--drop-unlabeled", action="store_true", help="leave out images without any concept")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_nuswide(
            a.inp,
            splits=tuple(a.splits),
            image_prefix=a.image_prefix,
            drop_unlabeled=a.drop_unlabeled,
            **common_kwargs(a),
        )
    )
