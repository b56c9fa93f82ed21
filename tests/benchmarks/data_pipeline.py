"""REC data pipeline vs the model it feeds: RefDataModule samples/s against ViT-B/16 forward samples/s.

Loader: vpg-shapes ref rendered at 224 px (a few hundred rows), training loader (random expression
per row, PNG decode, CLIP-style 224 squash + normalise, tokenising in the collate), batch 32,
num_workers=2, persistent workers; timed over whole epochs after a warm-up epoch.
Model: ``vpg.clip.create_model("ViT-B-16")`` (random weights), image tower, batch 16, fp32, no grad.
Both in this process, one after the other. Goal: loader_vs_vitb16_forward >= 2 (the loader is not
the bottleneck of a ViT-B/16 method on the same machine).

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/data_pipeline.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import datasets
import torch

from vpg.clip import create_model, get_tokenizer
from vpg.data.datamodules import RefDataModule
from vpg.data.transforms import CLIP_MEAN, CLIP_STD, SquashResize


def loader_samples_per_s(
    cache_dir: str, images: int, epochs: int, batch: int, workers: int
) -> tuple[float, int]:
    options = {
        "split_sizes": {"train": images, "val": 1, "testA": 1, "testB": 1},
        "image_size": 224,
        "seed": 0,
        "cache_dir": cache_dir,
    }
    dm = RefDataModule("vpg-shapes/ref", options=options, batch_size=batch, num_workers=workers)
    dm.attach(SquashResize(224, CLIP_MEAN, CLIP_STD), get_tokenizer("ViT-B-16"))
    rows = len(dm.load("train"))
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up epoch: workers start, files are paged in
        pass
    samples, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        for b in loader:
            samples += len(b["image"])
    return samples / (time.perf_counter() - start), rows


@torch.inference_mode()
def forward_samples_per_s(batch: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = create_model("ViT-B-16").eval()
    images = torch.randn(batch, 3, 224, 224)
    model.encode_image(images)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.encode_image(images)
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="shapes-ref train images (~2.5 rows each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--forward-repeats", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="vpg-bench-") as cache:
        loader, rows = loader_samples_per_s(cache, args.images, args.epochs, batch=32, workers=args.workers)
    forward = forward_samples_per_s(batch=16, repeats=args.forward_repeats)
    print(
        f"loader: {loader:.1f} samples/s ({rows} rows at 224 px, {args.workers} workers, torch threads "
        f"{torch.get_num_threads()}); ViT-B/16 forward: {forward:.1f} samples/s (batch 16, fp32)"
    )
    print(f"RESULT loader_samples_per_s={loader:.1f} loader_vs_vitb16_forward={loader / forward:.2f}")


if __name__ == "__main__":
    main()
