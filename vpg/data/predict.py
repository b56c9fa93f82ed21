"""Ad-hoc inputs for ``vpg predict``: image files + referring expressions + candidate boxes.

    vpg predict --config experiments/falip_predict.yaml \\
        --data.init_args.images '[photo.jpg]' \\
        --data.init_args.expressions '[[the dog on the left, the red car]]' \\
        --data.init_args.boxes '[[[10, 20, 200, 300], [250, 40, 600, 420]]]'

``images[i]`` goes with ``expressions[i]`` (one string or a list) and ``boxes[i]`` (pixels of the
original image in ``box_format``; none = the whole image, as ReCLIP does for an image without
detections). Every (image, expression) pair is one sample of :class:`RefDataModule`'s batch
contract, built by RefDataModule itself, so any REC method predicts on it unchanged; the gold box
is unknown (``gold`` zeros, ``gold_index`` -1) and ``image_path`` is added for drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from datasets import Dataset
from PIL import Image

from vpg.errors import ConfigurationError, MissingFileError

from .datamodules import RefDataModule

PREDICT_SPLIT = "predict"


class PredictDataModule(RefDataModule):
    """REF batches from files named in the config or on the command line (``vpg predict``).

    Args:
        images: image files (relative paths are resolved against ``image_root`` when given).
        expressions: per image, one expression or a list of them.
        boxes: per image, candidate boxes in ``box_format`` pixels of the original image; None or
            an empty list = the whole image.
        box_format: "xyxy" (default) or "xywh" (COCO / ReCLIP detections).
    """

    def __init__(self, images: list[str], expressions: list[str | list[str]],
                 boxes: list[list[list[float]] | None] | None = None,
                 box_format: Literal["xyxy", "xywh"] = "xyxy", image_root: str | None = None,
                 batch_size: int = 8, num_workers: int = 0):
        super().__init__(dataset=PREDICT_SPLIT, train_split=None, val_split=None, test_splits=[PREDICT_SPLIT],
                         image_root=image_root, batch_size=batch_size, num_workers=num_workers,
                         box_format=box_format)
        if len(expressions) != len(images):
            raise ConfigurationError(f"predict: {len(images)} images but {len(expressions)} expression entries")
        if boxes is not None and len(boxes) != len(images):
            raise ConfigurationError(f"predict: {len(images)} images but {len(boxes)} box lists")
        self.image_files = [str(p) for p in images]
        self.expressions = [[e] if isinstance(e, str) else list(e) for e in expressions]
        if not all(self.expressions):
            raise ConfigurationError("predict: every image needs at least one expression")
        self.boxes = list(boxes) if boxes is not None else [None] * len(images)

    def _path(self, name: str) -> Path:
        path = Path(name).expanduser()
        if not path.is_absolute() and self.image_root is not None:
            path = self.image_root / path
        if not path.is_file():
            raise MissingFileError(f"predict: image file not found: {path}")
        return path.resolve()

    def load(self, split: str):
        """One row per image in the REF columns; its expressions are its samples."""
        if split != PREDICT_SPLIT:
            raise KeyError(f"PredictDataModule has only the {PREDICT_SPLIT!r} split, not {split!r}")
        if split not in self.splits:
            rows = {"image_path": [], "image_id": [], "bbox": [], "sentences": [], "candidates": []}
            for name, sentences, boxes in zip(self.image_files, self.expressions, self.boxes):
                path = self._path(name)
                with Image.open(path) as image:
                    width, height = image.size
                whole = [0.0, 0.0, float(width), float(height)]  # the same in xyxy and xywh
                rows["image_path"].append(str(path))
                rows["image_id"].append(name)
                rows["bbox"].append(whole)  # placeholder: the gold box is unknown (reset per sample)
                rows["sentences"].append(sentences)
                rows["candidates"].append([[float(v) for v in b] for b in boxes] if boxes else [whole])
            self.splits[split] = Dataset.from_dict(rows)
        return self.splits[split]

    def make_sample(self, row: dict, index: int, train: bool, epoch: int = 0, item: int | None = None) -> dict:
        sample = super().make_sample(row, index, train, epoch, item=item)
        sample["gold"], sample["gold_index"] = torch.zeros(4), -1  # unknown
        sample["image_path"] = row["image_path"]
        return sample

    def collate(self, samples: list[dict]) -> dict:
        batch = super().collate(samples)
        batch["image_path"] = [s["image_path"] for s in samples]
        return batch
