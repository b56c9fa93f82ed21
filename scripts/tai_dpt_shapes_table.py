"""The TaI-DPT results table on vpg-shapes (docs/tai_dpt.md), measured through the `vpg` CLI.

Prompts are trained on shapes-captions text only (`experiments/shapes/tai_dpt.yaml`) and
tested on shapes-multilabel images with the committed tiny CLIP. Trained rows select their
checkpoint by the pseudo-label mAP on held-out captions (`val/mAP`), never on the test set.

    .venv/bin/python scripts/tai_dpt_shapes_table.py                  # full table (markdown)
    .venv/bin/python scripts/tai_dpt_shapes_table.py --rows zero-shot --rows "TaI-DPT (ranking)"
    .venv/bin/python scripts/tai_dpt_shapes_table.py --epochs 4 --json out.json

Columns: test mAP (shapes-multilabel test, 500 images, macro over 8 classes) and, for trained
rows, the validation mAP the checkpoint was selected by (held-out captions; for the prompt
trained on labelled images: shapes-multilabel val images). The last row fuses the TaI-DPT
checkpoint's test scores with the image-trained prompt's (the paper's complementarity result).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

CONFIG = "experiments/shapes/tai_dpt.yaml"
ZERO_SHOT = ["--model.init_args.prompts", "handcrafted"]

# (row label, overrides, trained)
ROWS: list[tuple[str, list[str], bool]] = [
    ("zero-shot CLIP (global)", [*ZERO_SHOT, "--model.init_args.inference", "global"], False),
    ("zero-shot + DPT inference (0.5 global + 0.5 local)", [*ZERO_SHOT, "--model.init_args.inference", "dual"], False),
    ("TaI (global prompt only)", ["--model.init_args.branches", "global"], True),
    ("TaI-DPT (ranking)", [], True),
    ("TaI-DPT, BCE loss", ["--model.init_args.loss", "bce"], True),
    ("TaI-DPT, ASL loss", ["--model.init_args.loss", "asl"], True),
]
COOP_CONFIG = "experiments/shapes/tai_dpt_coop_images.yaml"
COOP = "CoOp-style prompt trained on labelled images"
ENSEMBLE = "TaI-DPT + image-trained prompt (score fusion 0.5 / 0.5)"


def _cli(args: list[str]):
    from vpg.cli import VPGCLI

    common = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.logger.init_args.name", "tai_dpt_shapes_table", "--model.init_args.log_attention", "0"]
    with contextlib.redirect_stdout(io.StringIO()):
        return VPGCLI(args=[*args, *common])


def run(overrides: list[str], trained: bool, epochs: int | None, config: str = CONFIG) -> dict:
    """fit (trained rows; best val mAP) then test; returns test mAP, val mAP and the checkpoint."""
    out: dict = {}
    ckpt: list[str] = []
    if trained:
        extra = ["--trainer.max_epochs", str(epochs)] if epochs else []
        start = time.time()
        cli = _cli(["fit", "--config", config, *overrides, *extra])
        callback = cli.trainer.checkpoint_callback
        out["val_mAP"] = float(callback.best_model_score) if callback.best_model_score is not None else float("nan")
        out["fit_s"] = time.time() - start
        out["ckpt"] = callback.best_model_path
        ckpt = ["--ckpt_path", callback.best_model_path]
    cli = _cli(["test", "--config", config, *overrides, *ckpt])
    out["test_mAP"] = float(cli.trainer.callback_metrics["test/mAP"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", action="append", help="row labels to run (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs of trained rows")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the in-process CLI parses its own args, not this script's
    rows = [r for r in ROWS if not args.rows or r[0] in args.rows]
    start = time.time()
    results = {}
    print("| method | test mAP (images) | held-out caption mAP (selection) | fit time |")
    print("|---|---|---|---|")
    jobs = [(label, overrides, trained, CONFIG) for label, overrides, trained in rows]
    if not args.rows or COOP in args.rows or ENSEMBLE in args.rows:
        jobs.append((COOP, [], True, COOP_CONFIG))
    for label, overrides, trained, config in jobs:
        r = run(overrides, trained, args.epochs, config)
        results[label] = r
        val = f"{100 * r['val_mAP']:.1f}" if "val_mAP" in r else "—"
        fit = f"{r['fit_s']:.0f} s" if "fit_s" in r else "—"
        print(f"| {label} | {100 * r['test_mAP']:.1f} | {val} | {fit} |", flush=True)
    if not args.rows or ENSEMBLE in args.rows:
        dpt = results.get("TaI-DPT (ranking)") or run([], True, args.epochs)
        cli_ckpt = ["--ckpt_path", dpt["ckpt"], "--model.init_args.ensemble_checkpoint", results[COOP]["ckpt"]]
        fused = {"test_mAP": float(_cli(["test", "--config", CONFIG, *cli_ckpt]).trainer.callback_metrics["test/mAP"])}
        results[ENSEMBLE] = fused
        print(f"| {ENSEMBLE} | {100 * fused['test_mAP']:.1f} | — | — |", flush=True)
    print(f"\nwall time: {time.time() - start:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
