"""Stanford Dogs -> classification with the dog's box (``classification_features(with_box=True)``).

Layout of the official archives: ``Images/<synset>-<Breed>/<stem>.jpg``,
``Annotation/<synset>-<Breed>/<stem>`` (VOC-like XML without extension: ``<size>``, one ``<object>``
per dog with ``<bndbox>`` xmin ymin xmax ymax in pixels, taken as is) and split lists
``lists/train_list.mat`` / ``lists/test_list.mat`` (MATLAB; reading them needs ``scipy``). Plain
text lists (one ``<synset>-<Breed>/<stem>.jpg`` per line) work as well.

Rows: ``label`` = index of the breed folder in sorted order (the dataset's own label order), class
names = the folder's breed part with ``_`` -> space (``Japanese spaniel``), ``bbox`` = the largest
dog's box (images with several dogs are counted), ``image_id`` = the stem, ``image_path`` =
``Images/<synset>-<Breed>/<stem>.jpg`` (relative to the dataset root).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
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
    parse_split_assignments,
    read_lines,
)


def read_file_list(path: PathLike) -> list[str]:
    """Relative image paths of a split list (``.mat`` via scipy, else text, first field per line)."""
    path = Path(path)
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError as exc:
            raise ConversionError(
                path,
                "reading .mat lists needs scipy (pip install scipy); "
                "or pass text lists with one relative image path per line",
            ) from exc
        try:
            mat = loadmat(str(path))
            return [str(entry[0][0]) for entry in mat["file_list"]]
        except (OSError, KeyError, ValueError, IndexError) as exc:
            raise ConversionError(path, f"unreadable file list: {type(exc).__name__}: {exc}") from exc
    return [line.split()[0] for line in read_lines(path)]


def breed_name(folder: str) -> str:
    """``n02085782-Japanese_spaniel`` -> ``Japanese spaniel``."""
    return folder.split("-", 1)[-1].replace("_", " ")


def read_dog_boxes(xml_path: Path) -> tuple[list[list[float]], tuple[float, float] | None]:
    """Raw xyxy boxes of all objects and the image (width, height) from one annotation file."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ConversionError(xml_path, f"unreadable file: {exc}") from exc
    size = None
    try:
        size = (float(root.findtext("size/width")), float(root.findtext("size/height")))
    except (TypeError, ValueError):
        size = None
    boxes = []
    for k, obj in enumerate(root.findall("object")):
        try:
            boxes.append([float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")])
        except (TypeError, ValueError) as exc:
            raise ConversionError(xml_path, "missing or invalid <bndbox> corner", f"object {k}") from exc
    return boxes, size


def convert_stanford_dogs(
    root: PathLike,
    out: PathLike | None = None,
    *,
    splits: dict[str, PathLike] | None = None,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """Stanford Dogs root -> DatasetDict with boxes (see module doc).

    ``splits`` maps split names to list files; default ``lists/train_list.mat`` and
    ``lists/test_list.mat`` when present, else every annotation file into ``train``.
    """
    root = Path(root)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    ann_dir = root / "Annotation"
    if not ann_dir.is_dir():
        raise ConversionError(ann_dir, "not a directory (expected the Annotation folder)")
    breeds = sorted(p.name for p in ann_dir.iterdir() if p.is_dir())
    if not breeds:
        raise ConversionError(ann_dir, "no breed folders")
    label_of = {b: i for i, b in enumerate(breeds)}
    if splits is None:
        defaults = {"train": root / "lists" / "train_list.mat", "test": root / "lists" / "test_list.mat"}
        splits = {k: v for k, v in defaults.items() if v.is_file()} or None
    if splits:
        lists = {name: (Path(p), read_file_list(p)) for name, p in splits.items()}
    else:
        every = sorted(
            f"{p.parent.name}/{p.name.removesuffix('.xml')}.jpg" for p in ann_dir.glob("*/*") if p.is_file()
        )
        lists = {"train": (ann_dir, every)}
    several = 0
    rows_by_split = {}
    for split, (list_file, rels) in lists.items():
        rows = []
        for i, rel in enumerate(rels):
            where = f"entry {i} ({rel})"
            folder, _, file_name = rel.replace("\\", "/").rpartition("/")
            stem = Path(file_name).stem
            if folder not in label_of:
                bad(list_file, where, "unknown class", f"breed folder {folder!r} is not in {ann_dir}")
                continue
            xml_path = ann_dir / folder / stem
            if not xml_path.is_file() and xml_path.with_suffix(".xml").is_file():
                xml_path = xml_path.with_suffix(".xml")
            if not xml_path.is_file():
                bad(list_file, where, "missing annotation file", str(xml_path))
                continue
            raw_boxes, size = read_dog_boxes(xml_path)
            image_path = f"Images/{folder}/{stem}.jpg"
            if images.missing(image_path):
                bad(list_file, where, "missing image file", str(images.path(image_path)))
                continue
            size = size or images.size(image_path)
            boxes = [
                b
                for k, raw in enumerate(raw_boxes)
                if (b := parse_box(raw, "xyxy", size, bad, xml_path, f"object {k}")) is not None
            ]
            if not boxes:
                if not raw_boxes:
                    bad(xml_path, where, "no object box")
                continue
            several += len(raw_boxes) > 1
            box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # the main dog
            rows.append({"image_path": image_path, "image_id": stem, "label": label_of[folder], "bbox": box})
        rows_by_split[split] = rows
    names = [breed_name(b) for b in breeds]
    return finish(
        rows_by_split,
        classification_features(names, with_box=True),
        out,
        images,
        bad,
        num_classes=len(names),
        images_with_several_dogs=several,
    )


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "stanford-dogs", "Stanford Dogs annotations + lists -> classification with boxes", __doc__
    )
    p.add_argument(
        "--in", dest="inp", required=True, help="dataset root with Annotation/ (and Images/, lists/)"
    )
    p.add_argument(
        "--split",
        action="append",
        metavar="NAME=LIST",
        help="split and its list (.mat or text; repeatable); default lists/{train,test}_list.mat",
    )
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_stanford_dogs(
            a.inp, splits=parse_split_assignments(a.split, "--split") or None, **common_kwargs(a)
        )
    )
