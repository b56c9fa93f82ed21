"""How fast can a vision tower learn the shapes at all? A supervised probe for the tiny CLIP.

Trains the *image tower alone* of an open_clip config from random init, with a linear head and
cross-entropy on the 48 colour x shape classes of the pretraining corpus' single-object images,
and prints shapes-cls val top-1 / shape-right / colour-right every ``--eval-every`` steps. It
separates the two suspects for the tiny CLIP's weak shape recognition: if a supervised tower
learns shape as slowly as contrastive pretraining does, the objective is not the bottleneck.

    python scripts/shape_learning_probe.py --steps 800 --batch-size 32            # vpg-shapes-vit
    python scripts/shape_learning_probe.py --model vpg-shapes-vit-p8-l4
                                                            # a candidate tower (README: tiny CLIP)
    python scripts/shape_learning_probe.py --model vpg-shapes-vit-p8-l4 \
        --head batch --logit-scale-init 50                  # CLIP's own loss on the same images

``--head text`` / ``--head batch`` put the text tower back (CE against all 48 class prompts /
in-batch symmetric InfoNCE with each image's prompt) and score zero-shot, so the gap to the
linear head is what the text side and the temperature cost.

Images are decoded once into a uint8 tensor (no loader in the loop), so steps time the model.
They are resized once (bicubic, antialiased) when the tower's input side differs from the corpus'.
``--text-lr-mult`` scales the text tower's learning rate (README: tiny CLIP). ``--corpus full`` with
``--first-caption-prob`` trains on every row of the pretraining corpus as the DataModule draws them, and
``--adam-beta2`` / ``--adam-eps`` / ``--clip-grad`` reproduce CLIPPretraining's optimizer, so a probe can
be compared with a full run one difference at a time (README: tiny CLIP, the recipe).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from vpg.clip import create_model, get_tokenizer
from vpg.data.shapes import SHAPES
from vpg.data.shapes.builders import CLS_CLASSES, make_pretrain_corpus
from vpg.data.shapes.language import with_article
from vpg.data.sources import load_split
from vpg.losses import clip_contrastive_loss
from vpg.methods.optim import decay_groups, warmup_cosine


def as_uint8(rows) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(r["image"].convert("RGB"))).permute(2, 0, 1) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vpg-shapes-vit")
    parser.add_argument("--config-dir", help="extra directory of open_clip JSON configs to register")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--num-single", type=int, default=12000, help="single-object images (pretrain corpus)")
    parser.add_argument("--head", choices=["linear", "text", "batch"], default="linear",
                        help="linear: a linear head on the image embedding; text: the text tower's features "
                             "of the 48 class prompts x logit scale (CE over all prompts: is the text tower slow?); "
                             "batch: in-batch symmetric InfoNCE with each image's class prompt (CLIP's loss, "
                             "single-object images only); text and batch evaluate zero-shot")
    parser.add_argument("--logit-scale-init", type=float, default=None,
                        help="initial exp(logit_scale) for the text/batch heads (default: the config's, 1/0.07)")
    parser.add_argument("--captions", choices=["prompt", "random"], default="prompt",
                        help="batch head: pair each image with its class prompt, or with one of its corpus "
                             "captions at random per step (as the pretraining DataModule does)")
    parser.add_argument("--corpus", choices=["single", "full"], default="single",
                        help="single: the single-object images of the probe's corpus; full: every row (scenes, "
                             "single objects, depth maps) of clip_pretrain_s64.yaml's corpus, batch head only")
    parser.add_argument("--first-caption-prob", type=float, default=None,
                        help="batch head: draw a row's first caption with this probability and one of the others "
                             "uniformly otherwise (CaptionsDataModule's first_caption_prob); overrides --captions")
    parser.add_argument("--adam-beta2", type=float, default=0.999)
    parser.add_argument("--adam-eps", type=float, default=1e-8)
    parser.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm (Trainer's gradient_clip_val)")
    parser.add_argument("--text-lr-mult", type=float, default=1.0,
                        help="learning-rate multiplier for the text tower (all non-visual parameters but logit_scale)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config_dir:
        import open_clip

        open_clip.add_model_config(args.config_dir)

    if args.corpus == "full":
        if args.head != "batch":
            parser.error("--corpus full trains on captions: it needs --head batch")
        rows = make_pretrain_corpus(num_scenes=3000, num_single=16000, num_depth=1000, seed=0, single_clutter=3,
                                    use_cache=True)  # clip_pretrain_s64.yaml's corpus
    else:
        corpus = make_pretrain_corpus(num_scenes=8000, num_single=args.num_single, num_depth=2000, seed=0,
                                      single_clutter=3, use_cache=True)  # the previous clip_pretrain.yaml's corpus
        rows = corpus.select([i for i, image_id in enumerate(corpus["image_id"]) if image_id.startswith("single")])
    canonical = {f"a photo of {with_article(name)}": k for k, name in enumerate(CLS_CLASSES)}
    labels = torch.tensor([canonical.get(c[0], -1) for c in rows["captions"]])  # caption 0: the class prompt
    images = as_uint8(rows)  # (N, 3, S, S)
    val = load_split("vpg-shapes/cls", "val", {"seed": 0})
    val_images, val_labels = as_uint8(val), torch.tensor(list(val["label"]))

    clip = create_model(args.model, frozen=False)
    if args.logit_scale_init:
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(args.logit_scale_init))
    size = clip.image_size[-1]  # the tower's input side; the corpus is rendered at the world's default
    if images.shape[-1] != size:  # resize once, on tensors; clip_transform does the same per PIL image
        images, val_images = (F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True)
                              .round().clamp(0, 255).to(torch.uint8) for x in (images, val_images))
    mean = torch.tensor(clip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.image_std).view(1, 3, 1, 1)
    prompts = get_tokenizer(args.model)([f"a photo of {with_article(name)}" for name in CLS_CLASSES])
    if args.head == "linear":
        head = torch.nn.Linear(clip.embed_dim, len(CLS_CLASSES))
    else:
        def head(img: torch.Tensor) -> torch.Tensor:  # (B, E) -> (B, C): CLIP logits against the class prompts
            txt = F.normalize(clip.encode_text(prompts), dim=-1)  # (C, E)
            return clip.logit_scale.exp() * F.normalize(img, dim=-1) @ txt.t()
    draw = "first" if args.first_caption_prob is not None else args.captions
    if args.corpus == "full" and draw == "prompt":
        parser.error("--corpus full: scenes and depth maps have no class prompt; use --captions random "
                     "or --first-caption-prob")
    if draw != "prompt":  # every caption of every training row, tokenised once
        captions = list(rows["captions"])
        num_captions = torch.tensor([len(c) for c in captions])
        caption_start = torch.cumsum(num_captions, 0) - num_captions
        caption_tokens = get_tokenizer(args.model)([c for cs in captions for c in cs])  # (sum, ctx)
    extra = list(head.parameters()) if args.head == "linear" else []
    groups = decay_groups(clip, args.weight_decay) + [{"params": extra, "weight_decay": 0.0}]
    if args.text_lr_mult != 1.0:  # split each group into its vision and text halves
        vision = {id(p) for p in clip.model.visual.parameters()} | {id(clip.logit_scale)}
        text = {id(p) for p in clip.parameters() if id(p) not in vision}
        groups = [{"params": [p for p in g["params"] if (id(p) in text) == is_text], "weight_decay": g["weight_decay"],
                   "lr": args.lr * (args.text_lr_mult if is_text else 1.0)}
                  for g in groups for is_text in (False, True)]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.adam_beta2), eps=args.adam_eps)
    schedule = warmup_cosine(opt, args.warmup, args.steps)
    rng = np.random.default_rng(args.seed)
    k = len(SHAPES)  # label = colour * len(SHAPES) + shape

    def normalised(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - mean) / std

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = torch.from_numpy(rng.choice(len(labels), args.batch_size, replace=False))
        if args.head == "batch":
            if draw != "prompt":  # one caption per row, drawn as the DataModule draws it
                pick = ([0 if n == 1 or rng.random() < args.first_caption_prob else 1 + int(rng.integers(n - 1))
                         for n in num_captions[batch].tolist()] if draw == "first"
                        else [int(rng.integers(n)) for n in num_captions[batch]])
                text = caption_tokens[caption_start[batch] + torch.tensor(pick)]
            else:
                text = prompts[labels[batch]]
            img, txt, scale = clip(normalised(images[batch]), text)
            loss = clip_contrastive_loss(img, txt, scale)
        else:
            loss = F.cross_entropy(head(clip.encode_image(normalised(images[batch]))), labels[batch])
        opt.zero_grad()
        loss.backward()
        if args.clip_grad:
            torch.nn.utils.clip_grad_norm_(clip.parameters(), args.clip_grad)
        opt.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            clip.eval()
            with torch.no_grad():
                pred = head(clip.encode_image(normalised(val_images))).argmax(-1)  # (V,)
            clip.train()
            print(f"step {step:5d}  samples {step * args.batch_size:7d}  {time.perf_counter() - start:6.0f} s  "
                  f"loss {loss.item():.3f}  val top-1 {(pred == val_labels).float().mean():.3f}  "
                  f"shape right {(pred % k == val_labels % k).float().mean():.3f}  "
                  f"colour right {(pred // k == val_labels // k).float().mean():.3f}", flush=True)


if __name__ == "__main__":
    main()
