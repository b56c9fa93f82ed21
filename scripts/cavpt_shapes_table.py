"""The CAVPT / DPT results table on vpg-shapes (docs/cavpt.md): the paper's seven Table 1 variants
x seeds 1, 2, 3 on shapes-cls 16-shot with the committed tiny CLIP, mean ± std of test top-1.

Every cell is `vpg fit --config experiments/shapes/cavpt.yaml --model.init_args.variant V
--seed_everything S --data.init_args.seed S` followed by a test of the last epoch's weights (CoOp's
protocol: no checkpoint selection), run in-process; each run writes its metrics.json under
logs/cavpt_shapes_table/, so the table can be rebuilt with scripts/aggregate_metrics.py.

    .venv/bin/python scripts/cavpt_shapes_table.py                      # 7 variants x 3 seeds
    .venv/bin/python scripts/cavpt_shapes_table.py --variants coop,vlp_cavpt --seeds 1
    .venv/bin/python scripts/cavpt_shapes_table.py --json out.json -- --trainer.max_epochs 6   # extra overrides
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

CONFIG = "experiments/shapes/cavpt.yaml"
VARIANTS = ("zeroshot", "coop", "vpt_shallow", "vpt_deep", "vpt_cavpt", "vlp_deep", "vlp_cavpt")
LABELS = {"zeroshot": "Zero-shot CLIP", "coop": "CoOp", "vpt_shallow": "VPT-CLIP-Shallow",
          "vpt_deep": "VPT-CLIP-Deep", "vpt_cavpt": "VPT-CLIP-CAVPT", "vlp_deep": "VLP-CLIP-Deep",
          "vlp_cavpt": "VLP-CLIP-CAVPT"}
# the paper's Table 1, average over its 8 datasets (16 shots, ViT-B/32): for reference only
PAPER_AVERAGE = {"zeroshot": 61.84, "coop": 77.09, "vpt_deep": 78.88, "vlp_cavpt": 80.14}


def run(variant: str, seed: int, extra: list[str]) -> dict:
    """fit + test of the last epoch in-process; returns test metrics, trainable parameters, wall time."""
    from vpg.cli import VPGCLI

    args = ["fit", "--config", CONFIG, "--model.init_args.variant", variant, "--seed_everything", str(seed),
            "--data.init_args.seed", str(seed), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.name", "cavpt_shapes_table",
            *extra]
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        cli = VPGCLI(args=args)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        cli._write_metrics("test")  # metrics.json next to config.yaml, for aggregate_metrics.py
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    return {"test/acc@1": metrics["test/acc@1"], "trainable": cli.model.trainable_summary()["total"],
            "seconds": time.time() - start, "log_dir": cli.trainer.log_dir}


def mean_std(values: list[float]) -> str:
    """'mean ± sample std' in percent (std over seeds, n - 1)."""
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: all seven)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--json", type=Path, help="also write every run's numbers to this file")
    parser.add_argument("overrides", nargs="*", help="extra `vpg fit` arguments, after --")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the CLI runs in-process with its own arguments
    import datasets

    datasets.disable_progress_bars()
    if not Path("checkpoints/vpg_shapes_clip.safetensors").is_file():
        sys.exit("checkpoints/vpg_shapes_clip.safetensors is missing; run `make pretrain`")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {}
    total = time.time()
    print("| variant | trainable params | test top-1 % (mean ± std, seeds " + ", ".join(map(str, seeds))
          + ") | paper, 8-dataset average |")
    print("| --- | ---: | ---: | ---: |")
    for variant in variants:
        runs = results[variant] = [run(variant, seed, args.overrides) for seed in seeds]
        paper = PAPER_AVERAGE.get(variant)
        print(f"| {LABELS[variant]} | {runs[0]['trainable']:,} | {mean_std([r['test/acc@1'] for r in runs])} | "
              f"{paper if paper is not None else '—'} |", flush=True)
        print(f"<!-- {variant}: " + ", ".join(f"seed {s} {100 * r['test/acc@1']:.1f} ({r['seconds']:.0f} s)"
                                             for s, r in zip(seeds, runs)) + " -->", file=sys.stderr)
    print(f"\nwall time: {time.time() - total:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
