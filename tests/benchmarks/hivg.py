"""HiVG-B size and cost on CPU (CLIP ViT-B/16, random weights, 224 px, 77 text tokens).

1. Parameters: total (CLIP + bridges + perceiver + grounding encoder + head), trainable in each
   HiLoRA stage (warm-up: bridges + head; stage k: + LoRA on groups 1..k), and the LoRA adapters
   as % of CLIP's parameters (paper: 206 M total, 41 M updated, HiLoRA 0.86 / 1.72 / 2.58 %).
2. GFLOPs of one forward (batch 1) in the fvcore convention (1 multiply-add = 1 FLOP, i.e. half
   of ``torch.utils.flop_counter``'s count), taken in train mode with autograd on so that
   ``nn.MultiheadAttention`` does not take its fused fast path (which the counter misses).
   Checked on bare CLIP ViT-B/16's full image tower, which papers list at ~17.5 G (paper HiVG-B: 38.7 G).
3. Forward time of HiVG vs CLIP's image + text encode of the same batch, in one process,
   alternating, fastest of the repeats (the machine is shared).

    .venv/bin/python tests/benchmarks/hivg.py
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vpg.callbacks.hilora import LoRAStage
from vpg.clip import create_model, get_tokenizer
from vpg.methods.hivg import HiVG

GROUPS = [list(range(0, 4)), list(range(4, 8)), list(range(8, 12))]
TEXT_LORA = [8, 9, 10, 11]


def count(params) -> int:
    return sum(p.numel() for p in params)


def fvcore_gflops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2 / 1e9


def fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(batch: int = 8, repeats: int = 5) -> None:
    torch.manual_seed(0)
    clip = create_model("ViT-B-16")
    clip_params = count(clip.parameters())
    model = HiVG(clip)  # paper defaults: bridges at 3/7/11, text levels 0-11, encoder 6 x 512
    total = count(model.parameters())
    tokens = get_tokenizer("ViT-B-16")(["the man in the red shirt on the left"])
    image = torch.randn(1, 3, 224, 224)

    trainable = [count(p for p in model.parameters() if p.requires_grad)]  # warm-up
    lora_vision, lora_all = [], []
    blocks: list[int] = []
    for k, group in enumerate(GROUPS, start=1):
        blocks += group
        model.start_lora_stage(k, LoRAStage(1, 1e-4, list(blocks), TEXT_LORA), rank=32, alpha=16)
        lora = {n: p for n, p in model.clip.named_parameters() if "lora_" in n}
        lora_vision.append(count(p for n, p in lora.items() if ".visual." in n))
        lora_all.append(count(lora.values()))
        trainable.append(count(p for p in model.parameters() if p.requires_grad))
    model.merge_live_adapter()  # FLOPs and timing on plain weights (merged LoRA costs nothing)

    parts = {name: count(getattr(model, name).parameters()) for name in ("bridges", "perceiver", "encoder", "box_head")}
    print(f"CLIP ViT-B/16: {clip_params / 1e6:.2f} M parameters; HiVG total {total / 1e6:.2f} M")
    print("added: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in parts.items()))
    print("trainable per stage (warm-up, s1, s2, s3): " + " / ".join(f"{t / 1e6:.2f} M" for t in trainable))
    print("LoRA % of CLIP, vision only: " + " / ".join(f"{100 * v / clip_params:.2f}" for v in lora_vision)
          + f"; with the text group ({TEXT_LORA}): " + " / ".join(f"{100 * v / clip_params:.2f}" for v in lora_all))

    model.train()  # autograd on + train mode: no fused MHA fast path (see the docstring)
    # the whole image tower (encode_image alone skips the last block's patch rows: vpg's core
    # computes only the [CLS] row there, ~1.2 G less than open_clip's forward)
    clip_image_g = fvcore_gflops(lambda: clip.forward_image(image, hidden_layers=[clip.num_vision_layers - 1]))
    clip_text_g = fvcore_gflops(lambda: clip.encode_text(tokens))
    hivg_g = fvcore_gflops(lambda: model(image, tokens))
    print(f"GFLOPs (fvcore): CLIP image {clip_image_g:.2f} + text {clip_text_g:.2f}; HiVG forward {hivg_g:.2f}")

    model.eval()
    images = torch.randn(batch, 3, 224, 224)
    texts = tokens.expand(batch, -1)
    with torch.inference_mode():
        model(images, texts), clip.encode_image(images)  # warm-up
        hivg_t, clip_t = [], []
        for _ in range(repeats):
            hivg_t.append(fastest(lambda: model(images, texts), 1))
            clip_t.append(fastest(lambda: (clip.encode_image(images), clip.encode_text(texts)), 1))
    print(f"batch {batch}, torch threads {torch.get_num_threads()}: HiVG forward {min(hivg_t):.3f} s, "
          f"CLIP image+text encode {min(clip_t):.3f} s (fastest of {repeats})")
    pct = "/".join(f"{100 * v / clip_params:.2f}" for v in lora_vision)
    print(f"RESULT total_params_m={total / 1e6:.1f} trainable_m={max(trainable) / 1e6:.1f} hilora_pct={pct} "
          f"gflops={hivg_g:.1f} time_vs_clip={min(hivg_t) / min(clip_t):.2f}")


if __name__ == "__main__":
    main()
