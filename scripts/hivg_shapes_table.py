"""The HiVG ablation table on vpg-shapes (docs/hivg.md), measured through the `vpg` CLI.

Every row trains one config of experiments/shapes/ with the committed tiny CLIP
(`vpg fit`), then tests its last checkpoint (`vpg test`) on shapes-ref testA / testB / val
(Acc@0.5). Rows share data, epochs, learning rate per epoch and grounding head:

    warm-up only    hivg_warmup.yaml     frozen CLIP + grounding head (no bridge, no LoRA)
    + MACB          hivg_macb.yaml       + bridges
    + HiLoRA        hivg_hilora.yaml     + HiLoRA stages (no bridge)
    one-round LoRA  hivg_oneround.yaml   bridges + one LoRA stage over every block
    full HiVG       hivg.yaml            bridges + HiLoRA

    .venv/bin/python scripts/hivg_shapes_table.py                   # all rows (CPU: long, see docs/hivg.md)
    .venv/bin/python scripts/hivg_shapes_table.py --rows full       # one row
    .venv/bin/python scripts/hivg_shapes_table.py --train-batches 20 --json out.json   # shortened epochs

Prints a markdown table (plus each row's training wall time) and optionally writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

ROWS: dict[str, tuple[str, str]] = {
    "warmup": ("warm-up only (frozen CLIP + grounding head)", "experiments/shapes/hivg_warmup.yaml"),
    "macb": ("+ MACB", "experiments/shapes/hivg_macb.yaml"),
    "hilora": ("+ HiLoRA (no bridge)", "experiments/shapes/hivg_hilora.yaml"),
    "oneround": ("one-round LoRA (+ MACB)", "experiments/shapes/hivg_oneround.yaml"),
    "full": ("full HiVG (MACB + HiLoRA)", "experiments/shapes/hivg.yaml"),
}
SPLITS = ("testA", "testB", "val")


def run(args: list[str]):
    from vpg.cli import VPGCLI

    with contextlib.redirect_stdout(io.StringIO()):
        return VPGCLI(args=args)


def measure(key: str, extra: list[str]) -> dict:
    label, config = ROWS[key]
    common = ["--config", config, "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.logger.init_args.name", f"hivg_shapes_table_{key}", *extra]
    start = time.perf_counter()
    fit = run(["fit", *common])
    train_s = time.perf_counter() - start
    last = fit.trainer.checkpoint_callback.last_model_path
    test = run(["test", *common, "--ckpt_path", last, "--model.init_args.log_images", "0"])
    metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items() if v.numel() == 1}
    return {"row": label, "config": config, "train_minutes": train_s / 60, "checkpoint": last,
            **{s: 100 * metrics[f"test/acc@0.5/{s}"] for s in SPLITS}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--train-batches", type=int, default=None,
                        help="limit_train_batches per epoch (shortened runs; the table says so)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    extra = [] if args.train_batches is None else ["--trainer.limit_train_batches", str(args.train_batches)]
    results = []
    for key in args.rows:
        results.append(measure(key, extra))
        print(f"measured {key}: {results[-1]}", file=sys.stderr)
    note = "" if args.train_batches is None else f" ({args.train_batches} batches per epoch)"
    print(f"| row{note} | testA | testB | val | training (min) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['testA']:.1f} | {r['testB']:.1f} | {r['val']:.1f} | {r['train_minutes']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
