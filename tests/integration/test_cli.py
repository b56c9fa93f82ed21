"""The `vpg` command end to end on vpg-shapes with the 2-block vpg-tiny CLIP."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vpg.cli import main

from .helpers import REPO, run_cli

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments").rglob("*.yaml"))

TINY_CLS = [
    "--config", "experiments/shapes/zeroshot_cls.yaml",
    "--model.init_args.clip.init_args.name", "vpg-tiny",
    "--model.init_args.clip.init_args.pretrained", "null",
    "--data.init_args.options", "{num_images: 120, seed: 0}",
    "--trainer.enable_progress_bar", "false",
]

TINY_PRETRAIN = [
    "--config", "experiments/shapes/clip_pretrain.yaml",
    "--model.init_args.clip.init_args.name", "vpg-tiny",
    "--data.init_args.options", "{num_scenes: 48, num_single: 16, num_depth: 0, seed: 0}",
    "--data.init_args.eval_options", "{num_images: 40, seed: 0}",
    "--data.init_args.batch_size", "16",
    "--data.init_args.num_workers", "0",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
]


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "vpg", "--help"], capture_output=True, text=True, check=True).stdout
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out


@pytest.mark.parametrize("config", CONFIGS)
def test_every_experiment_config_prints(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    # _base/ files are fragments: they are checked composed with a complete experiment
    configs = ["--config", config] + (["--config", "experiments/shapes/zeroshot_cls.yaml"] if "/_base/" in config else [])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: vpg." in printed


def test_test_writes_metrics_json_with_checked_value(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["test", *TINY_CLS], tmp_path, monkeypatch)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    path = Path(re.fullmatch(r"metrics: (.+)", last).group(1))
    assert path.parent.parent.name == "zeroshot_cls" and path.parent.name.startswith("version_")
    reported = json.loads(path.read_text())["metrics"]["test/acc@1"]
    # recompute top-1 by hand with the same model and data
    model, dm = cli.model, cli.datamodule
    correct = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            correct += (model(batch["image"]).argmax(-1) == batch["label"]).sum().item()
            total += len(batch["label"])
    assert total == len(dm.load("test")) > 0 and reported == pytest.approx(correct / total)


def test_training_free_fit_validates_without_steps(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["fit", *TINY_CLS], tmp_path, monkeypatch)
    assert cli.trainer.global_step == 0
    out = capsys.readouterr().out
    assert "0 optimizer steps" in out and out.strip().splitlines()[-1].startswith("metrics: ")
    assert not any(p.requires_grad for p in cli.model.parameters())


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.init_args.clip.init_args.pretrained", "missing/w.safetensors"], "CLIP weights file not found: 'missing/w.safetensors'"),
        (["--model.init_args.clip.init_args.name", "ViT-Q-99"], "unknown CLIP model name 'ViT-Q-99'"),
        (["--model.init_args.no_such_key", "3"], "no_such_key"),
        (["--data.init_args.batch_size", "abc"], "batch_size"),
    ],
)
def test_bad_config_is_a_clear_error(override, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *TINY_CLS, *override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, shapes_cache):
    """Stop after epoch 1, resume with --ckpt_path last: same weights as 2 epochs straight."""
    straight = run_cli(["fit", *TINY_PRETRAIN, "--trainer.max_epochs", "2",
                        "--trainer.callbacks.init_args.path", str(tmp_path / "a.safetensors"),
                        "--trainer.logger.init_args.name", "straight"], tmp_path, monkeypatch)
    run_cli(["fit", *TINY_PRETRAIN, "--trainer.max_epochs", "1",
             "--trainer.callbacks.init_args.path", str(tmp_path / "b.safetensors"),
             "--trainer.logger.init_args.name", "resumed"], tmp_path, monkeypatch)
    last = next((tmp_path / "logs" / "resumed").rglob("last.ckpt"))
    resumed = run_cli(["fit", *TINY_PRETRAIN, "--trainer.max_epochs", "2", "--ckpt_path", str(last),
                       "--trainer.callbacks.init_args.path", str(tmp_path / "c.safetensors"),
                       "--trainer.logger.init_args.name", "resumed"], tmp_path, monkeypatch)
    assert straight.trainer.global_step == resumed.trainer.global_step == 8
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    # and training changed the weights at all
    assert straight.model.clip.model.visual.proj.requires_grad


def test_checkpoint_loads_without_manual_imports(tmp_path, monkeypatch, shapes_cache):
    run_cli(["fit", *TINY_PRETRAIN, "--trainer.max_epochs", "1",
             "--trainer.callbacks.init_args.path", str(tmp_path / "w.safetensors")], tmp_path, monkeypatch)
    last = next((tmp_path / "logs").rglob("last.ckpt"))
    code = (
        "import sys, torch, vpg.methods as m\n"
        f"model = m.CLIPPretraining.load_from_checkpoint({str(last)!r})\n"
        "print(type(model.clip).__name__, model.clip.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "CLIP vpg-tiny" in out


def test_command_line_wins_over_checkpoint_hyperparameters(tmp_path, monkeypatch, shapes_cache):
    """Stock LightningCLI parses a checkpoint's saved hyperparameters over the command line."""
    run_cli(["fit", *TINY_PRETRAIN, "--trainer.max_epochs", "1",
             "--trainer.callbacks.init_args.path", str(tmp_path / "w.safetensors")], tmp_path, monkeypatch)
    last = next((tmp_path / "logs").rglob("last.ckpt"))
    cli = run_cli(["validate", *TINY_PRETRAIN, "--ckpt_path", str(last), "--model.init_args.max_logit_scale", "50"],
                  tmp_path, monkeypatch)
    assert cli.model.max_log_scale == pytest.approx(math.log(50))


def test_configs_compose_left_to_right(tmp_path, monkeypatch, capsys):
    override = tmp_path / "override.yaml"
    override.write_text("data:\n  init_args:\n    batch_size: 7\ntrainer:\n  max_epochs: 3\n")
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "experiments/_base/trainer.yaml", "--config", "experiments/shapes/zeroshot_cls.yaml",
              "--config", str(override), "--print_config"])
    printed = capsys.readouterr().out
    assert "batch_size: 7" in printed and "max_epochs: 3" in printed
    assert "log_every_n_steps: 20" in printed  # from _base/trainer.yaml
    assert "class_path: vpg.methods.ZeroShotClassifier" in printed


def test_bf16_mixed_precision_passes_through(tmp_path, monkeypatch, shapes_cache):
    cli = run_cli(["fit", *TINY_PRETRAIN, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed",
                   "--trainer.callbacks.init_args.path", str(tmp_path / "w.safetensors")], tmp_path, monkeypatch)
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.global_step == 4
    assert (tmp_path / "w.safetensors").is_file()
