"""COCO captions (COCO caption JSON or Karpathy split JSON) and COCO-80 multi-label recognition.

Image paths come from a ``file_name_template`` formatted per image with these fields:

- ``{file_name}``: the JSON's file name (Karpathy: ``filename``), ``{id}``: the integer image id
  (Karpathy: ``cocoid``, else ``imgid``), ``{filepath}``: Karpathy's folder (``val2014``);
- ``{auto}`` (default): a path relative to the COCO root — 2014 names ``COCO_val2014_*.jpg`` get
  their ``val2014/`` folder, other names take the folder of ``coco_url`` (``val2017/``), Karpathy
  entries use ``filepath/filename``.

Some redistributions list 2014 images under 2017 names (``000000262148.jpg``); map them back with
e.g. ``--file-name-template 'val2014/COCO_val2014_{id:012d}.jpg'``.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from vpg.data.schemas import CAPTIONS, multilabel_features

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
    require,
)

_COCO2014_NAME = re.compile(r"COCO_((?:train|val|test)\d{4})_\d+\.\w+$")
_COCO_DIR = re.compile(r"(train|val|test|unlabeled)\d{4}$")


def coco_auto_path(image: dict) -> str:
    """Path of a COCO image relative to the COCO root (``train2014/COCO_train2014_...jpg``)."""
    name = str(image.get("file_name", ""))
    if "/" in name:  # already relative to some root
        return name
    m = _COCO2014_NAME.match(name)
    if m:
        return f"{m.group(1)}/{name}"
    url = str(image.get("coco_url", ""))
    parts = url.rstrip("/").split("/")
    if len(parts) >= 2 and _COCO_DIR.match(parts[-2]):
        return f"{parts[-2]}/{name}"
    return name


def format_image_path(template: str, fields: dict[str, Any], file: PathLike, record: Any) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConversionError(
            file, f"cannot format file name template {template!r}: {type(exc).__name__}: {exc}", record
        ) from exc


def coco_image_path(image: dict, template: str, file: PathLike, record: Any) -> str:
    fields = {"file_name": image.get("file_name", ""), "id": image.get("id"), "auto": coco_auto_path(image)}
    return format_image_path(template, fields, file, record)


def _split_from_stem(stem: str, default: str = "train") -> str:
    m = re.search(r"(train|val|test)", stem.lower())
    return m.group(1) if m else default


# -------------------------------------------------------------------------------------- captions


def convert_coco_captions(
    captions_path: PathLike,
    out: PathLike | None = None,
    *,
    split: str | None = None,
    file_name_template: str = "{auto}",
    keep_restval: bool = False,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """COCO caption JSON or Karpathy JSON -> CAPTIONS rows (one per image, captions in file order).

    - COCO layout (``images`` + ``annotations`` with ``caption``): one split, ``split`` or guessed
      from the file name (``captions_val2014`` -> ``val``; default ``train``).
    - Karpathy layout (``images`` with ``sentences`` and ``split``): one dataset split per Karpathy
      split; ``restval`` is merged into ``train`` (the usual 113k train) unless ``keep_restval``.

    Images without any caption are not written (counted in the summary).
    """
    path = Path(captions_path)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    data = load_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise ConversionError(path, "missing key 'images' (expected a COCO caption or Karpathy JSON)")
    karpathy = any(isinstance(im, dict) and "sentences" in im for im in data["images"])
    if karpathy:
        rows_by_split, stats = _karpathy_rows(path, data, file_name_template, keep_restval, images, bad)
    else:
        split_name = split or _split_from_stem(path.stem)
        rows, stats = _coco_caption_rows(path, data, file_name_template, images, bad)
        rows_by_split = {split_name: rows}
    return finish(
        rows_by_split, CAPTIONS, out, images, bad, layout="karpathy" if karpathy else "coco", **stats
    )


def _clean_captions(raw: list[Any], path: Path, where: str, bad: BadSamples) -> list[str]:
    captions = []
    for j, text in enumerate(raw):
        text = text.strip() if isinstance(text, str) else ""
        if text:
            captions.append(text)
        else:
            bad(path, f"{where} caption {j}", "empty sentence")
    return captions


def _image_ok(rel: str, path: Path, where: str, images: ImageSource, bad: BadSamples) -> bool:
    if images.missing(rel):
        bad(path, where, "missing image file", str(images.path(rel)))
        return False
    return True


def _coco_caption_rows(path, data, template, images, bad):
    if not require(data, "annotations", path, "top level", bad):
        return [], {}
    by_id: dict[Any, dict] = {}
    for i, im in enumerate(data["images"]):
        if require(im, "id", path, f"images[{i}]", bad):
            by_id[im["id"]] = im
    captions: dict[Any, list[str]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not (require(ann, "image_id", path, where, bad) and require(ann, "caption", path, where, bad)):
            continue
        if ann["image_id"] not in by_id:
            bad(path, where, "unknown image", f"image_id {ann['image_id']} is not in 'images'")
            continue
        text = ann["caption"].strip() if isinstance(ann["caption"], str) else ""
        if not text:
            bad(path, f"{where} (id {ann.get('id')})", "empty sentence")
            continue
        captions[ann["image_id"]].append(text)
    rows, without = [], 0
    for image_id, im in by_id.items():
        if not captions.get(image_id):
            without += 1
            continue
        where = f"image id {image_id}"
        rel = coco_image_path(im, template, path, where)
        if _image_ok(rel, path, where, images, bad):
            rows.append({"image_path": rel, "image_id": str(image_id), "captions": captions[image_id]})
    return rows, {"images_without_captions": without}


def _karpathy_rows(path, data, template, keep_restval, images, bad):
    rows_by_split: dict[str, list[dict]] = {}
    without = 0
    for i, im in enumerate(data["images"]):
        where = f"images[{i}]"
        if not (require(im, "filename", path, where, bad) and require(im, "split", path, where, bad)):
            continue
        split = im["split"]
        if split == "restval" and not keep_restval:
            split = "train"
        if split not in ("train", "val", "test", "restval"):
            bad(path, where, "unknown split", repr(split))
            continue
        image_id = im.get("cocoid", Path(im["filename"]).stem)
        raw = [s.get("raw", "") if isinstance(s, dict) else s for s in im.get("sentences", [])]
        captions = _clean_captions(raw, path, where, bad)
        if not captions:
            without += 1
            continue
        filepath = im.get("filepath", "")
        fields = {
            "file_name": im["filename"],
            "filename": im["filename"],
            "filepath": filepath,
            "id": im.get("cocoid", im.get("imgid")),
            "auto": f"{filepath}/{im['filename']}" if filepath else im["filename"],
        }
        rel = format_image_path(template, fields, path, where)
        if _image_ok(rel, path, where, images, bad):
            rows_by_split.setdefault(split, []).append(
                {"image_path": rel, "image_id": str(image_id), "captions": captions}
            )
    return rows_by_split, {"images_without_captions": without}


# ------------------------------------------------------------------------------------ multilabel


def convert_coco_multilabel(
    instances_path: PathLike,
    out: PathLike | None = None,
    *,
    split: str | None = None,
    file_name_template: str = "{auto}",
    drop_unlabeled: bool = False,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """COCO ``instances_*.json`` -> multi-label rows over its categories (COCO-80).

    Class names are the categories sorted by category id (the usual COCO-80 order); a row's
    ``labels`` are the distinct categories of all its annotations (crowd ones included). Images
    without annotations are kept with empty labels unless ``drop_unlabeled`` (counted either way).
    """
    from pycocotools.coco import COCO

    path = Path(instances_path)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    data = load_json(path)  # read ourselves for clear errors, then hand the dict to pycocotools
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise ConversionError(path, f"missing key {key!r} (expected a COCO instances JSON)")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise ConversionError(path, f"malformed COCO instances: {type(exc).__name__}: {exc}") from exc
    cat_ids = sorted(coco.getCatIds())
    class_names = [coco.cats[c]["name"] for c in cat_ids]
    index_of = {c: i for i, c in enumerate(cat_ids)}
    rows, unlabeled = [], 0
    for image_id in coco.getImgIds():
        where = f"image id {image_id}"
        labels = set()
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get("category_id") not in index_of:
                bad(path, f"annotation id {ann.get('id')}", "unknown category", repr(ann.get("category_id")))
                continue
            labels.add(index_of[ann["category_id"]])
        if not labels:
            unlabeled += 1
            if drop_unlabeled:
                continue
        rel = coco_image_path(coco.imgs[image_id], file_name_template, path, where)
        if _image_ok(rel, path, where, images, bad):
            rows.append({"image_path": rel, "image_id": str(image_id), "labels": sorted(labels)})
    split_name = split or _split_from_stem(path.stem)
    return finish(
        {split_name: rows},
        multilabel_features(class_names),
        out,
        images,
        bad,
        num_classes=len(class_names),
        unlabeled_images=unlabeled,
        dropped_unlabeled=unlabeled if drop_unlabeled else 0,
    )


# ------------------------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    p = new_parser(
        subparsers,
        "coco-captions",
        "COCO caption JSON or Karpathy split JSON -> CAPTIONS",
        convert_coco_captions.__doc__,
        __doc__,
    )
    p.add_argument("--in", dest="inp", required=True, help="captions_*.json or Karpathy dataset_*.json")
    p.add_argument(
        "--split", default=None, help="split name for the COCO layout (default: from the file name)"
    )
    p.add_argument("--file-name-template", default="{auto}", help="image path template (see above)")
    p.add_argument("--keep-restval", action="store_true", help="Karpathy: keep restval as its own split")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_coco_captions(
            a.inp,
            split=a.split,
            file_name_template=a.file_name_template,
            keep_restval=a.keep_restval,
            **common_kwargs(a),
        )
    )

    p = new_parser(
        subparsers,
        "coco-multilabel",
        "COCO instances JSON -> multi-label rows over the 80 categories",
        convert_coco_multilabel.__doc__,
        __doc__,
    )
    p.add_argument("--in", dest="inp", required=True, help="instances_*.json")
    p.add_argument("--split", default=None, help="split name (default: from the file name, else train)")
    p.add_argument("--file-name-template", default="{auto}", help="image path template (see above)")
    p.add_argument("--drop-unlabeled", action="store_true", help="leave out images without annotations")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_coco_multilabel(
            a.inp,
            split=a.split,
            file_name_template=a.file_name_template,
            drop_unlabeled=a.drop_unlabeled,
            **common_kwargs(a),
        )
    )
