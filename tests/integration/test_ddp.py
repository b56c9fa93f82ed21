"""`--trainer.strategy ddp --trainer.devices 2` on CPU: fit works, test metric equals one process."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def vpg(args, cwd, env):
    proc = subprocess.run([sys.executable, "-m", "vpg", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def metrics_of(stdout):
    path = re.search(r"^metrics: (.+)$", stdout, re.MULTILINE).group(1)
    return json.loads(Path(path).read_text())["metrics"]


def test_ddp_fit_and_test_match_single_process(tmp_path, shapes_cache):
    import os

    env = {**os.environ, **OFFLINE, "VPG_CACHE": str(shapes_cache)}
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    weights = tmp_path / "ddp.safetensors"
    vpg(["fit", "--config", "experiments/shapes/clip_pretrain.yaml",
         "--model.init_args.clip.init_args.name", "vpg-tiny",
         "--data.init_args.options", "{num_scenes: 64, num_single: 32, num_depth: 0, seed: 0}",
         "--data.init_args.eval_options", "{num_images: 40, seed: 0}",
         "--data.init_args.batch_size", "16", "--data.init_args.num_workers", "0",
         "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
         "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
         "--trainer.callbacks.init_args.path", str(weights)], tmp_path, env)
    assert weights.is_file()
    test = ["test", "--config", "experiments/shapes/zeroshot_cls.yaml",
            "--model.init_args.clip.init_args.name", "vpg-tiny",
            "--model.init_args.clip.init_args.pretrained", str(weights),
            "--data.init_args.options", "{num_images: 120, seed: 0}",
            "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar", "false"]
    single = metrics_of(vpg(test, tmp_path, env))
    ddp = metrics_of(vpg([*test, "--trainer.devices", "2", "--trainer.strategy", "ddp"], tmp_path, env))
    assert ddp["test/acc@1"] == pytest.approx(single["test/acc@1"], abs=1e-6)
    assert ddp["test/acc@5"] == pytest.approx(single["test/acc@5"], abs=1e-6)
