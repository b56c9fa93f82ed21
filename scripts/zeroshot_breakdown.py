"""Zero-shot shapes-cls errors split into colour and shape (the 48 classes are colour x shape).

    python scripts/zeroshot_breakdown.py [--pretrained checkpoints/vpg_shapes_clip.safetensors]
"""

import argparse

import torch
import torch.nn.functional as F

from vpg.clip import create_model, get_tokenizer
from vpg.data.shapes import SHAPES
from vpg.data.sources import load_split
from vpg.data.transforms import clip_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pretrained", default="checkpoints/vpg_shapes_clip.safetensors")
    parser.add_argument("--model", default="vpg-shapes-vit-p8-w96-s64", help="the weights' architecture")
    args = parser.parse_args()
    clip = create_model(args.model, pretrained=args.pretrained).eval()
    tokenizer, transform = get_tokenizer(args.model), clip_transform(clip)
    rows = load_split("vpg-shapes/cls", "test", {"seed": 0})
    names = rows.features["label"].names  # colour-major: label = colour * len(SHAPES) + shape
    with torch.no_grad():
        classes = F.normalize(clip.encode_text(tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
        images = torch.stack([transform(row["image"])[0] for row in rows])  # (N, 3, S, S)
        pred = (F.normalize(clip.encode_image(images), dim=-1) @ classes.t()).argmax(-1)  # (N,)
    label = torch.tensor(list(rows["label"]))
    k = len(SHAPES)
    print(f"top-1 {(pred == label).float().mean():.3f}  colour right {(pred // k == label // k).float().mean():.3f}  "
          f"shape right {(pred % k == label % k).float().mean():.3f}  (n={len(label)})")


if __name__ == "__main__":
    main()
