"""HiVG through the `vpg` CLI with the vpg-tiny CLIP: HiLoRA stages in a real fit, resume inside a
stage (== an uninterrupted run), CPU DDP with 2 ranks (identical weights after a stage switch and
after training in the new stage), per-split test metrics, predict on real COCO photos."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from vpg.metrics import grounding_accuracy

from .helpers import REPO, run_cli

STAGES = ("[{epochs: 1, lr: 1.0e-3}, {epochs: 2, lr: 5.0e-4, vision_blocks: [0], text_blocks: [1]},"
          " {epochs: 1, lr: 2.5e-4, vision_blocks: [0, 1], text_blocks: [1]}]")
MODEL = ["--model.init_args.clip.init_args.name", "vpg-tiny", "--model.init_args.clip.init_args.pretrained", "null",
         "--model.init_args.bridge_layers", "[1]", "--model.init_args.text_layers", "[0, 1]",
         "--model.init_args.perceiver_layers", "[0, 1]", "--model.init_args.width", "32",
         "--model.init_args.encoder_layers", "1", "--model.init_args.encoder_heads", "2",
         "--model.init_args.encoder_ffn", "64", "--model.init_args.bridge_heads", "2",
         "--model.init_args.dropout", "0.0", "--model.init_args.log_images", "4"]
FIT = ["--config", "experiments/shapes/hivg.yaml", *MODEL,
       "--trainer.callbacks.init_args.rank", "4", "--trainer.callbacks.init_args.alpha", "2",
       "--trainer.callbacks.init_args.stages", STAGES,
       "--data.init_args.options", "{num_images: 40, seed: 0}", "--data.init_args.batch_size", "8",
       "--data.init_args.eval_batch_size", "16", "--data.init_args.num_workers", "0",
       "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def clip_trainable(model) -> list[str]:
    return [n for n, p in model.clip.named_parameters() if p.requires_grad and "lora_" not in n]


def test_fit_in_stages_resume_inside_a_stage_and_test(tmp_path, monkeypatch, capsys, shapes_cache):
    full = run_cli(["fit", *FIT, "--trainer.max_epochs", "4", "--trainer.logger.init_args.name", "full"],
                   tmp_path, monkeypatch)
    model = full.model
    assert model.hilora_stage == 2 and model.hilora_adapter["vision_blocks"] == [0, 1]
    assert not clip_trainable(model) and model.lora_parameters()
    assert full.trainer.global_step == 4 * 3
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # the adapter trained

    # stop after the first of stage 1's two epochs, then resume: same weights as the uninterrupted run
    part = run_cli(["fit", *FIT, "--trainer.max_epochs", "2", "--trainer.logger.init_args.name", "part"],
                   tmp_path, monkeypatch)
    assert part.model.hilora_stage == 1
    last = Path(part.trainer.checkpoint_callback.last_model_path)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["hilora"]["stage"] == 1 and any("lora_" in k for k in saved["state_dict"])
    resumed = run_cli(["fit", *FIT, "--trainer.max_epochs", "4", "--trainer.logger.init_args.name", "resumed",
                       "--ckpt_path", str(last)], tmp_path, monkeypatch)
    assert resumed.trainer.global_step == full.trainer.global_step
    expected = full.model.state_dict()
    got = resumed.model.state_dict()
    assert set(got) == set(expected)
    worst = max((got[k].float() - expected[k].float()).abs().max().item() for k in expected)
    assert worst < 1e-5, worst

    # test: one metric per split, equal to a hand count of IoU >= 0.5
    capsys.readouterr()
    tested = run_cli(["test", *FIT, "--ckpt_path", str(Path(full.trainer.checkpoint_callback.last_model_path)),
                      "--trainer.logger.init_args.name", "tested"], tmp_path, monkeypatch)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    reported = json.loads(Path(re.fullmatch(r"metrics: (.+)", last_line).group(1)).read_text())["metrics"]
    assert set(reported) >= {"test/acc@0.5/testA", "test/acc@0.5/testB", "test/acc@0.5/val"}
    net, dm = tested.model.eval(), tested.datamodule
    assert tested.model.hilora_stage == 2  # restored from the checkpoint
    for split, loader in zip(dm.test_split_names, dm.test_dataloader()):
        hits = total = 0
        with torch.no_grad():
            for batch in loader:
                hits += grounding_accuracy(net(batch["image"], batch["text"])["box"], batch["gold"]).sum().item()
                total += len(batch["gold"])
        assert reported[f"test/acc@0.5/{split}"] == pytest.approx(hits / total)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(tested.trainer.log_dir))).Reload()
    assert {"test/testA", "test/testB", "test/val"} <= set(events.Tags()["images"])  # pictures: gold vs prediction


class RankWeights(L.Callback):
    """Test probe (used by the DDP subprocess): every rank saves the module's weights at each epoch
    start (after HiLoRA, which comes first in the callback list) and at the end of training."""

    def __init__(self, directory: str):
        self.directory = Path(directory)

    def _save(self, trainer, pl_module, tag):
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "stage": pl_module.hilora_stage},
                   self.directory / f"rank{trainer.global_rank}_{tag}.pt")

    def on_train_epoch_start(self, trainer, pl_module):
        self._save(trainer, pl_module, f"epoch{trainer.current_epoch}_start")

    def on_train_end(self, trainer, pl_module):
        self._save(trainer, pl_module, "end")


def test_ddp_two_ranks_hold_identical_weights_across_a_stage_switch(tmp_path, shapes_cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "VPG_CACHE": str(shapes_cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    probe = tmp_path / "weights"
    stages = "[{epochs: 1, lr: 1.0e-3}, {epochs: 1, lr: 5.0e-4, vision_blocks: [0, 1], text_blocks: [1]}]"
    args = ["fit", *FIT, "--trainer.callbacks.init_args.stages", stages, "--trainer.max_epochs", "2",
            "--trainer.limit_val_batches", "0", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.callbacks+=tests.integration.test_hivg.RankWeights",
            "--trainer.callbacks.init_args.directory", str(probe)]
    proc = subprocess.run([sys.executable, "-m", "vpg", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for tag in ("epoch1_start", "end"):  # right after the switch to stage 1, and after training in it
        a, b = (torch.load(probe / f"rank{r}_{tag}.pt", weights_only=False) for r in (0, 1))
        assert a["stage"] == b["stage"] == 1
        assert set(a["state"]) == set(b["state"]) and any("lora_" in k for k in a["state"])
        for key in a["state"]:
            assert torch.equal(a["state"][key], b["state"][key]), (tag, key)
    start, end = (torch.load(probe / f"rank0_{t}.pt", weights_only=False)["state"] for t in ("epoch1_start", "end"))
    moved = [k for k in start if "lora_B" in k and not torch.equal(start[k], end[k])]
    assert moved  # the new adapter trained under DDP (and stayed identical on both ranks)


def test_predict_on_real_coco_photos(tmp_path, monkeypatch):
    out_dir = tmp_path / "predictions"
    cli = run_cli(["predict", "--config", "experiments/hivg_predict.yaml", *MODEL,
                   "--model.init_args.prediction_dir", str(out_dir), "--trainer.enable_progress_bar", "false"],
                  tmp_path, monkeypatch)
    records = sorted(out_dir.glob("*.json"))
    assert len(records) == 4 and len(list(out_dir.glob("*.png"))) == 4  # 2 photos x 2 expressions
    first = json.loads(records[0].read_text())
    assert first["image_id"].endswith("COCO_val2014_000000262148.jpg")
    assert first["expression"] == "the skateboarder in the air"
    # the box is the model's, mapped from the 32-px letterbox back to the 640 x 512 photo
    batch = next(iter(cli.datamodule.predict_dataloader()))
    with torch.no_grad():
        box = cli.model.eval()(batch["image"], batch["text"])["box"][0]
    scale = batch["scale"][0].repeat(2)
    expected = torch.minimum((box / scale).clamp(min=0), batch["orig_size"][0].float().repeat(2))
    assert first["box_xyxy"] == pytest.approx(expected.tolist(), abs=0.02)
    from PIL import Image

    assert Image.open(records[0].with_suffix(".png")).width == 640  # drawn on the original photo
