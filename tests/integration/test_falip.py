"""FALIP through the `vpg` CLI on small vpg-shapes sets and the real COCO photos (vpg-tiny CLIP)."""

import json
from pathlib import Path

import pytest
import torch

from vpg.metrics import grounding_accuracy

from .helpers import metrics_file, run_cli

TINY = ["--model.init_args.clip.init_args.name", "vpg-tiny", "--model.init_args.clip.init_args.pretrained", "null",
        "--model.init_args.layers", "[1]", "--trainer.enable_progress_bar", "false"]
REC = ["--config", "experiments/shapes/falip_rec.yaml", *TINY,
       "--data.init_args.options", "{num_images: 40, seed: 0}", "--data.init_args.batch_size", "16"]


def hand_accuracy(model, loader) -> float:
    """Acc@0.5 recomputed outside Lightning: argmax of the model's scores per sample."""
    hits = total = 0
    with torch.no_grad():
        for batch in loader:
            scores = model.score(batch)
            chosen = batch["candidates"][torch.arange(len(scores)), scores.argmax(-1)]
            hits += grounding_accuracy(chosen, batch["gold"]).sum().item()
            total += len(scores)
    return hits / total


def test_rec_test_logs_every_split_and_matches_a_hand_count(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["test", *REC], tmp_path, monkeypatch)
    reported = metrics_file(capsys)
    assert set(reported) == {"test/acc@0.5/testA", "test/acc@0.5/testB", "test/acc@0.5/val"}
    model, dm = cli.model.eval(), cli.datamodule
    for split, loader in zip(dm.test_split_names, dm.test_dataloader()):
        assert reported[f"test/acc@0.5/{split}"] == pytest.approx(hand_accuracy(model, loader))
    # one sample per (row, expression)
    rows = dm.load("testA")
    assert sum(len(s) for s in rows["sentences"]) == sum(len(b["sentences"]) for b in dm.test_dataloader()[0])
    # TensorBoard got the pictures (image, candidates, prediction vs gold, expression)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(cli.trainer.log_dir))).Reload()
    assert {"test/testA", "test/testB", "test/val"} <= set(events.Tags()["images"])


def test_training_free_fit_and_subtract(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["fit", *REC, "--model.init_args.subtract", "true", "--model.init_args.num_negatives", "20"],
                  tmp_path, monkeypatch)
    assert cli.trainer.global_step == 0 and not any(p.requires_grad for p in cli.model.parameters())
    out = capsys.readouterr().out
    assert "0 optimizer steps" in out
    model, dm = cli.model.eval(), cli.datamodule
    lookup, means = model._negative_banks["val"]
    assert set(lookup) == set(dm.load("val")["image_id"]) and means.shape[0] == len(lookup)
    # subtract changes the scores by exactly the negatives' mean similarity
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        with_p = model.score(batch, "val")
        model.subtract = False
        plain = model.score(batch, "val")
        first, inverse = model.unique_images(batch)
        region = model.candidate_features(batch["image"][first], batch["candidates"][first],
                                          batch["candidate_mask"][first], "falip")[inverse]  # (B, K, E)
        negatives = model.negatives_mean(batch["image_id"], "val")  # (B, E)
    shift = torch.einsum("bke,be->bk", region, negatives)
    finite = ~plain.isinf()
    assert torch.allclose(with_p[finite], (plain - shift)[finite], atol=1e-5)


def test_predict_on_real_coco_photos(tmp_path, monkeypatch):
    out_dir = tmp_path / "predictions"
    run_cli(["predict", "--config", "experiments/falip_predict.yaml", *TINY,
             "--model.init_args.prediction_dir", str(out_dir)], tmp_path, monkeypatch)
    records = sorted(out_dir.glob("*.json"))
    assert len(records) == 6 and len(list(out_dir.glob("*.png"))) == 6  # 2 photos x 3 expressions
    first = json.loads(records[0].read_text())
    assert first["image_id"].endswith("COCO_val2014_000000262148.jpg")
    assert first["expression"] == "the skateboarder in the air"
    # the chosen box is one of the given boxes, mapped back to the 640 x 512 photo exactly
    given = [[245, 65, 410, 350], [148, 360, 492, 500], [148, 245, 490, 350], [265, 45, 300, 250]]
    assert torch.allclose(torch.tensor(first["candidates_xyxy"]), torch.tensor(given, dtype=torch.float), atol=0.01)
    assert first["box_xyxy"] == pytest.approx(given[first["candidate_index"]], abs=0.01)
    assert first["candidate_index"] == max(range(4), key=lambda k: first["scores"][k])
    from PIL import Image

    assert Image.open(records[0].with_suffix(".png")).width == 640  # drawn on the original photo


def test_pointcloud_on_shapes_3d(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["test", "--config", "experiments/shapes/falip_pointcloud.yaml", *TINY,
                   "--data.init_args.options", "{split_sizes: {train: 7, test: 21}, seed: 0}",
                   "--data.init_args.num_points", "256"], tmp_path, monkeypatch)
    reported = metrics_file(capsys)
    model, dm = cli.model.eval(), cli.datamodule
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        logits = model(batch["points"])
        # by hand: one depth image + foveal mask per view, summed view features
        from vpg.modules.foveal import foveal_mask

        images, boxes = model.depth_images(batch["points"])
        assert ((boxes[:, 2] - boxes[:, 0]) < 32).any()  # objects do not fill the views: the mask matters
        bias = {1: foveal_mask(boxes, (4, 4), (32, 32))}
        feats = torch.nn.functional.normalize(model.clip.encode_image(images, attn_bias=bias), dim=-1)
        pooled = feats.view(len(batch["points"]), 6, -1).sum(1)
        expected = model.clip.logit_scale.exp() * pooled @ model.classifier.t()
    assert torch.allclose(logits, expected, atol=1e-4)
    assert logits.shape == (len(batch["points"]), 7)
    top1 = (logits.argmax(-1) == batch["label"]).float().mean().item()
    assert reported["test/acc@1"] == pytest.approx(top1)  # 21 clouds: one batch


def test_classification_with_box_on_shapes_cls(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["test", "--config", "experiments/shapes/falip_cls.yaml", *TINY,
                   "--data.init_args.options", "{num_images: 120, seed: 0}"], tmp_path, monkeypatch)
    reported = metrics_file(capsys)
    model, dm = cli.model.eval(), cli.datamodule
    correct = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            assert batch["bbox"].shape == (len(batch["label"]), 4)
            correct += (model(batch["image"], batch["bbox"]).argmax(-1) == batch["label"]).sum().item()
            total += len(batch["label"])
    assert reported["test/acc@1"] == pytest.approx(correct / total)
