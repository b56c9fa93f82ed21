"""The WSG results table on vpg-shapes (docs/wsg.md), measured through the `vpg` CLI.

Rows: CLIP-only heatmaps (GAE, similarity map, Grad-CAM, MaskCLIP) of the committed tiny CLIP,
WWbL stage 1 (experiments/shapes/wsg_wwbl.yaml) and VPT-WSG stage 2 with each prompt variant
(experiments/shapes/wsg_vpt.yaml, fine-tuned from the stage-1 checkpoint). Columns: pointing
game and bbox accuracy on shapes-phrase test (entity units). Stage 1 is trained when its
checkpoint is missing (or with --retrain); each stage-2 variant is fine-tuned here (its
validation pass is skipped: the table uses last.ckpt, nothing is chosen on test).

    .venv/bin/python scripts/wsg_shapes_table.py                # markdown table
    .venv/bin/python scripts/wsg_shapes_table.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

STAGE1_CKPT = "logs/wsg_wwbl_shapes/checkpoints/last.ckpt"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
CLIP_ROWS = [("CLIP GAE (WWbL's pseudo-label)", "gae"), ("CLIP similarity map (VPT-WSG's prompt)", "similarity"),
             ("CLIP Grad-CAM", "gradcam"), ("CLIP MaskCLIP", "maskclip")]
PROMPTS = ("similarity", "gae", "gradcam", "maskclip")


def cli(args: list[str]):
    from vpg.cli import VPGCLI

    with contextlib.redirect_stdout(io.StringIO()):
        return VPGCLI(args=[*args, *QUIET])


def test_metrics(args: list[str]) -> tuple[float, float]:
    run = cli(["test", *args, "--model.init_args.log_images", "0", "--trainer.logger.init_args.name", "wsg_shapes_table"])
    metrics = {k: float(v) for k, v in run.trainer.callback_metrics.items() if v.numel() == 1}
    return metrics["test/pointing/test"], metrics["test/bbox_acc/test"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train stage 1 even if its checkpoint exists")
    parser.add_argument("--json", help="also write the numbers here")
    opts = parser.parse_args(argv)
    rows: list[tuple[str, float, float, float]] = []
    for label, kind in CLIP_ROWS:
        start = time.time()
        rows.append((label, *test_metrics(["--config", "experiments/shapes/wsg_clip.yaml",
                                           "--model.init_args.map_kind", kind]), time.time() - start))
        print(f"{label}: done", file=sys.stderr, flush=True)
    start = time.time()
    stage1 = STAGE1_CKPT
    if opts.retrain or not Path(STAGE1_CKPT).is_file():
        # Lightning names a new last checkpoint last-v1.ckpt when last.ckpt exists: use what it wrote
        stage1 = cli(["fit", "--config", "experiments/shapes/wsg_wwbl.yaml"]).trainer.checkpoint_callback.last_model_path
    rows.append(("WWbL stage 1", *test_metrics(["--config", "experiments/shapes/wsg_wwbl.yaml",
                                                "--ckpt_path", stage1]), time.time() - start))
    print("stage 1: done", file=sys.stderr, flush=True)
    for prompt in PROMPTS:
        start = time.time()
        ckpt_dir = f"logs/wsg_vpt_shapes_{prompt}/checkpoints"
        common = ["--config", "experiments/shapes/wsg_vpt.yaml", "--model.init_args.prompt", prompt,
                  "--model.init_args.init_from", stage1]
        fit = cli(["fit", *common, "--trainer.limit_val_batches", "0", "--checkpoint.monitor", "null",
                   "--checkpoint.dirpath", ckpt_dir, "--trainer.logger.init_args.name", f"wsg_vpt_shapes_{prompt}"])
        last = fit.trainer.checkpoint_callback.last_model_path  # last-vN.ckpt when an older last.ckpt exists
        rows.append((f"VPT-WSG stage 2, prompt = {prompt}",
                     *test_metrics([*common, "--ckpt_path", last]), time.time() - start))
        print(f"stage 2 {prompt}: done", file=sys.stderr, flush=True)
    print("| shapes-phrase test (entity units) | pointing | bbox acc | wall (s) |\n| --- | ---: | ---: | ---: |")
    for label, pointing, bbox, wall in rows:
        print(f"| {label} | {100 * pointing:.1f} | {100 * bbox:.1f} | {wall:.0f} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps([{"row": r[0], "pointing": r[1], "bbox_acc": r[2], "wall_s": r[3]}
                                               for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
