"""The FALIP results table on vpg-shapes (docs/falip.md), measured through the `vpg` CLI.

Every row is `vpg test --config experiments/shapes/falip_rec.yaml <overrides>` with the
committed tiny CLIP; columns are Acc@0.5 on shapes-ref testA / testB / val. The layer
ablation (`--layers`) runs on val only, so nothing is chosen on the test splits.

    .venv/bin/python scripts/falip_shapes_table.py                 # main table (markdown)
    .venv/bin/python scripts/falip_shapes_table.py --layers        # + layer sets, val only
    .venv/bin/python scripts/falip_shapes_table.py --json out.json # also write the numbers
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

CONFIG = "experiments/shapes/falip_rec.yaml"
SPLITS = ("testA", "testB", "val")

# (row label, overrides of the config)
ROWS: list[tuple[str, list[str]]] = [
    ("none (full image; ties broken at random)", ["--model.init_args.prompt", "none"]),
    ("crop", ["--model.init_args.prompt", "crop"]),
    ("RedCircle", ["--model.init_args.prompt", "redcircle"]),
    ("Blur", ["--model.init_args.prompt", "blur"]),
    ("RedCircle+Blur", ["--model.init_args.prompt", "redcircle+blur"]),
    ("FALIP a", []),
    ("FALIP b", ["--model.init_args.form", "b"]),
    ("FALIP c", ["--model.init_args.form", "c"]),
    ("FALIP a + P (subtract, Q=500)", ["--model.init_args.subtract", "true"]),
    ("E = FALIP a + crop + Blur", ["--model.init_args.prompt", "[falip, crop, blur]"]),
    ("RedCircle+FA", ["--model.init_args.prompt", "redcircle+falip"]),
    ("RedCircle, unleashed (Eq. 5-6)", ["--model.init_args.prompt", "redcircle", "--model.init_args.unleash", "true"]),
]

# layer sets of the 6-block tower, compared on val only (the config's [4, 5] is the rule's choice)
LAYER_ROWS: list[tuple[str, str]] = [
    ("[5]", "[5]"), ("[4, 5] (config: last third)", "[4, 5]"), ("[3, 4, 5]", "[3, 4, 5]"),
    ("[2, 3, 4, 5]", "[2, 3, 4, 5]"), ("all", "all"),
]


def run(overrides: list[str], splits: tuple[str, ...] = SPLITS) -> dict[str, float]:
    """One `vpg test` in-process; returns {split: Acc@0.5}."""
    from vpg.cli import VPGCLI

    args = ["test", "--config", CONFIG, *overrides, "--data.init_args.test_splits", json.dumps(list(splits)),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.name", "falip_shapes_table", "--model.init_args.log_images", "0"]
    with contextlib.redirect_stdout(io.StringIO()):
        cli = VPGCLI(args=args)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    return {s: metrics[f"test/acc@0.5/{s}"] for s in splits}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", action="store_true", help="also compare layer sets (val only)")
    parser.add_argument("--json", type=Path, help="write the numbers to this JSON file")
    parser.add_argument("--rows", help="comma-separated row numbers to run (default: all)")
    args = parser.parse_args(argv)
    if not Path("checkpoints/vpg_shapes_clip.safetensors").is_file():
        sys.exit("checkpoints/vpg_shapes_clip.safetensors is missing; run `make pretrain`")
    chosen = ROWS if not args.rows else [ROWS[int(i)] for i in args.rows.split(",")]
    results: dict[str, dict] = {"main": {}, "layers_val": {}}
    print(f"| prompt | {' | '.join(SPLITS)} |")
    print(f"| --- |{' ---: |' * len(SPLITS)}")
    for label, overrides in chosen:
        start = time.time()
        acc = run(overrides)
        results["main"][label] = {"overrides": overrides, **acc}
        print(f"| {label} | {' | '.join(f'{100 * acc[s]:.1f}' for s in SPLITS)} |", flush=True)
        print(f"<!-- {time.time() - start:.0f} s -->", file=sys.stderr)
    if args.layers:
        print("\n| FALIP a, masked blocks | val |\n| --- | ---: |")
        for label, layers in LAYER_ROWS:
            acc = run(["--model.init_args.layers", layers], splits=("val",))
            results["layers_val"][label] = acc["val"]
            print(f"| {label} | {100 * acc['val']:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
