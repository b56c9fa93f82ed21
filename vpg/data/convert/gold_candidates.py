"""Gold REC candidates (every annotated object of each image) in ReCLIP's detections layout.

The "gold" setting of zero-shot REC ranks all annotated objects of the image. Hub copies of
RefCOCO/+/g such as ``jxu124/refcoco`` carry only the referred box, so the candidates come from
COCO's instances file (or the refer toolkit's ``instances.json``), written as
``{"<image_id>": [[x, y, w, h], ...]}``: the layout of ReCLIP's ``*_dets_dict.json`` that
``RefDataModule(candidates_file=..., candidates_box_format="xywh")`` and
:func:`vpg.data.convert.reclip.load_detections` read.

Boxes keep the file's order (refer's order too); each is checked against its image's
``width``/``height`` (corners up to 2 px outside are clipped, worse or zero-area boxes are bad
records). ``--no-crowd`` leaves out ``iscrowd`` annotations. The output is a JSON file, not a
dataset directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import BadSamples, PathLike, common_kwargs, new_parser, parse_box, require
from .refer import load_instances


@dataclass
class CandidatesFile:
    """Result of :func:`convert_gold_candidates`: ``{image_id: [xywh, ...]}`` and a summary."""

    candidates: dict[str, list[list[float]]]
    summary: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.summary.items() if k != "skipped"]
        lines += [f"skipped {k}: {v}" for k, v in self.summary.get("skipped", {}).items()]
        return "\n".join(lines)


def convert_gold_candidates(
    instances: PathLike,
    out: PathLike | None = None,
    *,
    include_crowd: bool = True,
    on_bad_sample: str = "raise",
) -> CandidatesFile:
    """COCO instances JSON -> ``{image_id (str): [[x, y, w, h], ...]}``, written to ``out`` when given."""
    instances = Path(instances)
    bad = BadSamples(on_bad_sample)
    data = load_instances(instances)
    sizes = {
        str(im["id"]): (float(im["width"]), float(im["height"]))
        for im in data["images"]
        if isinstance(im, Mapping) and {"id", "width", "height"} <= im.keys()
    }
    candidates: dict[str, list[list[float]]] = {}
    crowd = 0
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not (
            require(ann, "image_id", instances, where, bad) and require(ann, "bbox", instances, where, bad)
        ):
            continue
        if ann.get("iscrowd", 0):
            crowd += 1
            if not include_crowd:
                continue
        image_id = str(ann["image_id"])
        where = f"annotations[{i}] (id {ann.get('id')}, image {image_id})"
        box = parse_box(ann["bbox"], "xywh", sizes.get(image_id), bad, instances, where)
        if box is not None:
            x1, y1, x2, y2 = box
            candidates.setdefault(image_id, []).append([x1, y1, x2 - x1, y2 - y1])
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(candidates))
    summary = {
        "images": len(candidates),
        "boxes": sum(map(len, candidates.values())),
        ("crowd annotations" if include_crowd else "crowd annotations left out"): crowd,
        "skipped": bad.summary(),
    }
    return CandidatesFile(candidates, summary)


def register(subparsers) -> None:
    p = new_parser(
        subparsers, "gold-candidates", "COCO instances -> gold REC candidates (ReCLIP dets JSON)", __doc__
    )
    p.add_argument("--in", dest="inp", required=True, help="COCO instances_*.json or refer's instances.json")
    p.add_argument("--no-crowd", action="store_true", help="leave out iscrowd annotations")
    p.add_argument("--out", required=True, help="output JSON file ({image_id: [[x, y, w, h], ...]})")
    p.add_argument(
        "--on-bad-sample",
        choices=BadSamples.POLICIES,
        default="raise",
        help="raise (default) on the first bad annotation, or skip bad ones and print counts per reason",
    )
    p.set_defaults(
        run=lambda a: convert_gold_candidates(a.inp, include_crowd=not a.no_crowd, **common_kwargs(a))
    )
