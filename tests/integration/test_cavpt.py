"""DPT / CAVPT through the `vpg` CLI on a small vpg-shapes few-shot set (vpg-tiny CLIP), and the
metrics aggregation script."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from .helpers import REPO, run_cli

sys.path.insert(0, str(REPO / "scripts"))
from aggregate_metrics import aggregate  # noqa: E402

SHOTS = 2
TINY = ["--config", "experiments/shapes/cavpt.yaml",
        "--model.init_args.clip.init_args.name", "vpg-tiny", "--model.init_args.clip.init_args.pretrained", "null",
        "--model.init_args.context_length", "4", "--model.init_args.top_k", "5",
        "--data.init_args.options", "{split_sizes: {train: 96, val: 96, test: 48}, seed: 0}",
        "--data.init_args.shots", str(SHOTS), "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_fit_then_test_the_last_epoch(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["fit", *TINY, "--model.init_args.variant", "vlp_cavpt"], tmp_path, monkeypatch)
    model, dm = cli.model, cli.datamodule
    # CoOp's few-shot protocol: K per class from train, min(K, 4) from val
    assert len(dm.load("train")) == SHOTS * 48 and len(dm.load("val")) == SHOTS * 48
    assert cli.trainer.global_step == 2 * 3  # 2 epochs x ceil(96 / 32) batches
    summary = model.trainable_summary()
    assert set(summary) == {"text_context", "visual_prompts", "cavpt", "total"}
    assert model.cavpt[0].classifier.out_features == 48  # built from the DataModule's classes
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    capsys.readouterr()

    tested = run_cli(["test", *TINY, "--model.init_args.variant", "vlp_cavpt", "--ckpt_path", str(ckpt)],
                     tmp_path, monkeypatch)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    reported = json.loads(Path(re.fullmatch(r"metrics: (.+)", last).group(1)).read_text())["metrics"]
    # the restored prompts are the trained ones, and the reported top-1 is their accuracy
    restored = dict(tested.model.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(restored[name], p), name
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            correct += (model(batch["image"]).logits.argmax(-1) == batch["label"]).sum().item()
            total += len(batch["label"])
    assert total == 48 and reported["test/acc@1"] == pytest.approx(correct / total)


def test_zero_shot_variant_trains_nothing_and_equals_the_zero_shot_config(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["fit", *TINY, "--model.init_args.variant", "zeroshot"], tmp_path, monkeypatch)
    assert cli.trainer.global_step == 0 and "0 optimizer steps" in capsys.readouterr().out
    model = cli.model.eval()
    from vpg.methods.zeroshot import ZeroShotClassifier

    reference = ZeroShotClassifier(model.clip)
    reference.classifier = reference.class_text_features(model.class_names, reference.templates)
    batch = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        assert torch.equal(model.batch_logits(batch), reference(batch["image"]))


def write_run(root: Path, experiment: str, version: int, variant: str, seed: int, acc: float) -> Path:
    run = root / experiment / f"version_{version}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"seed_everything: {seed}\nmodel:\n  init_args:\n    variant: {variant}\n")
    path = run / "metrics.json"
    path.write_text(json.dumps({"stage": "test", "model": "X", "metrics": {"test/acc@1": acc, "test/loss": 2.0}}))
    return path


def test_aggregate_metrics_groups_seeds(tmp_path):
    paths = [write_run(tmp_path, "cavpt_eurosat", i, v, s, acc) for i, (v, s, acc) in enumerate(
        [("coop", 1, 0.70), ("coop", 2, 0.72), ("coop", 3, 0.74), ("vlp_cavpt", 1, 0.80)])]
    table = aggregate(paths, metrics=["test/acc@1"], show=["seed_everything"]).splitlines()
    assert table[0] == "| experiment | model.init_args.variant | runs | seed_everything | test/acc@1 |"
    assert table[2] == "| cavpt_eurosat | coop | 3 | 1, 2, 3 | 72.0 ± 2.0 |"  # sample std of 70/72/74
    assert table[3] == "| cavpt_eurosat | vlp_cavpt | 1 | 1 | 80.0 |"
    raw = aggregate(paths, metrics=["test/loss"], group_by="experiment").splitlines()
    assert raw[2] == "| cavpt_eurosat | 4 | 2.0000 ± 0.0000 |"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="no 'metrics' object"):
        aggregate([tmp_path / "bad.json"])
