"""WSG through the `vpg` CLI: CLIP-only test on shapes-phrase, a 2-step stage 1 -> stage 2 chain,
and `vpg predict` on the real VG photos with their real region phrases (vpg-tiny CLIP)."""

import json

import pytest
import torch
from PIL import Image

from vpg.metrics import pointing_game_hits
from vpg.metrics.heatmaps import drop_small_boxes, heatmap_to_original, union_box

from .helpers import REPO, metrics_file, run_cli

TINY_CLIP = ["--model.init_args.clip.init_args.name", "vpg-tiny", "--model.init_args.clip.init_args.pretrained",
             "null", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SMALL = ["--data.init_args.options", "{num_images: 120, seed: 0}", "--data.init_args.batch_size", "8"]
NET = ["--model.init_args.network.init_args.text_dim", "32", "--model.init_args.network.init_args.width", "0.125"]


def test_clip_gae_test_matches_a_hand_count(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["test", "--config", "experiments/shapes/wsg_clip.yaml", *TINY_CLIP, *SMALL,
                   "--data.init_args.eval_options", "{num_images: 120, seed: 0}",
                   "--model.init_args.eval_unit", "phrase"], tmp_path, monkeypatch)
    reported = metrics_file(capsys)
    assert {"test/pointing/test", "test/bbox_acc/test"} <= set(reported)
    assert any(k.startswith("test/pointing/test/") for k in reported)  # per-category rows
    model, dm = cli.model.eval(), cli.datamodule
    hits = total = 0
    for batch in dm.dataloader("test"):  # pointing recomputed outside Lightning, phrase units
        heat = model.heatmaps(batch)
        for b in range(len(heat)):
            w, h = batch["orig_size"][b].tolist()
            boxes = drop_small_boxes(batch["boxes"][b] / batch["scale"][b].repeat(2), w, h)
            if len(boxes):
                orig = heatmap_to_original(heat[b], (w, h), batch["scale"][b].tolist())
                hits += int(pointing_game_hits(orig[None], [boxes]).item())
                total += 1
    assert total > 0 and reported["test/pointing/test"] == pytest.approx(hits / total)


def test_stage_one_then_stage_two_from_its_checkpoint(tmp_path, monkeypatch, capsys, shapes_cache):
    common = [*TINY_CLIP, *NET, *SMALL, "--data.init_args.eval_options", "{num_images: 120, seed: 0}",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--model.init_args.log_images", "2"]
    stage1 = run_cli(["fit", "--config", "experiments/shapes/wsg_wwbl.yaml", *common], tmp_path, monkeypatch)
    assert stage1.trainer.global_step == 2
    ckpt = tmp_path / "logs/wsg_wwbl_shapes/checkpoints/last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("clip.") for k in saved)  # the frozen CLIP comes from the config
    stage2 = run_cli(["fit", "--config", "experiments/shapes/wsg_vpt.yaml", *common, "--model.init_args.init_from",
                      str(ckpt), "--model.init_args.prompt", "gae"], tmp_path, monkeypatch)
    # stage 2 started from stage 1's network and then changed it by its own steps
    net1 = {k.removeprefix("network."): v for k, v in saved.items() if k.startswith("network.")}
    assert stage2.model._initialised_from == str(ckpt)
    assert any(not torch.equal(v, net1[k]) for k, v in stage2.model.network.state_dict().items()
               if v.is_floating_point())
    capsys.readouterr()
    run_cli(["test", "--config", "experiments/shapes/wsg_vpt.yaml", *common, "--model.init_args.init_from", str(ckpt),
             "--ckpt_path", str(tmp_path / "logs/wsg_vpt_shapes/checkpoints/last.ckpt")], tmp_path, monkeypatch)
    reported = metrics_file(capsys)
    assert 0.0 <= reported["test/pointing/test"] <= 1.0 and 0.0 <= reported["test/bbox_acc/test"] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = max((tmp_path / "logs/wsg_vpt").glob("version_*"))
    assert "test/test" in EventAccumulator(str(logdir)).Reload().Tags()["images"]


def test_predict_on_real_vg_photos_with_real_region_phrases(tmp_path, monkeypatch):
    regions = json.loads((REPO / "tests/fixtures/real/vg/region_descriptions.json").read_text())
    phrases = [[r["phrase"].strip() for r in entry["regions"][:2]] for entry in regions]  # images 1 and 2
    out = tmp_path / "pred"
    run_cli(["predict", "--config", "experiments/wsg_predict.yaml", *TINY_CLIP, *NET, "--data.init_args.expressions",
             json.dumps(phrases), "--model.init_args.prediction_dir", str(out)], tmp_path, monkeypatch)
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert [r["phrase"] for r in records] == [p for pair in phrases for p in pair]
    for record in records:
        assert record["image_size"] == [800, 600]  # the real photos' size
        heat = Image.open(out / record["heatmap_png"])
        assert heat.size == (800, 600) and heat.mode == "L"
        pixels = torch.tensor(list(heat.getdata()), dtype=torch.float32).view(600, 800)
        x, y = record["point_xy"]
        assert pixels[y, x] == pixels.max()  # the JSON's point is the PNG's peak (up to 8-bit rounding)
        box = torch.tensor(record["box_xyxy"])
        assert torch.equal(box, union_box(torch.tensor(record["boxes_xyxy"])))
        assert 0 <= box[0] < box[2] <= 800 and 0 <= box[1] < box[3] <= 600
        assert Image.open(out / record["heatmap_png"].replace("_heatmap", "")).size[0] == 800  # the overlay
