"""ZeroShotMonitor: the zero-shot top-1 it logs during pretraining is the classifier's top-1."""

from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vpg.callbacks import ZeroShotMonitor
from vpg.clip import create_model, get_tokenizer
from vpg.data.transforms import clip_transform

NAMES = ["red circle", "blue square", "green star"]


def _dataset(tmp_path, with_label=True):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(7)]
    columns = {"image": images, "label": [i % 3 for i in range(7)]}
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=NAMES) if with_label else datasets.Value("int64")})
    datasets.DatasetDict({"val": datasets.Dataset.from_dict(columns, features=features)}).save_to_disk(tmp_path / "d")
    return str(tmp_path / "d"), images, columns["label"]


def test_evaluate_equals_a_direct_zero_shot_classifier(tmp_path):
    path, images, labels = _dataset(tmp_path)
    torch.manual_seed(0)
    clip = create_model("vpg-tiny").eval()
    monitor = ZeroShotMonitor(dataset=path, split="val", template="a photo of a {}.")
    with torch.no_grad():
        classes = F.normalize(clip.encode_text(get_tokenizer("vpg-tiny")([f"a photo of a {n}." for n in NAMES])), dim=-1)
        x = torch.stack([clip_transform(clip)(im)[0] for im in images])
        pred = (F.normalize(clip.encode_image(x), dim=-1) @ classes.t()).argmax(-1)
    expected = (pred == torch.tensor(labels)).float().mean().item()
    assert monitor.evaluate(clip) == pytest.approx(expected)


def test_records_at_its_period_and_keeps_history_in_state_dict(tmp_path):
    path, _, _ = _dataset(tmp_path)
    clip = create_model("vpg-tiny", frozen=False)
    monitor = ZeroShotMonitor(dataset=path, split="val", every_n_train_steps=2)
    module = SimpleNamespace(clip=clip)
    for step in range(1, 6):
        trainer = SimpleNamespace(global_step=step, is_global_zero=True, logger=None)
        monitor.on_train_batch_end(trainer, module, None, None, step)
    assert [s for s, _ in monitor.history] == [2, 4]
    monitor.on_fit_end(SimpleNamespace(global_step=5, is_global_zero=True, logger=None), module)
    assert [s for s, _ in monitor.history] == [2, 4, 5]
    assert clip.training  # evaluation restores train mode
    restored = ZeroShotMonitor(dataset=path, split="val")
    restored.load_state_dict(monitor.state_dict())
    assert restored.history == monitor.history


def test_needs_a_class_label_column(tmp_path):
    path, _, _ = _dataset(tmp_path, with_label=False)
    with pytest.raises(ValueError, match="ClassLabel column 'label'"):
        ZeroShotMonitor(dataset=path, split="val").evaluate(create_model("vpg-tiny"))
