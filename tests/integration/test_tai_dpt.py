"""TaI-DPT through the `vpg` CLI on small vpg-shapes sets (vpg-tiny CLIP): trained on caption
text only, validated on held-out captions, tested on shapes-multilabel images."""

from pathlib import Path

import pytest
import torch

from vpg.metrics import multilabel_map, per_class_ap

from .helpers import metrics_file, run_cli

CONFIG = "experiments/shapes/tai_dpt.yaml"
SMALL = [
    "--model.init_args.clip.init_args.name", "vpg-tiny", "--model.init_args.clip.init_args.pretrained", "null",
    "--model.init_args.n_ctx", "4", "--trainer.enable_progress_bar", "false",
    "--data.init_args.options", "{num_images: 60, seed: 0}", "--data.init_args.max_captions", "120",
    "--data.init_args.batch_size", "32", "--data.init_args.val_fraction", "0.2",
    "--data.init_args.images.init_args.options", "{num_images: 40, seed: 0}",
    "--data.init_args.images.init_args.batch_size", "16",
]


def test_fit_on_text_then_test_on_images(tmp_path, monkeypatch, capsys, shapes_cache):
    cli = run_cli(["fit", "--config", CONFIG, *SMALL, "--trainer.max_epochs", "2"], tmp_path, monkeypatch)
    model, dm = cli.model, cli.datamodule
    assert cli.trainer.global_step > 0
    # trained on text only: the training set is captions (+ templates), never an image
    assert dm.stats["train_used"] == 120 and dm.stats["template_sentences"] == 8 * 6
    assert dm.stats["train_dropped"] + dm.stats["train_matched"] > 0 and dm.stats["val_captions"] > 0
    assert not hasattr(dm.train_set, "image")
    # only the prompts moved (all 8 classes have their names in the prompts)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "prompt_learner.contexts.global", "prompt_learner.contexts.local"}
    assert "val/mAP" in cli.trainer.callback_metrics and "val/loss" in cli.trainer.callback_metrics
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert ckpt

    capsys.readouterr()
    cli = run_cli(["test", "--config", CONFIG, *SMALL, "--ckpt_path", ckpt], tmp_path, monkeypatch)
    reported = metrics_file(capsys)
    model, dm = cli.model.eval(), cli.datamodule
    # test/mAP and per-class AP recomputed outside Lightning from the model's image scores
    scores, labels = [], []
    with torch.no_grad():
        model._cache_eval_classes()
        for batch in dm.test_dataloader():
            scores.append(model.eval_scores(batch)["final"])
            labels.append(batch["labels"])
    scores, labels = torch.cat(scores), torch.cat(labels)
    assert len(labels) == len(dm.images.load("test")) > 0  # every test image once
    assert reported["test/mAP"] == pytest.approx(multilabel_map(scores, labels).item(), abs=1e-5)
    ap = per_class_ap(scores, labels)
    for name, value in zip(model.class_names, ap.tolist()):
        if value == value:  # nan: no positives, not logged
            assert reported[f"test/ap/{name}"] == pytest.approx(value, abs=1e-5)
    # the picture of the local branch's attention went to TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(cli.trainer.log_dir))).Reload()
    assert "test/attention" in events.Tags()["images"]


def test_zero_shot_configs_are_training_free(tmp_path, monkeypatch, capsys, shapes_cache):
    small = [a for a in SMALL if a not in ("--model.init_args.n_ctx", "4")]
    cli = run_cli(["test", "--config", "experiments/shapes/tai_dpt_zeroshot_dpt.yaml", *small], tmp_path, monkeypatch)
    reported = metrics_file(capsys)
    model = cli.model.eval()
    assert not model.has_trainable_parameters() and model.inference == "dual"
    batch = next(iter(cli.datamodule.test_dataloader()))
    with torch.no_grad():
        out = model.eval_scores(batch)
    assert torch.allclose(out["final"], 0.5 * out["global"] + 0.5 * out["local"])
    assert 0.0 < reported["test/mAP"] <= 1.0
