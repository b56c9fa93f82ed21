"""The FALIP results table on vpg-shapes (docs/falip.md), measured through the `vpg` CLI.

Every row is `vpg test --config experiments/shapes/falip_rec.yaml <overrides>` with the
committed tiny CLIP; columns are Acc@0.5 on shapes-ref testA / testB / val. The layer
ablation (`--layers`) runs on val only, so nothing is chosen on the test splits.

    .venv/bin/python scripts/falip_shapes_table.py                 # main table (markdown)
    .venv/bin/python scripts/falip_shapes_table.py --layers        # + layer sets, val only
    .venv/bin/python scripts/falip_shapes_table.py --json out.json # also write the numbers
    .venv/bin/python scripts/falip_shapes_table.py --rows none --diagnose   # val-only diagnostics

``--diagnose`` (val only): FALIP a at other alphas; how much [CLS] attention the mask moves onto
the box's tokens in the masked blocks; how often each prompt picks the largest candidate.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
from pathlib import Path

import torch

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

# layer sets of the 4-block tower, compared on val only (the config's [3] is the rule's choice)
ALPHAS = (0.2, 0.5, 1.0, 2.0, 5.0)
DIAGNOSE_PROMPTS = ("none", "crop", "blur", "falip", "falip form c")

LAYER_ROWS: list[tuple[str, str]] = [
    ("[3] (config: last third)", "[3]"), ("[2, 3]", "[2, 3]"), ("[1, 2, 3]", "[1, 2, 3]"), ("all", "all"),
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


@torch.no_grad()
def roa_attention_mass(model, batch) -> dict[int, tuple[float, float]]:
    """Mean share of the [CLS] query's attention (over heads and candidates) that falls on the
    box's tokens in each masked block, without and with the foveal mask, on the plain forward's
    input to that block (the first-order effect of the bias)."""
    from vpg.modules.foveal import foveal_mask, roa_mask

    clip = model.clip
    owner, slot = batch["candidate_mask"].nonzero(as_tuple=True)  # (N,), (N,)
    boxes = batch["candidates"][owner, slot]  # (N, 4)
    size = tuple(batch["image"].shape[-2:])
    grid = clip.grid_size(size)
    inside = roa_mask(boxes, grid, size).flatten(1)  # (N, h*w)
    bias = foveal_mask(boxes, grid, size, model.alpha, model.sigma, "a", model.eps)  # (N, L)
    inputs = [i - 1 for i in model.layers if i > 0]
    hidden = clip.forward_image(batch["image"], hidden_layers=inputs).hidden
    out = {}
    for i in model.layers:
        x = hidden[i - 1] if i > 0 else clip.image_tokens(batch["image"])  # (B, L, D) block input
        attn = clip.vision_blocks[i].attn
        normed = clip.vision_blocks[i].ln_1(x)
        q = attn._heads(attn.q_proj(normed[:, :1]))  # (B, H, 1, dh)
        k = attn._heads(attn.k_proj(normed))  # (B, H, L, dh)
        logits = (q @ k.transpose(-1, -2))[:, :, 0] * attn.head_dim**-0.5  # (B, H, L)
        logits = logits[owner]  # (N, H, L)
        plain = logits.softmax(-1)[..., 1:]  # (N, H, h*w)
        masked = (logits + bias[:, None]).softmax(-1)[..., 1:]
        share = lambda p: (p * inside[:, None]).sum(-1).mean().item()  # noqa: E731
        out[i] = (share(plain), share(masked))
    return out


def diagnose() -> dict:
    """Val-only diagnostics of FALIP on the tiny CLIP (printed as markdown)."""
    from vpg.cli import VPGCLI
    from vpg.metrics import box_area, grounding_accuracy

    results: dict = {"alpha_val": {}, "largest_pick_val": {}}
    print("\n| FALIP a, alpha (val) | Acc@0.5 |\n| --- | ---: |")
    for alpha in ALPHAS:
        acc = run(["--model.init_args.alpha", str(alpha)], splits=("val",))["val"]
        results["alpha_val"][alpha] = acc
        print(f"| {alpha:g} | {100 * acc:.1f} |", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        # the default logger: a run without one would write config.yaml / metrics.json into the cwd
        cli = VPGCLI(args=["validate", "--config", CONFIG, "--trainer.enable_progress_bar", "false",
                           "--trainer.logger.init_args.name", "falip_shapes_table", "--model.init_args.log_images", "0"])
    model, dm = cli.model.eval(), cli.datamodule
    batches = list(dm.val_dataloader())
    mass = roa_attention_mass(model, batches[0])
    results["roa_attention_share"] = mass
    print("\n| masked block | [CLS] attention on the box's tokens, plain | with the mask (alpha 0.2) |")
    print("| --- | ---: | ---: |")
    for block, (plain, masked) in mass.items():
        print(f"| {block} | {100 * plain:.1f} % | {100 * masked:.1f} % |")
    print("\n| prompt (val) | picks the largest candidate | gold is the largest | "
          + " | ".join(f"Acc@0.5 {k}" for k in EXPRESSION_KINDS) + " |")
    print("| --- | ---: | ---: |" + " ---: |" * len(EXPRESSION_KINDS))
    results["by_expression_val"] = {}
    for prompt in DIAGNOSE_PROMPTS:
        name, form = (prompt.split()[0], prompt.split()[-1]) if "form" in prompt else (prompt, "a")
        model.prompts, model.form = [name], form
        picked = largest = total = 0
        hits: dict[str, list[bool]] = {k: [] for k in EXPRESSION_KINDS}
        with torch.no_grad():
            for i, batch in enumerate(batches):
                out = model(batch, "val", torch.Generator().manual_seed(i))
                area = box_area(batch["candidates"]).masked_fill(~batch["candidate_mask"], -1)  # (B, K)
                biggest = area.argmax(-1)
                picked += (out["index"] == biggest).sum().item()
                largest += (batch["gold_index"] == biggest).sum().item()
                total += len(biggest)
                for sentence, hit in zip(batch["sentences"], grounding_accuracy(out["box"], batch["gold"]).tolist()):
                    hits[expression_kind(sentence)].append(hit)
        by_kind = {k: sum(v) / max(len(v), 1) for k, v in hits.items()}
        results["largest_pick_val"][prompt] = picked / total
        results["by_expression_val"][prompt] = by_kind
        print(f"| {prompt} | {100 * picked / total:.1f} % | {100 * largest / total:.1f} % | "
              + " | ".join(f"{100 * by_kind[k]:.1f} (n={len(hits[k])})" for k in EXPRESSION_KINDS) + " |", flush=True)
    return results


EXPRESSION_KINDS = ("attribute-only", "superlative", "relation")


def expression_kind(sentence: str) -> str:
    """Keyword rule: relation words first, then superlatives, else attribute-only."""
    if re.search(r"\b(left of|right of|above|below|over|under|next to|beside)\b", sentence):
        return "relation"
    if re.search(r"(est|most)\b", sentence):
        return "superlative"
    return "attribute-only"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", action="store_true", help="also compare layer sets (val only)")
    parser.add_argument("--json", type=Path, help="write the numbers to this JSON file")
    parser.add_argument("--rows", help="comma-separated row numbers to run (default: all; 'none': no row)")
    parser.add_argument("--diagnose", action="store_true", help="val-only diagnostics (alpha, attention, size bias)")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the CLI runs in-process with its own arguments
    import datasets

    datasets.disable_progress_bars()
    if not Path("checkpoints/vpg_shapes_clip.safetensors").is_file():
        sys.exit("checkpoints/vpg_shapes_clip.safetensors is missing; run `make pretrain`")
    if args.rows == "none":
        chosen = []
    else:
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
    if args.diagnose:
        results["diagnose"] = diagnose()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
