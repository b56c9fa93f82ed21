"""DDP correctness: two gloo CPU processes on different (uneven) shards sync to the single-process value."""

from __future__ import annotations

import datetime
import math
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vpg.metrics import GroundingAccuracy, MultiLabelMAP, grounding_accuracy, multilabel_map, per_class_ap

WORLD = 2
NUM_CLASSES = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = 9
    gold = torch.rand(n, 2, generator=g)
    gold = torch.cat([gold, gold + 0.2 + torch.rand(n, 2, generator=g)], dim=1)  # (n, 4) xyxy
    pred = gold + 0.3 * torch.randn(n, 4, generator=g)  # (n, 4), some hits, some misses
    scores = 40 * torch.randn(n, NUM_CLASSES, generator=g)  # (n, C) CLIP-scale logits
    targets = (torch.rand(n, NUM_CLASSES, generator=g) < 0.4).long()  # (n, C)
    targets[:, 3] = 0  # class 3: no positive anywhere -> excluded
    targets[:, 2] = 0
    targets[7, 2] = 1  # class 2: its only positive lives on rank 1's shard
    return {"pred": pred, "gold": gold, "scores": scores, "targets": targets}


def _shard(rank: int) -> slice:
    return slice(0, 5) if rank == 0 else slice(5, None)  # uneven: 5 + 4 samples


def _worker(rank: int, port: int, data: dict[str, torch.Tensor], out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        s = _shard(rank)
        acc = GroundingAccuracy(iou_threshold=0.5)
        acc.update(data["pred"][s], data["gold"][s])
        mmap = MultiLabelMAP(num_classes=NUM_CLASSES)
        mmap.update(data["scores"][s][:2], data["targets"][s][:2])  # two updates per rank
        mmap.update(data["scores"][s][2:], data["targets"][s][2:])
        result = {
            "acc": acc.compute(),
            "map": mmap.compute(),
            "per_class": mmap.compute_per_class(),
            "local_total": acc.total.clone(),  # states are unsynced again after compute
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_metrics_sync_across_two_processes(tmp_path):
    data = _data()
    mp.spawn(_worker, args=(_free_port(), data, str(tmp_path)), nprocs=WORLD, join=True)

    expected_acc = grounding_accuracy(data["pred"], data["gold"], 0.5).float().mean()
    expected_map = multilabel_map(data["scores"], data["targets"])
    expected_per_class = per_class_ap(data["scores"], data["targets"])
    assert 0 < expected_acc < 1  # the data exercise both hits and misses
    assert math.isnan(expected_per_class[3].item()) and not math.isnan(expected_per_class[2].item())

    for rank in range(WORLD):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(res["acc"], expected_acc)
        assert torch.allclose(res["map"], expected_map)
        assert torch.allclose(res["per_class"], expected_per_class, equal_nan=True)
        assert res["local_total"].item() == (5 if rank == 0 else 4)
