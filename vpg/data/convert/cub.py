"""CUB-200-2011 -> classification with the bird's box (``classification_features(with_box=True)``).

Files under ``CUB_200_2011/`` (all ``<image_id> <value...>`` lines): ``images.txt`` (relative path
under ``images/``), ``bounding_boxes.txt`` (x y w h, pixels), ``image_class_labels.txt`` (1-based
class id), ``classes.txt`` (``<id> 001.Black_footed_Albatross``), ``train_test_split.txt``
(1 = train, 0 = test).

Rows: ``train``/``test`` splits, ``label`` = class id - 1, class names from ``classes.txt`` with
the number prefix dropped and ``_`` -> space (``Black footed Albatross``; ``raw_class_names`` keeps
them as written), ``bbox`` xyxy, ``image_id`` = CUB's image id, ``image_path`` = ``images/<path>``
(relative to the CUB_200_2011 folder; boxes are checked against the image size when it is given
as ``--image-root``).
"""

from __future__ import annotations

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
    read_lines,
)


def read_id_file(path: PathLike, min_fields: int = 2) -> dict[str, list[str]]:
    """``<id> <values...>`` lines -> ``{id: [values...]}``; malformed lines raise ConversionError."""
    result = {}
    for i, line in enumerate(read_lines(path)):
        parts = line.split()
        if len(parts) < min_fields:
            raise ConversionError(path, f"expected {min_fields} fields, got {line!r}", f"line {i + 1}")
        if parts[0] in result:
            raise ConversionError(path, f"duplicate id {parts[0]}", f"line {i + 1}")
        result[parts[0]] = parts[1:]
    return result


def clean_class_name(name: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross``."""
    return name.split(".", 1)[1].replace("_", " ") if "." in name else name.replace("_", " ")


def convert_cub(
    root: PathLike,
    out: PathLike | None = None,
    *,
    raw_class_names: bool = False,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """CUB_200_2011 folder -> DatasetDict ``train``/``test`` with boxes (see module doc)."""
    root = Path(root)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    image_files = read_id_file(root / "images.txt")
    boxes = read_id_file(root / "bounding_boxes.txt", 5)
    labels = read_id_file(root / "image_class_labels.txt")
    is_train = read_id_file(root / "train_test_split.txt")
    classes_file = root / "classes.txt"
    classes = read_id_file(classes_file)
    try:
        class_ids = sorted(int(k) for k in classes)
    except ValueError as exc:
        raise ConversionError(classes_file, f"non-integer class id: {exc}") from exc
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise ConversionError(classes_file, "class ids are not 1..N")
    names = [classes[str(i)][0] for i in class_ids]
    if not raw_class_names:
        names = [clean_class_name(n) for n in names]
    rows_by_split: dict[str, list[dict]] = {"train": [], "test": []}
    for image_id, (rel, *_) in image_files.items():
        where = f"image id {image_id}"
        for table, path in (
            (boxes, "bounding_boxes.txt"),
            (labels, "image_class_labels.txt"),
            (is_train, "train_test_split.txt"),
        ):
            if image_id not in table:
                bad(root / path, where, "missing record", f"no line for image id {image_id}")
                break
        else:
            try:
                label = int(labels[image_id][0]) - 1
            except ValueError:
                label = -1
            if not 0 <= label < len(names):
                bad(root / "image_class_labels.txt", where, "unknown class", repr(labels[image_id][0]))
                continue
            flag = is_train[image_id][0]
            if flag not in ("0", "1"):
                bad(root / "train_test_split.txt", where, "unknown split", repr(flag))
                continue
            image_path = f"images/{rel}"
            if images.missing(image_path):
                bad(root / "images.txt", where, "missing image file", str(images.path(image_path)))
                continue
            box = parse_box(
                boxes[image_id][:4], "xywh", images.size(image_path), bad, root / "bounding_boxes.txt", where
            )
            if box is None:
                continue
            rows_by_split["train" if flag == "1" else "test"].append(
                {"image_path": image_path, "image_id": image_id, "label": label, "bbox": box}
            )
    return finish(
        rows_by_split, classification_features(names, with_box=True), out, images, bad, num_classes=len(names)
    )


def register(subparsers) -> None:
    p = new_parser(subparsers, "cub-boxes", "CUB-200-2011 -> classification with boxes", __doc__)
    p.add_argument("--in", dest="inp", required=True, help="CUB_200_2011 folder")
    p.add_argument("--raw-class-names", action="store_true", help="keep class names as in classes.txt")
    add_common_arguments(p)
    p.set_defaults(run=lambda a: convert_cub(a.inp, raw_class_names=a.raw_class_names, **common_kwargs(a)))
