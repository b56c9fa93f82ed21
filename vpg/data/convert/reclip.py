"""ReCLIP detection files (``*_dets_dict.json``) and ReCLIP ``.jsonl`` expression files -> REF.

Detection files (as read by ReCLIP's ``main.py --detector_file``) come in these layouts, all
supported by :func:`load_detections`:

- ``{"<image_id>": [[x, y, w, h], ...]}`` — ReCLIP's ``{refcoco,refcoco+,refcocog}_dets_dict.json``;
  extra numbers after the first four (a score) are ignored; a box may also be a dict with a
  ``box``/``bbox`` list or ``x``/``y``/``w``/``h`` keys;
- ``{"<image_id>": {"boxes": [...], "scores": [...]}}``;
- ``[{"image_id": ..., "box": [...]}, ...]`` (also under a top-level ``"dets"`` key, as the refer
  toolkit's detection files).

Boxes are xywh unless ``box_format="xyxy"``. An image of the REF dataset without any detection
falls back to the whole-image box ``[0, 0, W, H]``, as ReCLIP does; these are counted per split.

ReCLIP jsonl (assumed layout, one JSON object per line, as read by ReCLIP's ``main.py``):
``file_name`` (``COCO_train2014_<image>_<ann_id>.jpg``; the ``_<ann_id>`` suffix is dropped for COCO
names, giving a path relative to ``train2014/`` like ReCLIP's ``--image_root``), ``image_id``,
``anns`` (list of ``{"id", "bbox": [x, y, w, h], "category_id"}`` — all objects of the image),
``ann_id`` (the referred annotation id, or a list of them: the first found is the ``bbox``),
``sentences`` (list of ``{"raw": ..., "sent": ...}`` or strings), optional ``ref_id``, ``width``,
``height``. Its split comes from the file name (``refcoco_testa.jsonl`` -> ``testA``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict, Image, load_from_disk

from vpg.data.schemas import REF

from .common import (
    BadSamples,
    Conversion,
    ConversionError,
    ImageSource,
    PathLike,
    add_common_arguments,
    check_box,
    common_kwargs,
    finish,
    load_json,
    load_jsonl,
    new_parser,
    parse_box,
    report_box,
    require,
    split_from_name,
)

_JSONL_SPLITS = {
    "train": "train",
    "val": "val",
    "test": "test",
    "testa": "testA",
    "testb": "testB",
    "testc": "testC",
}


def _box_of(item: Any) -> Any:
    if isinstance(item, Mapping):
        if "box" in item:
            return _box_of(item["box"])
        if "bbox" in item:
            return _box_of(item["bbox"])
        if all(k in item for k in ("x", "y", "w", "h")):
            return [item["x"], item["y"], item["w"], item["h"]]
        raise ValueError(f"detection {item!r} has no 'box'/'bbox'")
    return item


def load_detections(
    path: PathLike, box_format: str = "xywh", *, on_bad_sample: str = "raise", bad: BadSamples | None = None
) -> dict[str, torch.Tensor]:
    """Detections file -> ``{image_id (str): FloatTensor (K, 4) xyxy}`` (see module doc for layouts).

    Invalid or zero-area boxes raise :class:`ConversionError` (or are skipped and counted with
    ``on_bad_sample="skip"``); an image whose boxes are all invalid maps to a (0, 4) tensor.
    """
    path = Path(path)
    bad = bad or BadSamples(on_bad_sample)
    data = load_json(path)
    if isinstance(data, Mapping) and "dets" in data and isinstance(data["dets"], list):
        data = data["dets"]
    per_image: dict[str, list] = {}
    if isinstance(data, Mapping):
        for image_id, value in data.items():
            if isinstance(value, Mapping):
                if "boxes" not in value:
                    bad(path, f"image_id {image_id}", "missing key", "'boxes'")
                    continue
                value = value["boxes"]
            if not isinstance(value, list):
                bad(
                    path,
                    f"image_id {image_id}",
                    "invalid detections",
                    f"expected a list, got {type(value).__name__}",
                )
                continue
            per_image[str(image_id)] = value
    elif isinstance(data, list):
        for i, det in enumerate(data):
            if not require(det, "image_id", path, f"detection {i}", bad):
                continue
            per_image.setdefault(str(det["image_id"]), []).append(det)
    else:
        raise ConversionError(path, f"expected a dict or list of detections, got {type(data).__name__}")
    result = {}
    for image_id, items in per_image.items():
        boxes = []
        for k, item in enumerate(items):
            try:
                raw = _box_of(item)
            except ValueError as exc:
                bad(path, f"image_id {image_id} detection {k}", "invalid detection box", str(exc))
                continue
            box = parse_box(
                raw, box_format, None, bad, path, f"image_id {image_id} detection {k}", "detection box"
            )
            if box is not None:
                boxes.append(box)
        result[image_id] = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return result


def _candidates_from(
    dets: torch.Tensor | None,
    size: tuple[float, float] | None,
    file: PathLike,
    where: str,
    bad: BadSamples,
) -> tuple[list[list[float]], bool]:
    """Detections of one image as validated xyxy lists; whole-image box when there are none."""
    boxes = []
    for k, box in enumerate([] if dets is None else dets.tolist()):
        box, kind, detail = check_box(box, size)
        if box is None:
            report_box(bad, file, f"{where} detection {k}", kind, detail, "detection box")
        else:
            boxes.append(box)
    if boxes:
        return boxes, False
    if size is None:
        raise ConversionError(
            file,
            "no detections and unknown image size for the whole-image box "
            "(pass --image-root, --instances or width/height)",
            where,
        )
    return [[0.0, 0.0, float(size[0]), float(size[1])]], True


def _sizes_from_instances(path: PathLike | None) -> dict[str, tuple[float, float]]:
    if path is None:
        return {}
    data = load_json(path)
    return {
        str(im["id"]): (float(im["width"]), float(im["height"]))
        for im in (data.get("images", []) if isinstance(data, Mapping) else [])
        if isinstance(im, Mapping) and {"id", "width", "height"} <= im.keys()
    }


def attach_detections(
    ref_dataset: DatasetDict | PathLike,
    detections: Mapping[str, torch.Tensor] | PathLike,
    out: PathLike | None = None,
    *,
    box_format: str = "xywh",
    image_sizes: Mapping[str, tuple[float, float]] | None = None,
    image_root: PathLike | None = None,
    on_bad_sample: str = "raise",
) -> Conversion:
    """Replace the ``candidates`` of a REF dataset by detections (keyed by ``image_id``).

    Image sizes (for validation and the whole-image fallback) come from ``image_sizes``, else from
    an embedded ``image`` column, else from ``image_root / image_path``.
    """
    bad = BadSamples(on_bad_sample)
    source = "<dataset>"
    if not isinstance(ref_dataset, DatasetDict):
        source = str(ref_dataset)
        if out is not None and Path(out).resolve() == Path(ref_dataset).resolve():
            raise ValueError("--out must differ from the input dataset directory")
        ref_dataset = load_from_disk(str(ref_dataset))
    det_file = "<detections>"
    if not isinstance(detections, Mapping):
        det_file = str(detections)
        detections = load_detections(detections, box_format, bad=bad)
    images = ImageSource(image_root)
    sizes = dict(image_sizes or {})
    fallback: Counter[str] = Counter()
    new = {}
    for split, ds in ref_dataset.items():
        if "candidates" not in ds.column_names:
            raise ConversionError(source, "not a REF dataset (no 'candidates' column)", f"split {split}")
        if "image" in ds.column_names:  # read sizes from bytes without decoding every pixel
            ds_raw = ds.cast_column("image", Image(decode=False))
        else:
            ds_raw = ds
        candidates = []
        for i, row in enumerate(ds_raw):
            image_id = str(row["image_id"])
            size = sizes.get(image_id)
            if size is None:
                size = _row_image_size(row, images)
                if size is not None:
                    sizes[image_id] = size
            boxes, fell_back = _candidates_from(
                detections.get(image_id), size, det_file, f"split {split} row {i} (image_id {image_id})", bad
            )
            fallback[split] += fell_back
            candidates.append(boxes)
        columns = ds.column_names
        ds = ds.remove_columns("candidates").add_column("candidates", candidates, feature=REF["candidates"])
        new[split] = ds.select_columns(columns)
    result = DatasetDict(new)
    if out is not None:
        result.save_to_disk(str(out))
        result = load_from_disk(str(out))
    summary = {
        "rows": {k: len(v) for k, v in result.items()},
        "images_with_detections": len(detections),
        "fallback_whole_image": dict(fallback),
        "skipped": bad.summary(),
    }
    return Conversion(result, summary)


def _row_image_size(row: Mapping, images: ImageSource) -> tuple[float, float] | None:
    image = row.get("image")
    if isinstance(image, Mapping) and image.get("bytes"):
        from PIL import Image as PILImage

        with PILImage.open(BytesIO(image["bytes"])) as im:
            return float(im.size[0]), float(im.size[1])
    if row.get("image_path") is not None:
        size = images.size(row["image_path"])
        return None if size is None else (float(size[0]), float(size[1]))
    return None


def _reclip_file_name(name: str) -> str:
    # ReCLIP's COCO file names carry the referred annotation id: COCO_train2014_<img>_<ann>.jpg.
    if "coco" in name.lower():
        return "_".join(name.split("_")[:-1]) + ".jpg"
    return name


def convert_reclip_jsonl(
    paths: PathLike | list[PathLike],
    out: PathLike | None = None,
    *,
    detections: Mapping[str, torch.Tensor] | PathLike | None = None,
    box_format: str = "xywh",
    split: str | None = None,
    sentence_field: str = "raw",
    category_names: Mapping[int, str] | None = None,
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """ReCLIP jsonl file(s) -> REF (layout in the module doc); candidates = ``anns`` or detections."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if split is not None and len(paths) > 1:
        raise ValueError("split can only be given for a single jsonl file")
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    det_file = "<detections>"
    if detections is not None and not isinstance(detections, Mapping):
        det_file = str(detections)
        detections = load_detections(detections, box_format, bad=bad)
    fallback: Counter[str] = Counter()
    multi_gold = 0
    rows_by_split: dict[str, list[dict]] = {}
    for path in paths:
        name = split or split_from_name(path.stem, list(_JSONL_SPLITS))
        if name is None:
            raise ConversionError(
                path, f"unknown split in file name (expected a suffix _{'/_'.join(_JSONL_SPLITS)})"
            )
        name = _JSONL_SPLITS.get(name, name)
        rows = rows_by_split.setdefault(name, [])
        for i, datum in enumerate(load_jsonl(path)):
            where = f"line {i + 1}"
            if not all(
                require(datum, k, path, where, bad)
                for k in ("file_name", "image_id", "anns", "ann_id", "sentences")
            ):
                continue
            image_id = str(datum["image_id"])
            where = f"line {i + 1} (image_id {image_id})"
            rel = _reclip_file_name(str(datum["file_name"]))
            if images.missing(rel):
                bad(path, where, "missing image file", str(images.path(rel)))
                continue
            size = (
                (float(datum["width"]), float(datum["height"]))
                if datum.get("width") and datum.get("height")
                else images.size(rel)
            )
            gold_ids = datum["ann_id"] if isinstance(datum["ann_id"], list) else [datum["ann_id"]]
            gold, anns_boxes = None, []
            for k, ann in enumerate(datum["anns"]):
                if not require(ann, "bbox", path, f"{where} anns[{k}]", bad):
                    continue
                box = parse_box(ann["bbox"], "xywh", size, bad, path, f"{where} anns[{k}]", "candidate box")
                if box is None:
                    continue
                anns_boxes.append(box)
                if gold is None and ann.get("id") in gold_ids:
                    gold = (box, ann)
            if gold is None:
                bad(path, where, "referred annotation not in anns", f"ann_id {datum['ann_id']!r}")
                continue
            multi_gold += len(gold_ids) > 1
            sentences = []
            for j, sent in enumerate(datum["sentences"]):
                text = sent.get(sentence_field) if isinstance(sent, Mapping) else sent
                text = text.strip() if isinstance(text, str) else ""
                if text:
                    sentences.append(text)
                else:
                    bad(path, f"{where} sentence {j}", "empty sentence")
            if not sentences:
                bad(path, where, "no sentences")
                continue
            if detections is not None:
                candidates, fell_back = _candidates_from(detections.get(image_id), size, det_file, where, bad)
                fallback[name] += fell_back
            else:
                candidates = anns_boxes
            category_id = gold[1].get("category_id", "")
            category = (category_names or {}).get(category_id, str(category_id))
            rows.append(
                {
                    "image_path": rel,
                    "image_id": image_id,
                    "ref_id": str(datum.get("ref_id", f"{path.stem}:{i}")),
                    "bbox": gold[0],
                    "sentences": sentences,
                    "candidates": candidates,
                    "category": category,
                }
            )
    extra: dict[str, Any] = {"refs_with_several_gold_anns": multi_gold}
    if detections is not None:
        extra["fallback_whole_image"] = dict(fallback)
    return finish(rows_by_split, REF, out, images, bad, **extra)


def register(subparsers) -> None:
    p = new_parser(
        subparsers,
        "reclip-dets",
        "ReCLIP detections -> candidates of a REF dataset; or ReCLIP jsonl -> REF",
        __doc__,
        "Modes: --ref-dataset DIR --dets FILE (replace candidates of a saved REF dataset), or "
        "--jsonl FILE... [--dets FILE] (build a REF dataset from ReCLIP jsonl).",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ref-dataset", help="a saved REF DatasetDict whose candidates get replaced")
    mode.add_argument("--jsonl", nargs="+", help="ReCLIP jsonl file(s), e.g. refcoco_testa.jsonl")
    p.add_argument(
        "--dets", default=None, help="detections JSON (*_dets_dict.json); required with --ref-dataset"
    )
    p.add_argument("--box-format", choices=("xywh", "xyxy"), default="xywh", help="box format of --dets")
    p.add_argument(
        "--instances",
        default=None,
        help="COCO instances.json: image sizes (--ref-dataset) / category names (--jsonl)",
    )
    p.add_argument(
        "--split", default=None, help="split name for a single --jsonl file (default: from its name)"
    )
    p.add_argument("--sentence-field", choices=("raw", "sent"), default="raw", help="jsonl sentence text")
    add_common_arguments(p)
    p.set_defaults(run=_run)


def _run(a) -> Conversion:
    kwargs = common_kwargs(a)
    if a.ref_dataset:
        if a.dets is None:
            raise ValueError("--ref-dataset needs --dets")
        if a.embed_images:
            raise ValueError(
                "--embed-images does not apply to --ref-dataset (its images are kept as they are)"
            )
        return attach_detections(
            a.ref_dataset,
            a.dets,
            a.out,
            box_format=a.box_format,
            image_sizes=_sizes_from_instances(a.instances),
            image_root=a.image_root,
            on_bad_sample=a.on_bad_sample,
        )
    names = None
    if a.instances:
        data = load_json(a.instances)
        names = {c["id"]: c["name"] for c in data.get("categories", []) if "id" in c and "name" in c}
    return convert_reclip_jsonl(
        a.jsonl,
        detections=a.dets,
        box_format=a.box_format,
        split=a.split,
        sentence_field=a.sentence_field,
        category_names=names,
        **kwargs,
    )
