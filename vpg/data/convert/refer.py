"""RefCOCO / RefCOCO+ / RefCOCOg / RefClef from the ``refer`` toolkit files -> REF.

Inputs are the ``refs(<splitBy>).p`` pickle (``unc``, ``umd``, ``google``, ``berkeley``) and the
dataset's COCO-style ``instances.json``. Each ref (one referred object with its expressions)
becomes one row in the split named by the ref's ``split`` (train/val/test/testA/testB/testC):

- ``bbox``: the ref's annotation box, COCO xywh -> xyxy pixels;
- ``sentences``: each sentence's ``sent`` (lower-cased, tokenised text) or ``raw``;
- ``candidates``: the boxes of all annotations of the image (the "gold proposals" setting),
  in ``instances.json`` order, so they contain ``bbox``;
- ``category``: the ref's category name; ``image_id``/``ref_id`` as strings;
- ``image_path``: ``instances.json``'s ``file_name`` through ``--file-name-template`` (default
  ``{auto}``: ``COCO_train2014_*.jpg`` -> ``train2014/COCO_train2014_*.jpg``, relative to the COCO
  root; fields ``{file_name}``, ``{id}``, ``{auto}``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from vpg.data.schemas import REF

from .coco import coco_image_path
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
    load_pickle,
    new_parser,
    parse_box,
    require,
)

REFER_SPLITS = ("train", "val", "test", "testA", "testB", "testC")


def load_instances(path: PathLike) -> dict:
    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise ConversionError(path, f"missing key {key!r} (expected a COCO instances JSON)")
    return data


def convert_refer(
    refs_path: PathLike,
    instances_path: PathLike,
    out: PathLike | None = None,
    *,
    sentence_field: str = "sent",
    file_name_template: str = "{auto}",
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """Refer pickle + instances JSON -> REF DatasetDict with one split per refer split (see module doc)."""
    if sentence_field not in ("sent", "raw"):
        raise ValueError(f"sentence_field must be 'sent' or 'raw', got {sentence_field!r}")
    refs_path, instances_path = Path(refs_path), Path(instances_path)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    refs = load_pickle(refs_path)
    if not isinstance(refs, list):
        raise ConversionError(refs_path, f"expected a list of refs, got {type(refs).__name__}")
    inst = load_instances(instances_path)

    image_by_id = {im["id"]: im for im in inst["images"] if isinstance(im, dict) and "id" in im}
    category_by_id = {c["id"]: c.get("name", str(c["id"])) for c in inst["categories"] if "id" in c}
    ann_by_id: dict = {}
    anns_of_image: dict = defaultdict(list)
    for i, ann in enumerate(inst["annotations"]):
        if not all(
            require(ann, k, instances_path, f"annotations[{i}]", bad) for k in ("id", "image_id", "bbox")
        ):
            continue
        ann_by_id[ann["id"]] = ann
        anns_of_image[ann["image_id"]].append(ann)

    candidates_cache: dict = {}  # image id -> xyxy boxes (validated once per image)

    def image_size(im: dict):
        w, h = im.get("width"), im.get("height")
        return (float(w), float(h)) if w and h else None

    def candidates_of(image_id, im):
        if image_id not in candidates_cache:
            boxes = []
            for ann in anns_of_image[image_id]:
                box = parse_box(
                    ann["bbox"],
                    "xywh",
                    image_size(im),
                    bad,
                    instances_path,
                    f"annotation id {ann['id']}",
                    "candidate box",
                )
                if box is not None:
                    boxes.append(box)
            candidates_cache[image_id] = boxes
        return candidates_cache[image_id]

    rows_by_split: dict[str, list[dict]] = {}
    for i, ref in enumerate(refs):
        where = f"ref {i}" + (
            f" (ref_id {ref['ref_id']})" if isinstance(ref, dict) and "ref_id" in ref else ""
        )
        keys = ("ref_id", "image_id", "ann_id", "split", "sentences")
        if not all(require(ref, k, refs_path, where, bad) for k in keys):
            continue
        split = ref["split"]
        if split not in REFER_SPLITS:
            bad(refs_path, where, "unknown split", f"{split!r} (expected one of {', '.join(REFER_SPLITS)})")
            continue
        im = image_by_id.get(ref["image_id"])
        if im is None:
            bad(
                refs_path,
                where,
                "unknown image",
                f"image_id {ref['image_id']} is not in {instances_path.name}",
            )
            continue
        ann = ann_by_id.get(ref["ann_id"])
        if ann is None:
            bad(
                refs_path,
                where,
                "unknown annotation",
                f"ann_id {ref['ann_id']} is not in {instances_path.name}",
            )
            continue
        bbox = parse_box(
            ann["bbox"],
            "xywh",
            image_size(im),
            bad,
            instances_path,
            f"annotation id {ann['id']} (referred by ref_id {ref['ref_id']})",
            "box",
        )
        if bbox is None:
            continue
        sentences = []
        for j, sent in enumerate(ref["sentences"]):
            text = sent.get(sentence_field) if isinstance(sent, dict) else sent
            text = text.strip() if isinstance(text, str) else ""
            if text:
                sentences.append(text)
            else:
                bad(refs_path, f"{where} sentence {j}", "empty sentence")
        if not sentences:
            bad(refs_path, where, "no sentences")
            continue
        category_id = ref.get("category_id", ann.get("category_id"))
        if category_id not in category_by_id:
            bad(refs_path, where, "unknown category", repr(category_id))
            continue
        rel = coco_image_path(im, file_name_template, instances_path, f"image id {im['id']}")
        if images.missing(rel):
            bad(refs_path, where, "missing image file", str(images.path(rel)))
            continue
        rows_by_split.setdefault(split, []).append(
            {
                "image_path": rel,
                "image_id": str(ref["image_id"]),
                "ref_id": str(ref["ref_id"]),
                "bbox": bbox,
                "sentences": sentences,
                "candidates": candidates_of(ref["image_id"], im),
                "category": category_by_id[category_id],
            }
        )
    ordered = {s: rows_by_split[s] for s in REFER_SPLITS if s in rows_by_split}
    return finish(ordered, REF, out, images, bad)


def register(subparsers) -> None:
    p = new_parser(subparsers, "refer", "refer pickle + COCO instances.json -> REF", __doc__)
    p.add_argument("--in", dest="inp", required=True, help="refs(unc).p / refs(umd).p / refs(google).p / ...")
    p.add_argument("--instances", required=True, help="the dataset's instances.json")
    p.add_argument(
        "--sentence-field", choices=("sent", "raw"), default="sent", help="which sentence text to use"
    )
    p.add_argument("--file-name-template", default="{auto}", help="image path template (see above)")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_refer(
            a.inp,
            a.instances,
            sentence_field=a.sentence_field,
            file_name_template=a.file_name_template,
            **common_kwargs(a),
        )
    )
