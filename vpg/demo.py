"""`make demo`: the embedded vpg-shapes world end to end on the committed tiny CLIP.

Runs each shapes experiment through the same `vpg` CLI a user would call, then prints a
results table and writes a picture (scenes with boxes and referring expressions) to
TensorBoard (logs/demo) and to docs/demo_shapes_ref.png.

    python -m vpg.demo            (what `make demo` runs, from the repo root)
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

from vpg.cli import VPGCLI

CHECKPOINT = Path("checkpoints/vpg_shapes_clip.safetensors")
PICTURE = Path("docs/demo_shapes_ref.png")

# (row label, metric label, CLI arguments, metric key). A `fit` run is followed by `vpg test`
# of the checkpoint it selected (best on validation when the config monitors a metric, else last).
RUNS = [
    ("zero-shot classification, shapes-cls test", "top-1",
     ["test", "--config", "experiments/shapes/zeroshot_cls.yaml"], "test/acc@1"),
    ("FALIP zero-shot REC (form a), shapes-ref testA", "Acc@0.5",
     ["test", "--config", "experiments/shapes/falip_rec.yaml", "--data.init_args.test_splits", "[testA]"], "test/acc@0.5/testA"),
    # HiVG trains its bridges + grounding head for 3 of the ablation's 8 epochs (about 6 min on a
    # shared 2-core machine); the full table is scripts/hivg_shapes_table.py.
    ("HiVG (+ MACB, 3 epochs), shapes-ref testA", "Acc@0.5",
     ["fit", "--config", "experiments/shapes/hivg_macb.yaml", "--trainer.max_epochs", "3",
      "--data.init_args.test_splits", "[testA]"], "test/acc@0.5/testA"),
    ("CLIP GAE heatmaps (VPT-WSG baseline), shapes-phrase test", "pointing",
     ["test", "--config", "experiments/shapes/wsg_clip.yaml"], "test/pointing/test"),
    ("TaI-DPT, trained on caption text only, shapes-multilabel test", "mAP",
     ["fit", "--config", "experiments/shapes/tai_dpt.yaml"], "test/mAP"),
    ("CAVPT (VLP-CLIP-CAVPT) 16-shot, seed 1, shapes-cls test", "top-1",
     ["fit", "--config", "experiments/shapes/cavpt.yaml"], "test/acc@1"),
]


def run_experiment(args: list[str]) -> dict[str, float]:
    """One `vpg` command in-process (a `fit` then tests its checkpoint); Lightning output kept quiet."""
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    with contextlib.redirect_stdout(io.StringIO()):
        cli = VPGCLI(args=[*args, *quiet])
        if args[0] == "fit":
            checkpoints = cli.trainer.checkpoint_callback
            chosen = checkpoints.best_model_path or checkpoints.last_model_path
            cli = VPGCLI(args=["test", *args[1:], *quiet, "--ckpt_path", chosen])
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}


def shapes_ref_picture(n: int = 8) -> Path:
    """Grid of shapes-ref testA scenes: gold box (green), other candidates (grey), expression."""
    from torch.utils.tensorboard import SummaryWriter

    from vpg.data.sources import load_split
    from vpg.utils.visualize import GOLD, OTHER, caption_below, draw_boxes, grid, to_chw_tensor

    rows = load_split("vpg-shapes/ref", "testA", {"seed": 0})
    first_of_image: dict[str, int] = {}
    for i, image_id in enumerate(rows["image_id"]):
        first_of_image.setdefault(image_id, i)
    tiles = []
    for row in rows.select(list(first_of_image.values())[:n]):  # one referred object per scene
        image = row["image"].resize((192, 192))
        scale = 192 / row["image"].width
        boxes = [[v * scale for v in b] for b in row["candidates"]]
        gold = [v * scale for v in row["bbox"]]
        colours = [GOLD if b == gold else OTHER for b in boxes]
        tiles.append(caption_below(draw_boxes(image, boxes, colours), row["sentences"][0]))
    picture = grid(tiles, columns=4)
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    picture.save(PICTURE)
    with SummaryWriter("logs/demo") as writer:
        writer.add_image("shapes-ref/testA", to_chw_tensor(picture))
    return PICTURE


def main() -> None:
    if not CHECKPOINT.is_file():
        sys.exit(f"vpg demo: {CHECKPOINT} is missing; run `make pretrain` (about 15 min) to rebuild it")
    start = time.time()
    table = []
    for label, metric, args, key in RUNS:
        print(f"running: vpg {' '.join(args)}", flush=True)
        metrics = run_experiment(args)
        table.append((label, metric, metrics[key]))
    picture = shapes_ref_picture()
    width = max(len(r[0]) for r in table)
    print()
    print(f"{'experiment':<{width}}  {'metric':<8}  value")
    for label, metric, value in table:
        print(f"{label:<{width}}  {metric:<8}  {100 * value:5.1f} %")
    print(f"\npicture: {picture} (also in TensorBoard: tensorboard --logdir logs)")
    print(f"demo finished in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
