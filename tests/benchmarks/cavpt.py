"""DPT / CAVPT cost per variant (CPU, fp32).

1. Trainable parameters of each variant on OpenAI ViT-B/32 (random weights, same shapes), for a
   100-class dataset (the auxiliary CAVPT classifier has 768 x C weights; the rest does not
   depend on C). The configs' CAVPT settings (the authors' scripts: keys = [CLS] + patches + 10
   learned vectors, no LP) and the paper's (keys = [CLS], with LP) are both listed.
2. Training step time (forward + backward + SGD step, batch 32, 48 classes) of each variant on
   the vpg-shapes tiny CLIP, relative to CoOp; the fastest of ``repeats`` runs (shared machine).

    .venv/bin/python tests/benchmarks/cavpt.py
"""

import time

import torch

from vpg.clip import create_model
from vpg.methods.cavpt import VARIANTS, PromptTuningClassifier

RELEASE = dict(cavpt_keys="tokens", cavpt_learned_keys=10, cavpt_output_proj=False)


def build(clip, variant: str, names: list[str], **kwargs) -> PromptTuningClassifier:
    model = PromptTuningClassifier(clip, variant=variant, **kwargs)
    model.class_names = names
    model.classifier = torch.nn.functional.normalize(torch.randn(len(names), clip.embed_dim), dim=-1)
    model.prepare_classes(names)
    return model


def parameter_counts(num_classes: int = 100) -> dict[str, int]:
    torch.manual_seed(0)
    clip = create_model("ViT-B-32")  # random weights: only the shapes matter
    names = [f"class {i}" for i in range(num_classes)]
    counts = {v: build(clip, v, names, **RELEASE).trainable_summary()["total"] for v in VARIANTS}
    for v in ("vpt_cavpt", "vlp_cavpt"):
        counts[f"{v}_paper"] = build(clip, v, names).trainable_summary()["total"]
    return counts


def step_times(repeats: int = 5, batch: int = 32) -> dict[str, float]:
    torch.manual_seed(0)
    clip = create_model("vpg-shapes-vit")
    names = [f"{c} {s}" for c in ("red", "green", "blue", "yellow", "purple", "orange")
             for s in ("circle", "ring", "hexagon", "square", "triangle", "diamond", "star", "cross")]
    images = torch.randn(batch, 3, 96, 96)
    labels = torch.randint(0, len(names), (batch,))
    out = {}
    for variant in VARIANTS:
        if variant == "zeroshot":
            continue
        model = build(clip, variant, names).train()
        model.log = lambda *a, **k: None
        from vpg.metrics import TopKAccuracy

        model.metrics["train_top1"] = TopKAccuracy(len(names))
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        times = []
        for _ in range(repeats + 1):  # the first run warms up
            start = time.perf_counter()
            loss = model.training_step({"image": images, "label": labels}, 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        out[variant] = min(times[1:])
    return out


def main() -> None:
    counts = parameter_counts()
    print("| variant | trainable parameters, ViT-B/32, 100 classes |\n| --- | ---: |")
    for variant, n in counts.items():
        print(f"| {variant} | {n:,} |")
    times = step_times()
    print("\n| variant | train step, tiny CLIP, batch 32 (s) |\n| --- | ---: |")
    for variant, t in times.items():
        print(f"| {variant} | {t:.3f} |")
    print("RESULT " + " ".join(f"params_{k}={v}" for k, v in counts.items()) + " "
          + " ".join(f"step_s_{k}={v:.3f}" for k, v in times.items())
          + f" vlp_cavpt_vs_coop_step={times['vlp_cavpt'] / times['coop']:.2f}")


if __name__ == "__main__":
    main()
