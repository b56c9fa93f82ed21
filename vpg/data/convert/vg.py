"""Visual Genome ``region_descriptions.json`` + ``image_data.json`` -> PHRASE.

``region_descriptions.json``: a list of ``{"id" (or "image_id"), "regions": [{"region_id", "phrase",
"x", "y", "width", "height", ...}]}`` (pixels, xywh). ``image_data.json``: a list of
``{"image_id" (or "id"), "width", "height", "url", "coco_id", "flickr_id"}``.

Rows: one per region — ``caption`` = ``phrases[0]`` = the region phrase (whitespace-stripped),
``boxes`` = ``[[xyxy]]``, ``entity_ids`` = ``[region_id]``, ``phrase_types`` = ``[""]``; or with
``group_per_image`` one row per image with all its regions as phrases and an empty ``caption``.
``coco_only`` keeps the images that also belong to COCO (``coco_id`` not null; WWbL's VG test set).
``image_path`` = ``--file-name-template`` with ``{image_id}`` and ``{url_path}`` (the last two parts
of the image URL, e.g. ``VG_100K_2/1.jpg``: the official zips' layout; the default), e.g.
``{image_id}.jpg`` for a merged image folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

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
    load_json,
    new_parser,
    parse_box,
)


def _image_key(record: Mapping) -> int | None:
    for key in ("image_id", "id"):
        if key in record:
            return record[key]
    return None


def convert_vg_regions(
    regions_path: PathLike,
    image_data_path: PathLike,
    out: PathLike | None = None,
    *,
    split: str = "train",
    group_per_image: bool = False,
    coco_only: bool = False,
    file_name_template: str = "{url_path}",
    image_root: PathLike | None = None,
    embed_images: bool = False,
    on_bad_sample: str = "raise",
) -> Conversion:
    """VG regions -> PHRASE (see module doc); images missing from image_data.json are bad records."""
    regions_path, image_data_path = Path(regions_path), Path(image_data_path)
    bad = BadSamples(on_bad_sample)
    images = ImageSource(image_root, embed_images)
    regions_data = load_json(regions_path)
    image_data = load_json(image_data_path)
    if not isinstance(regions_data, list):
        raise ConversionError(regions_path, "expected a list of per-image region records")
    if not isinstance(image_data, list):
        raise ConversionError(image_data_path, "expected a list of image records")
    meta = {}
    for i, rec in enumerate(image_data):
        key = _image_key(rec) if isinstance(rec, Mapping) else None
        if key is None:
            bad(image_data_path, f"record {i}", "missing key", "'image_id'")
            continue
        meta[key] = rec
    rows, not_coco = [], 0
    for i, rec in enumerate(regions_data):
        image_id = _image_key(rec) if isinstance(rec, Mapping) else None
        if image_id is None or "regions" not in rec:
            bad(regions_path, f"record {i}", "missing key", "'id'" if image_id is None else "'regions'")
            continue
        where = f"record {i} (image {image_id})"
        info = meta.get(image_id)
        if info is None:
            bad(regions_path, where, "unknown image", f"image {image_id} is not in {image_data_path.name}")
            continue
        if coco_only and info.get("coco_id") is None:
            not_coco += 1
            continue
        url_parts = str(info.get("url", "")).rstrip("/").split("/")
        fields = {
            "image_id": image_id,
            "url_path": "/".join(url_parts[-2:]) if len(url_parts) >= 2 else f"{image_id}.jpg",
        }
        rel = format_image_path(file_name_template, fields, image_data_path, f"image {image_id}")
        if images.missing(rel):
            bad(regions_path, where, "missing image file", str(images.path(rel)))
            continue
        size = (
            (float(info["width"]), float(info["height"]))
            if info.get("width") and info.get("height")
            else images.size(rel)
        )
        image_rows = []
        for k, region in enumerate(rec["regions"]):
            rwhere = (
                f"image {image_id} region {region.get('region_id', k) if isinstance(region, Mapping) else k}"
            )
            if not isinstance(region, Mapping) or not all(
                key in region for key in ("phrase", "x", "y", "width", "height")
            ):
                bad(regions_path, rwhere, "missing key", "one of 'phrase', 'x', 'y', 'width', 'height'")
                continue
            phrase = region["phrase"].strip() if isinstance(region["phrase"], str) else ""
            if not phrase:
                bad(regions_path, rwhere, "empty sentence")
                continue
            box = parse_box(
                [region["x"], region["y"], region["width"], region["height"]],
                "xywh",
                size,
                bad,
                regions_path,
                rwhere,
            )
            if box is None:
                continue
            image_rows.append(
                {
                    "image_path": rel,
                    "image_id": str(image_id),
                    "caption": phrase,
                    "phrases": [phrase],
                    "boxes": [[box]],
                    "entity_ids": [str(region.get("region_id", k))],
                    "phrase_types": [""],
                }
            )
        if group_per_image and image_rows:
            rows.append(
                {
                    "image_path": rel,
                    "image_id": str(image_id),
                    "caption": "",
                    **{
                        col: [r[col][0] for r in image_rows]
                        for col in ("phrases", "boxes", "entity_ids", "phrase_types")
                    },
                }
            )
        elif not group_per_image:
            rows.extend(image_rows)
    return finish({split: rows}, PHRASE, out, images, bad, images_not_in_coco=not_coco if coco_only else 0)


def register(subparsers) -> None:
    p = new_parser(subparsers, "vg-regions", "Visual Genome region descriptions -> PHRASE", __doc__)
    p.add_argument("--in", dest="inp", required=True, help="region_descriptions.json")
    p.add_argument("--image-data", required=True, help="image_data.json")
    p.add_argument("--split", default="train", help="split name (default: train)")
    p.add_argument("--group-per-image", action="store_true", help="one row per image instead of per region")
    p.add_argument(
        "--coco-only", action="store_true", help="keep only images that are also in COCO (coco_id)"
    )
    p.add_argument("--file-name-template", default="{url_path}", help="image path template (see above)")
    add_common_arguments(p)
    p.set_defaults(
        run=lambda a: convert_vg_regions(
            a.inp,
            a.image_data,
            split=a.split,
            group_per_image=a.group_per_image,
            coco_only=a.coco_only,
            file_name_template=a.file_name_template,
            **common_kwargs(a),
        )
    )
