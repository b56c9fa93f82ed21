"""Command line: one argparse subcommand per raw format, each backed by a Python API function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import (
    coco,
    coop,
    cub,
    flickr30k,
    gold_candidates,
    hivg,
    imagenet_s,
    modelnet40,
    multigrounding,
    nuswide,
    reclip,
    refer,
    stanford_dogs,
    vg,
    voc,
    waterbirds,
)
from .common import ConversionError, eprint

# Order of the subcommands in ``--help``.
MODULES = (
    refer,
    reclip,
    gold_candidates,
    hivg,
    multigrounding,
    flickr30k,
    vg,
    coco,
    coop,
    voc,
    nuswide,
    cub,
    stanford_dogs,
    imagenet_s,
    waterbirds,
    modelnet40,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vpg.data.convert",
        description="Convert raw dataset annotations into local Hugging Face datasets in the "
        "vpg.data.schemas layouts (boxes: xyxy pixels of the original image).",
    )
    sub = parser.add_subparsers(dest="format", required=True, metavar="<format>")
    for module in MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except ConversionError as exc:
        eprint(f"error: {exc}")
        return 1
    except ValueError as exc:  # bad option combinations, e.g. --embed-images without --image-root
        eprint(f"error: {exc}")
        return 2
    print(result.report())
    skipped = result.summary.get("skipped") or {}
    if skipped:
        eprint(
            f"skipped {sum(skipped.values())} bad records: "
            + ", ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
