"""The committed tiny CLIP: loads through the same path as real open_clip weights and meets its quality bar."""

import json
import re
from pathlib import Path

import pytest

from vpg.cli import main

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "checkpoints" / "vpg_shapes_clip.safetensors"
TOWER = "vpg-shapes-vit-p8-w96-s64"  # the committed checkpoint's architecture (vpg/clip/model_configs)


def test_checkpoint_is_small_and_open_clip_loadable():
    import open_clip
    from safetensors.torch import load_file

    assert CHECKPOINT.stat().st_size <= 20 * 2**20
    model = open_clip.create_model(TOWER, pretrained=str(CHECKPOINT))  # plain open_clip
    state = load_file(str(CHECKPOINT))
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state
    assert model.visual.image_size == (64, 64)


def run_and_read_metrics(args, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    (tmp_path / "checkpoints").symlink_to(REPO / "checkpoints")
    main(args)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(Path(re.fullmatch(r"metrics: (.+)", last).group(1)).read_text())["metrics"]


# Measured on the committed file: top-1 0.858, top-5 1.000 (README, Results); the project's goal
# is top-1 >= 0.80. The floors are the goal (top-1) and a margin under the measured top-5, so a
# checkpoint or a retrain that falls below the goal fails.
TOP1_FLOOR, TOP5_FLOOR = 0.80, 0.98


def test_zero_shot_accuracy_of_committed_checkpoint(capsys, monkeypatch, tmp_path, shapes_cache):
    """Zero-shot top-1/top-5 on shapes-cls test with "a photo of a {colour} {shape}."."""
    metrics = run_and_read_metrics(["test", "--config", "experiments/shapes/zeroshot_cls.yaml",
                                    "--trainer.enable_progress_bar", "false"], capsys, monkeypatch, tmp_path)
    assert metrics["test/acc@1"] >= TOP1_FLOOR
    assert metrics["test/acc@5"] >= TOP5_FLOOR
    # The monitor that pretraining logs (zeroshot/top1) scores exactly what `vpg test` scores.
    from vpg.callbacks import ZeroShotMonitor
    from vpg.clip import create_model

    clip = create_model(TOWER, pretrained=str(CHECKPOINT))
    assert ZeroShotMonitor(split="test").evaluate(clip) == pytest.approx(metrics["test/acc@1"], abs=1e-6)


@pytest.mark.slow
def test_pretraining_config_reproduces_quality(capsys, monkeypatch, tmp_path, shapes_cache):
    """~12 min: retrain from the config; the retrained weights reach the committed checkpoint's quality."""
    weights = tmp_path / "retrained.safetensors"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    main(["fit", "--config", "experiments/shapes/clip_pretrain.yaml", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks.init_args.path", str(weights)])
    capsys.readouterr()
    main(["test", "--config", "experiments/shapes/zeroshot_cls.yaml", "--trainer.enable_progress_bar", "false",
          "--model.init_args.clip.init_args.pretrained", str(weights)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads(Path(re.fullmatch(r"metrics: (.+)", last).group(1)).read_text())["metrics"]
    assert metrics["test/acc@1"] >= TOP1_FLOOR and metrics["test/acc@5"] >= TOP5_FLOOR
