"""Gold REC candidates (every annotated object of each image) in ReCLIP's detections format.

The "gold" setting of zero-shot REC ranks all annotated objects of the image. Hub copies of
RefCOCO/+/g such as jxu124/refcoco carry only the referred box, so the candidates come from
COCO's instances file, written as ``{"<image_id>": [[x, y, w, h], ...]}`` - the layout of ReCLIP's
``*_dets_dict.json`` that ``RefDataModule(candidates_file=..., candidates_box_format="xywh")`` reads.

    python scripts/falip_gold_candidates.py --instances data/coco/annotations/instances_train2014.json \\
        --out data/refcoco/gold_candidates.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def gold_candidates(instances: dict, include_crowd: bool = True) -> dict[str, list[list[float]]]:
    """image id (str) -> xywh boxes of its annotations, in file order (refer's order too)."""
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    for ann in instances["annotations"]:
        if not include_crowd and ann.get("iscrowd", 0):
            continue
        boxes[str(ann["image_id"])].append([float(v) for v in ann["bbox"]])
    return dict(boxes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=Path, required=True, help="COCO instances_*.json (or refer's instances.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-crowd", action="store_true", help="leave out iscrowd annotations")
    args = parser.parse_args(argv)
    candidates = gold_candidates(json.loads(args.instances.read_text()), include_crowd=not args.no_crowd)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(candidates))
    print(f"{args.out}: {len(candidates)} images, {sum(map(len, candidates.values()))} boxes")


if __name__ == "__main__":
    main()
