"""MultiGrounding-style pickles (weakly-supervised grounding test sets: ReferIt, VG, Flickr30k) -> PHRASE.

These are the ``annotations/<split>.pickle`` files written by MultiGrounding's ``data_utils.py``
(Akbari et al. 2019) and read by WWbL and later WSG work. Two layouts are accepted:

1. MultiGrounding (checked against its ``data_utils.py``): ``{image_id: {"size": (H, W[, 3]),
   "annotations": [{"query": str, "bbox": [[x1, y1, x2, y2], ...], "category": set,
   "obj_id" | "ref_id": id, "source_sen": str (Flickr30k only)}, ...], ...}}``.
   ``data_utils.py`` writes **xyxy** boxes for all three datasets (Flickr30k: the raw 1-based XML
   corners; ReferIt: refer's xywh converted; VG: ``[x, y, x + w, y + h]``) -> ``--box-format xyxy``.
2. Simplified (assumed for hand-made files): ``{image_id: [(query, [box, ...]), ...]}`` where a
   single box may also be given bare; the box format is whatever ``--box-format`` says.

The box format cannot be told from the file, hence ``--box-format`` is required.

Rows: annotations with ``source_sen`` (Flickr30k) are grouped per sentence: one row per sentence,
``caption`` = the sentence, ``phrases`` = its queries. Otherwise (ReferIt, VG) each query is its own
row: ``caption`` = ``phrases[0]`` = the query. ``entity_ids`` = ``obj_id``/``ref_id`` (else the
query's index), ``phrase_types`` = first (sorted) ``category`` or "". Queries without boxes (Flickr
"notvisual") are left out of ``phrases`` and counted. ``image_path`` = ``--file-name-template``
with ``{image_id}`` and ``{saiapr_dir}`` (``image_id // 1000`` as 2 digits): e.g.
``{saiapr_dir}/images/{image_id}.jpg`` for ReferIt's saiapr_tc-12 tree, ``{image_id}.jpg`` (default)
for VG and Flickr30k. The split comes from the file name (``test.pickle`` -> ``test``) unless given.
Pickles can run code when loaded: only convert trusted files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vpg.data.schemas import PHRASE

from .coco import format_image_path
from .common import (
    BadSamples,
    Conversion,
    ConversionError,
    ImageSource,
    PathLike,
    add_common_arguments,
    common_kwargs,
    finish,
    load_pickle,
    new_parser,
    parse_box,
    split_files,
    split_from_name,
)

MULTIGROUNDING_SPLITS = ("train", "val", "test", "train_val")


def _is_number_list(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(v, (int, float)) for v in value)
    )


def _queries_of(entry: Any) -> tuple[list[dict], tuple[float, float] | None]:
    """Normalise one image entry to ``[{"query", "boxes", "entity", "type", "sentence"}]`` + size."""
    size = None
    if isinstance(entry, Mapping):
        raw_size = entry.get("size")
        anns = entry.get("annotations")
        if anns is None:
            raise ValueError("missing key 'annotations'")
        if raw_size is None and anns and isinstance(anns[0], Mapping):
            raw_size = anns[0].get("image_size")
        if raw_size is not None and len(raw_size) >= 2:
            size = (float(raw_size[1]), float(raw_size[0]))  # stored as (H, W[, C])
        queries = []
        for k, ann in enumerate(anns):
            if not isinstance(ann, Mapping) or "query" not in ann or "bbox" not in ann:
                raise ValueError(f"annotation {k} lacks 'query' or 'bbox'")
            category = ann.get("category") or []
            queries.append(
                {
                    "query": ann["query"],
                    "boxes": ann["bbox"],
                    "entity": ann.get("obj_id", ann.get("ref_id", k)),
                    "type": sorted(str(c) for c in category)[0] if category else "",
                    "sentence": ann.get("source_sen"),
                }
            )
        return queries, size
    if isinstance(entry, (list, tuple)):
        queries = []
        for k, pair in enumerate(entry):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"item {k} is not a (query, boxes) pair")
            boxes = [pair[1]] if _is_number_list(pair[1]) else list(pair[1])
            queries.append({"query": pair[0], "boxes": boxes, "entity": k, "type": "", "sentence": None})
        return queries, None
    raise ValueError(f"expected a dict or a list of (query, boxes), got {type(entry).__name__}")


def convert_multigrounding(
    paths: PathLike | list[PathLike],
    out: PathLike | None = None,
    *,
    box_format: str,
    split: str | None = None,
    file_name_template: str = "{image_id}.jpg",
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """MultiGrounding pickle(s) -> PHRASE, one dataset split per file (see module doc)."""
    paths = split_files(paths, split, box_format)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    without_boxes = 0
    rows_by_split: dict[str, list[dict]] = {}
    for path in paths:
        name = split or split_from_name(path.stem, MULTIGROUNDING_SPLITS)
        if name is None:
            raise ConversionError(
                path, f"unknown split in file name (expected one of {', '.join(MULTIGROUNDING_SPLITS)})"
            )
        data = load_pickle(path)
        if not isinstance(data, Mapping):
            raise ConversionError(path, f"expected a dict image_id -> annotations, got {type(data).__name__}")
        rows = rows_by_split.setdefault(name, [])
        for image_id, entry in data.items():
            where = f"image_id {image_id}"
            try:
                queries, size = _queries_of(entry)
            except ValueError as exc:
                bad(path, where, "invalid entry", str(exc))
                continue
            fields = {"image_id": image_id, "saiapr_dir": _saiapr_dir(image_id)}
            rel = format_image_path(file_name_template, fields, path, where)
            if images.missing(rel):
                bad(path, where, "missing image file", str(images.path(rel)))
                continue
            size = size or images.size(rel)
            by_caption: dict[str, dict] = {}
            for k, q in enumerate(queries):
                qwhere = f"{where} query {k}"
                text = q["query"].strip() if isinstance(q["query"], str) else ""
                if not text:
                    bad(path, qwhere, "empty sentence")
                    continue
                boxes = [parse_box(b, box_format, size, bad, path, qwhere) for b in q["boxes"]]
                boxes = [b for b in boxes if b is not None]
                if not boxes:
                    without_boxes += 1
                caption = (
                    q["sentence"].strip()
                    if isinstance(q["sentence"], str) and q["sentence"].strip()
                    else None
                )
                key = (
                    caption if caption is not None else f"\0{k}"
                )  # per-query rows unless grouped by sentence
                row = by_caption.get(key)
                if row is None:
                    row = by_caption[key] = {
                        "image_path": rel,
                        "image_id": str(image_id),
                        "caption": caption or text,
                        "phrases": [],
                        "boxes": [],
                        "entity_ids": [],
                        "phrase_types": [],
                    }
                if boxes:
                    row["phrases"].append(text)
                    row["boxes"].append(boxes)
                    row["entity_ids"].append(str(q["entity"]))
                    row["phrase_types"].append(q["type"])
            # A per-query row whose query has no box carries nothing to ground: leave it out (counted).
            rows.extend(r for key, r in by_caption.items() if r["phrases"] or not key.startswith("\0"))
    return finish(rows_by_split, PHRASE, out, images, bad, phrases_without_boxes=without_boxes)


def _saiapr_dir(image_id: Any) -> str:
    try:
        return f"{int(image_id) // 1000:02d}"
    except (TypeError, ValueError):
        return ""


def register(subparsers) -> None:
    p = new_parser(subparsers, "multigrounding", "MultiGrounding-style WSG pickles -> PHRASE", __doc__)
    p.add_argument("--in", dest="inp", nargs="+", required=True, help="<split>.pickle file(s)")
    p.add_argument(
        "--box-format",
        choices=("xywh", "xyxy"),
        required=True,
        help="boxes in the pickle (MultiGrounding's data_utils.py writes xyxy)",
    )
    p.add_argument("--split", default=None, help="split name for a single file (default: from its name)")
    p.add_argument("--file-name-template", default="{image_id}.jpg", help="image path template (see above)")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_multigrounding(
            a.inp,
            box_format=a.box_format,
            split=a.split,
            file_name_template=a.file_name_template,
            **common_kwargs(a),
        )
    )
