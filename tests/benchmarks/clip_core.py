"""vpg core image encode vs open_clip's encode_image (ViT-B/16, random weights, batch 16, fp32, CPU).

Alternates the two in one process (this machine is noisy) and reports the median ratio.
Goal: core_vs_open_clip_ratio <= 1.05.
"""

import statistics
import time

import open_clip
import torch

from vpg.clip import create_model


def main(repeats: int = 7, batch: int = 16) -> None:
    torch.manual_seed(0)
    core = create_model("ViT-B-16").eval()
    ref = open_clip.create_model("ViT-B-16").eval()
    ref.load_state_dict(core.open_clip_state_dict())
    images = torch.randn(batch, 3, 224, 224)
    times = {"core": [], "open_clip": []}
    with torch.inference_mode():
        a, b = core.encode_image(images), ref.encode_image(images)  # warm-up
        diff = (a - b).abs().max().item()
        for _ in range(repeats):
            for name, fn in (("core", core.encode_image), ("open_clip", ref.encode_image)):
                start = time.perf_counter()
                fn(images)
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median seconds per batch of {batch}: core {med['core']:.3f}, open_clip {med['open_clip']:.3f}")
    print(f"RESULT core_vs_open_clip_ratio={med['core'] / med['open_clip']:.3f} max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    main()
