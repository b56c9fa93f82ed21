"""Weakly supervised phrase grounding: WWbL (NeurIPS 2022) and VPT-WSG (ICASSP 2024).

A heatmap per (image, phrase), trained from image-caption pairs only:

- :class:`WSGGrounding` stage 1 (``prompt: null``): WWbL's grounding network
  (``vpg.modules.wwbl``) trained with its four objectives (``vpg.losses.wwbl``) against a
  frozen CLIP: GAE pseudo-labels of the image-text pair, CLIP features of the image masked by
  the heatmap (foreground) and by its complement (background), and a size regulariser.
- :class:`WSGGrounding` stage 2 (``prompt: similarity | gae | gradcam | maskclip``, VPT-WSG):
  a CLIP map of the phrase (``vpg.modules.clip_maps``) is added to the network's fusion
  features and the whole network is fine-tuned briefly with the same objectives, starting
  from a stage-1 checkpoint (``init_from``).
- :class:`CLIPMapGrounding`: the CLIP-only heatmaps evaluated directly (training-free
  baselines; the "CLIP" rows of the papers).

Evaluation (``vpg.metrics.heatmaps``): pointing game and bbox accuracy at the original image
size; ground-truth boxes covering <= 5 % of the image are dropped; ``eval_unit: entity``
(Flickr30k Entities) averages the heatmaps of all mentions of an entity and unites its boxes;
per-category results on test (``phrase_type``). ``vpg predict`` writes a heatmap PNG, an
overlay PNG and a box JSON per (image, phrase).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vpg.clip import CLIP, get_tokenizer
from vpg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vpg.errors import ConfigurationError, MissingFileError
from vpg.losses.wwbl import WWbLLossWeights, wwbl_loss
from vpg.metrics import GroundingAccuracy, PointingGame
from vpg.metrics.heatmaps import (
    MIN_BOX_FRACTION,
    drop_small_boxes,
    heatmap_boxes,
    heatmap_to_original,
    peak_point,
    union_box,
)
from vpg.modules.clip_maps import MAP_KINDS, clip_map, gae_map, minmax, to_image
from vpg.modules.wwbl import GroundingNetwork

from .base import VPGModule
from .falip import PrefixTokenizer

log = logging.getLogger(__name__)

WWBL_TEXT_PREFIX = "image of "  # WWbL encodes "image of " + phrase


@dataclass
class _Unit:
    """One evaluation unit: a phrase, or an entity whose mentions' heatmaps are summed."""

    heat_sum: Tensor  # (S, S) sum of the model-input heatmaps
    count: int
    orig_size: tuple[int, int]  # (W, H)
    scale: tuple[float, float]
    offset: tuple[float, float]
    boxes: Tensor  # (K, 4) xyxy original pixels
    category: str
    keys: set = field(default_factory=set)


class _HeatmapGrounding(VPGModule):
    """Evaluation, pictures and predictions shared by every heatmap method.

    Args:
        clip: the frozen CLIP core (text embeddings; the method's maps / objectives).
        text_prefix: prepended to every phrase / caption (WWbL: "image of ").
        eval_unit: "phrase" (every (image, phrase) pair) or "entity" (Flickr30k Entities: the
            mentions of one entity id in one image, heatmaps averaged, boxes united; needs the
            rows of an image to be consecutive, as the converters write them).
        min_box_fraction: ground-truth boxes covering at most this fraction of the image are
            dropped (WWbL: 0.05); a unit without boxes left is not evaluated (counted).
        threshold, nms_iou, score_drop: the heatmap -> box protocol (``heatmap_boxes``).
        log_images: samples drawn to TensorBoard from the first batch of each split (0: none).
        prediction_dir: where ``vpg predict`` writes its files (default <log_dir>/predictions).
    """

    def __init__(self, clip: CLIP, text_prefix: str = WWBL_TEXT_PREFIX,
                 eval_unit: Literal["phrase", "entity"] = "phrase", min_box_fraction: float = MIN_BOX_FRACTION,
                 threshold: float = 0.5, nms_iou: float = 0.05, score_drop: float = 0.5, log_images: int = 8,
                 prediction_dir: str | None = None):
        super().__init__(clip)
        if eval_unit not in ("phrase", "entity"):
            raise ConfigurationError(f"eval_unit must be 'phrase' or 'entity', got {eval_unit!r}")
        self.text_prefix = text_prefix
        self.tokenizer = PrefixTokenizer(self.tokenizer, text_prefix)
        self.eval_unit, self.min_box_fraction = eval_unit, float(min_box_fraction)
        self.box_protocol = {"threshold": float(threshold), "nms_iou": float(nms_iou), "score_drop": float(score_drop)}
        self.log_images, self.prediction_dir = int(log_images), prediction_dir
        self.metrics = torch.nn.ModuleDict()
        self._metric_keys: dict[tuple[str, str], str] = {}  # (stage, log suffix) -> metrics key
        self._pending: dict[tuple, _Unit] = {}  # entity units still collecting mentions
        self._flushed: set[tuple] = set()
        self.unit_counts: dict[str, dict[str, int]] = {}  # split -> {"units", "no_boxes", "split_entities"}

    # -- what subclasses provide
    def heatmaps(self, batch: dict) -> Tensor:
        """(B, S, S) heatmaps in [0, 1] over the model input, one per (image, text) row."""
        raise NotImplementedError

    @staticmethod
    def batch_texts(batch: dict) -> list[str]:
        """The raw phrases / captions of a batch (without the prefix)."""
        for key in ("phrases", "sentences"):
            if key in batch:
                return list(batch[key])
        raise KeyError("the batch has neither 'phrases' nor 'sentences'")

    def text_features(self, tokens: Tensor) -> Tensor:
        """Normalised CLIP text embeddings (B, E) of prefixed token ids; no gradient (CLIP is frozen)."""
        with torch.no_grad():
            return F.normalize(self.clip.encode_text(tokens), dim=-1)

    # -- metrics
    def _metric_pair(self, stage: str, split: str, category: str | None = None) -> tuple[PointingGame, GroundingAccuracy]:
        """The (pointing, bbox) metrics of a stage / split / category, created on first use."""
        suffix = ("" if stage == "val" else f"/{split}") + (f"/{category}" if category is not None else "")
        key = self._metric_keys.get((stage, suffix))
        if key is None:  # ModuleDict keys cannot hold the free-form split / category names
            key = self._metric_keys[(stage, suffix)] = f"{stage}{len(self._metric_keys)}"
            self.metrics[f"{key}_pointing"] = PointingGame().to(self.device)
            self.metrics[f"{key}_bbox"] = GroundingAccuracy(0.5).to(self.device)
        return self.metrics[f"{key}_pointing"], self.metrics[f"{key}_bbox"]

    def score_unit(self, unit: _Unit, stage: str, split: str) -> dict | None:
        """Pointing and bbox hits of one unit (updates the metrics); None if it has no boxes left."""
        counts = self.unit_counts.setdefault(split, {"units": 0, "no_boxes": 0, "split_entities": 0})
        width, height = unit.orig_size
        boxes = drop_small_boxes(unit.boxes, width, height, self.min_box_fraction)  # (K', 4)
        if len(boxes) == 0:
            counts["no_boxes"] += 1
            return None
        counts["units"] += 1
        if self.eval_unit == "entity":
            boxes = union_box(boxes)[None]  # (1, 4): the entity's boxes united (WWbL)
        heat = heatmap_to_original(unit.heat_sum / unit.count, unit.orig_size, unit.scale, unit.offset)  # (H, W)
        pred = union_box(heatmap_boxes(heat, **self.box_protocol)[0])  # (4,)
        gold = union_box(boxes).to(pred)  # (4,)
        groups = [None] + ([unit.category] if stage == "test" and unit.category else [])
        for category in groups:
            pointing, bbox = self._metric_pair(stage, split, category)
            pointing.update(heat[None], [boxes.to(heat)])
            bbox.update(pred[None], gold[None])
        return {"pred": pred, "gold": gold}

    def _units_of_batch(self, batch: dict, heat: Tensor, split: str) -> list[_Unit]:
        """Phrase units of a batch, or the entity units that are complete (their image has passed)."""
        units = []
        current_images = set()
        for b in range(len(heat)):
            scale, offset = batch["scale"][b].float().cpu(), batch["offset"][b].float().cpu()
            boxes = (batch["boxes"][b].float().cpu() - offset.repeat(2)) / scale.repeat(2)  # (K, 4) original pixels
            unit = _Unit(heat_sum=heat[b].float(), count=1, orig_size=tuple(int(v) for v in batch["orig_size"][b]),
                         scale=tuple(scale.tolist()), offset=tuple(offset.tolist()), boxes=boxes,
                         category=str(batch.get("phrase_type", [""] * len(heat))[b]))
            entity = str(batch.get("entity_id", [""] * len(heat))[b])
            if self.eval_unit == "phrase" or not entity:
                units.append(unit)
                continue
            image_id = str(batch["image_id"][b])
            current_images.add(image_id)
            key = (split, image_id, entity)
            if key in self._pending:
                self._pending[key].heat_sum = self._pending[key].heat_sum + unit.heat_sum
                self._pending[key].count += 1
            else:
                if key in self._flushed:  # mentions of this entity were not consecutive
                    self.unit_counts.setdefault(split, {"units": 0, "no_boxes": 0, "split_entities": 0})[
                        "split_entities"] += 1
                self._pending[key] = unit
        # entities of images no longer in the stream are complete
        done = [k for k in self._pending if k[0] == split and k[1] not in current_images]
        for key in done:
            units.append(self._pending.pop(key))
            self._flushed.add(key)
        return units

    def _flush(self, split: str) -> list[_Unit]:
        keys = [k for k in self._pending if k[0] == split]
        self._flushed.update(keys)
        return [self._pending.pop(k) for k in keys]

    def _eval_step(self, batch: dict, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        split = self.split_name(stage, dataloader_idx)
        heat = self.heatmaps(batch)  # (B, S, S)
        for unit in self._units_of_batch(batch, heat, split):
            self.score_unit(unit, stage, split)
        if batch_idx == 0 and self.log_images:
            self._log_pictures(batch, heat, f"{stage}/{split}")

    def _log_epoch(self, stage: str) -> None:
        for split in {k[0] for k in self._pending}:
            for unit in self._flush(split):
                self.score_unit(unit, stage, split)
        for (key_stage, suffix), key in list(self._metric_keys.items()):
            if key_stage != stage:
                continue
            for metric, name in (("pointing", "pointing"), ("bbox", "bbox_acc")):
                value = self.metrics[f"{key}_{metric}"]
                self.log(f"{stage}/{name}{suffix}", value.compute(), add_dataloader_idx=False)
                value.reset()
        for split, counts in self.unit_counts.items():
            if counts["no_boxes"] or counts["split_entities"]:
                log.info("%s %s: %d units evaluated, %d without a box > %.0f%% of the image, %d entities split",
                         stage, split, counts["units"], counts["no_boxes"], 100 * self.min_box_fraction,
                         counts["split_entities"])
        self._flushed.clear()

    def on_validation_epoch_start(self) -> None:
        self.unit_counts.clear()

    def on_test_epoch_start(self) -> None:
        self.unit_counts.clear()

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(batch, batch_idx, dataloader_idx, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- pictures
    def _log_pictures(self, batch: dict, heat: Tensor, tag: str) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        from vpg.utils.visualize import (
            GOLD,
            PRED,
            caption_below,
            denormalise,
            draw_boxes,
            grid,
            to_chw_tensor,
        )

        texts = self.batch_texts(batch)
        tiles = []
        for b in range(min(self.log_images, len(heat))):  # a few pictures for a human
            image = heat_overlay(denormalise(batch["image"][b], self.clip.image_mean, self.clip.image_std), heat[b])
            pred = union_box(heatmap_boxes(heat[b].float().cpu(), **self.box_protocol)[0]).tolist()
            gold = batch["boxes"][b].tolist() if "boxes" in batch else []
            factor = 192 / image.width
            image = image.resize((192, round(image.height * factor)))
            boxes = [[v * factor for v in box] for box in [*gold, pred]]
            tiles.append(caption_below(draw_boxes(image, boxes, [GOLD] * len(gold) + [PRED]), texts[b]))
        experiment.add_image(tag, to_chw_tensor(grid(tiles, columns=4)), self.global_step)

    # -- vpg predict
    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        heat = self.heatmaps(batch)  # (B, S, S)
        target = self.prediction_path()
        return write_heatmap_predictions(batch, heat, target, self.batch_texts(batch), self.box_protocol,
                                         mean=self.clip.image_mean, std=self.clip.image_std,
                                         first_index=batch_idx * len(heat))


# ---------------------------------------------------------------------------------------------- CLIP only


class CLIPMapGrounding(_HeatmapGrounding):
    """CLIP-only heatmaps evaluated directly (training-free): ``map`` = similarity | gae | gradcam | maskclip.

    The raw map on the patch grid is resized to the model input (bilinear) and min-max
    normalised. Args: see :class:`_HeatmapGrounding`.
    """

    def __init__(self, clip: CLIP, map_kind: str = "gae", text_prefix: str = WWBL_TEXT_PREFIX,
                 eval_unit: Literal["phrase", "entity"] = "phrase", min_box_fraction: float = MIN_BOX_FRACTION,
                 threshold: float = 0.5, nms_iou: float = 0.05, score_drop: float = 0.5, log_images: int = 8,
                 prediction_dir: str | None = None):
        super().__init__(clip, text_prefix, eval_unit, min_box_fraction, threshold, nms_iou, score_drop, log_images,
                         prediction_dir)
        if map_kind not in MAP_KINDS:
            raise ConfigurationError(f"map_kind must be one of {MAP_KINDS}, got {map_kind!r}")
        self.save_hyperparameters(ignore=["clip"])
        self.map_kind = map_kind

    def heatmaps(self, batch: dict) -> Tensor:
        images = batch["image"]
        raw = clip_map(self.map_kind, self.clip, images, self.text_features(batch["text"]))  # (B, h, w)
        return to_image(raw, images.shape[-2:])  # (B, S, S)


# ---------------------------------------------------------------------------------------------- WWbL / VPT-WSG


class WSGGrounding(_HeatmapGrounding):
    """WWbL's grounding network (stage 1) and VPT-WSG's prompt-tuned version (stage 2).

    Batch (``PhraseDataModule``): training image (B,3,S,S), text (B,ctx) of "image of " +
    caption (word-dropped) or region phrase, sentences; evaluation as in :class:`_HeatmapGrounding`.

    Args (besides :class:`_HeatmapGrounding`'s):
        clip: frozen CLIP (WWbL: ViT-B/32): text embedding, GAE pseudo-labels, fore/back features.
        network: the grounding network; None builds ``GroundingNetwork(text_dim=clip.embed_dim)``
            (random VGG16; give ``encoder_weights`` for ImageNet weights).
        prompt: None / "none" = stage 1; "similarity" (VPT-WSG's default), "gae", "gradcam" or
            "maskclip" = stage 2: that CLIP map of the phrase is added to the fusion features.
        prompt_clip: the CLIP computing the prompt map (VPT-WSG: ViT-L/14); None = ``clip``.
        prompt_norm: "minmax" (default; puts every prompt kind on [0, 1]) or "none" (raw cosine).
        init_from: a checkpoint (Lightning ``.ckpt`` of this class, or a ``GroundingNetwork`` state
            dict) whose network weights are loaded in ``setup`` (stage 2 starts from stage 1); a
            ``--ckpt_path`` resume/test still overrides them.
        loss weights: WWbL's rmap 16, fore 0.25, back 0.5, reg 0.25.
        optimizer, lr, momentum, weight_decay: WWbL/VPT-WSG: SGD, 3e-4, 0.9, 1e-4 ("adamw" too).
    """

    def __init__(self, clip: CLIP, network: GroundingNetwork | None = None, prompt: str | None = None,
                 prompt_clip: CLIP | None = None, prompt_norm: Literal["minmax", "none"] = "minmax",
                 init_from: str | None = None, rmap_weight: float = 16.0, fore_weight: float = 0.25,
                 back_weight: float = 0.5, reg_weight: float = 0.25, optimizer: Literal["sgd", "adamw"] = "sgd",
                 lr: float = 3e-4, momentum: float = 0.9, weight_decay: float = 1e-4,
                 text_prefix: str = WWBL_TEXT_PREFIX, eval_unit: Literal["phrase", "entity"] = "phrase",
                 min_box_fraction: float = MIN_BOX_FRACTION, threshold: float = 0.5, nms_iou: float = 0.05,
                 score_drop: float = 0.5, log_images: int = 8, prediction_dir: str | None = None):
        super().__init__(clip, text_prefix, eval_unit, min_box_fraction, threshold, nms_iou, score_drop, log_images,
                         prediction_dir)
        self.save_hyperparameters(ignore=["clip", "network", "prompt_clip"])
        prompt = None if prompt in (None, "none", "") else prompt
        if prompt is not None and prompt not in MAP_KINDS:
            raise ConfigurationError(f"prompt must be null/none or one of {MAP_KINDS}, got {prompt!r}")
        if prompt_norm not in ("minmax", "none"):
            raise ConfigurationError(f"prompt_norm must be 'minmax' or 'none', got {prompt_norm!r}")
        if optimizer not in ("sgd", "adamw"):
            raise ConfigurationError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        self.network = network if network is not None else GroundingNetwork(text_dim=clip.embed_dim)
        if self.network.text_dim != clip.embed_dim:
            raise ConfigurationError(f"network.text_dim is {self.network.text_dim} but {clip.name}'s text embedding "
                                     f"has {clip.embed_dim} dimensions")
        self.prompt, self.prompt_norm = prompt, prompt_norm
        self.prompt_clip = prompt_clip  # None: the prompt map comes from `clip`
        self._prompt_tokenizer = None
        if prompt_clip is not None:
            if any(p.requires_grad for p in prompt_clip.parameters()):
                raise ConfigurationError("prompt_clip must be frozen (frozen: true)")
            self._prompt_tokenizer = PrefixTokenizer(get_tokenizer(prompt_clip.name), text_prefix)
        self.init_from = init_from
        self._initialised_from: str | None = None
        self.loss_weights = WWbLLossWeights(rmap_weight, fore_weight, back_weight, reg_weight)
        self.optimizer_name, self.lr, self.momentum, self.weight_decay = optimizer, lr, momentum, weight_decay
        mean = torch.tensor(clip.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(clip.image_std).view(1, 3, 1, 1)
        # CLIP-normalised input -> ImageNet-normalised input for VGG16: x' = (x std + mean - m) / s
        self.register_buffer("_vgg_scale", std / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_vgg_shift", (mean - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                             / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # -- pieces
    def vgg_input(self, images: Tensor) -> Tensor:
        return images * self._vgg_scale + self._vgg_shift  # (B, 3, S, S) ImageNet-normalised

    def pseudo_labels(self, images: Tensor, text: Tensor) -> Tensor:
        """GAE of the frozen CLIP (WWbL's rmap target): (B, S, S) in [0, 1], no gradient."""
        return to_image(gae_map(self.clip, images, text), images.shape[-2:]).detach()

    @torch.no_grad()
    def prompt_maps(self, images: Tensor, texts: Sequence[str], text: Tensor) -> Tensor | None:
        """VPT-WSG's prompt (B, h, w) on the prompt CLIP's patch grid, or None in stage 1."""
        if self.prompt is None:
            return None
        clip = self.prompt_clip or self.clip
        if self.prompt_clip is not None:
            tokens = self._prompt_tokenizer(list(texts)).to(images.device)
            text = F.normalize(clip.encode_text(tokens), dim=-1)  # (B, E')
            images = _renormalise(images, self.clip, clip)
        raw = clip_map(self.prompt, clip, images, text)  # (B, h, w)
        return minmax(raw) if self.prompt_norm == "minmax" else raw

    def forward(self, images: Tensor, tokens: Tensor, texts: Sequence[str]) -> Tensor:
        """Heatmaps (B, S, S) in [0, 1] for CLIP-normalised images and prefixed token ids."""
        text = self.text_features(tokens)  # (B, E)
        return self.network(self.vgg_input(images), text, self.prompt_maps(images, texts, text))

    def heatmaps(self, batch: dict) -> Tensor:
        return self(batch["image"], batch["text"], self.batch_texts(batch))

    # -- training
    def training_step(self, batch, batch_idx):
        images = batch["image"]  # (B, 3, S, S) CLIP-normalised
        text = self.text_features(batch["text"])  # (B, E)
        pseudo = self.pseudo_labels(images, text)  # (B, S, S)
        prompt = self.prompt_maps(images, self.batch_texts(batch), text)
        heat = self.network(self.vgg_input(images), text, prompt)  # (B, S, S)
        mask = heat[:, None]  # (B, 1, S, S)
        # Masking a CLIP-normalised image with 0 shows the dataset-mean colour there, as in WWbL.
        fore = self.clip.encode_image(images * mask)  # (B, E), gradients flow to the heatmap only
        back = self.clip.encode_image(images * (1 - mask))
        terms = wwbl_loss(heat, pseudo, fore, back, text, self.loss_weights)
        size = len(images)
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=size)
        return terms["loss"]

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    # -- stage 2 starts from stage 1
    def setup(self, stage: str) -> None:
        if self.init_from and self._initialised_from != self.init_from:
            self.load_network(self.init_from)
            self._initialised_from = self.init_from

    def load_network(self, path: str) -> None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise MissingFileError(f"init_from: checkpoint not found: {path!r}")
        # A Lightning checkpoint also holds hyper-parameters (plain Python objects), hence weights_only=False.
        state = torch.load(file, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        if any(k.startswith("network.") for k in state):
            state = {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}
        missing, unexpected = self.network.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigurationError(f"init_from {path!r}: not a grounding-network checkpoint of this shape "
                                     f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        log.info("WSG: grounding network initialised from %s", path)

    # -- checkpoints hold the trained network, not the frozen CLIP weights (they come from the config)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(("clip.", "prompt_clip."))}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith(("clip.", "prompt_clip.")):
                state.setdefault(key, value)


def _renormalise(images: Tensor, source: CLIP, target: CLIP) -> Tensor:
    """Images normalised for ``source`` -> normalised for ``target`` at its input size."""
    if source.image_mean != target.image_mean or source.image_std != target.image_std:
        s_mean = images.new_tensor(source.image_mean).view(1, 3, 1, 1)
        s_std = images.new_tensor(source.image_std).view(1, 3, 1, 1)
        t_mean = images.new_tensor(target.image_mean).view(1, 3, 1, 1)
        t_std = images.new_tensor(target.image_std).view(1, 3, 1, 1)
        images = ((images * s_std + s_mean) - t_mean) / t_std
    if tuple(images.shape[-2:]) != tuple(target.image_size):
        images = F.interpolate(images, size=target.image_size, mode="bicubic", align_corners=False)
    return images


# ---------------------------------------------------------------------------------------------- pictures, files


def heat_colours(heat: Tensor) -> Tensor:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, a blue-green-yellow-red ramp (no matplotlib needed)."""
    h = heat.float().clamp(0, 1)
    red = (1.5 - (4 * h - 3).abs()).clamp(0, 1)
    green = (1.5 - (4 * h - 2).abs()).clamp(0, 1)
    blue = (1.5 - (4 * h - 1).abs()).clamp(0, 1)
    return (torch.stack([red, green, blue], dim=-1) * 255).round().byte()


def heat_overlay(image, heat: Tensor, alpha: float = 0.5):
    """PIL image blended with the colour ramp of a heatmap resized (bilinear) to the image."""
    from PIL import Image

    resized = F.interpolate(heat.detach().float().cpu()[None, None], size=(image.height, image.width),
                            mode="bilinear", align_corners=False)[0, 0]
    colours = Image.fromarray(heat_colours(resized).numpy(), "RGB")
    return Image.blend(image.convert("RGB"), colours, alpha)


def write_heatmap_predictions(batch: dict, heat: Tensor, directory: Path, texts: Sequence[str],
                              box_protocol: dict, mean: Sequence[float] = (0.0, 0.0, 0.0),
                              std: Sequence[float] = (1.0, 1.0, 1.0), first_index: int = 0) -> list[dict]:
    """Per sample: ``<n>.json`` (box, kept boxes, peak point; original pixels), ``<n>_heatmap.png``
    (grayscale heatmap at the original size) and ``<n>.png`` (overlay, predicted box, phrase)."""
    from PIL import Image

    from vpg.utils.visualize import PRED, caption_below, denormalise, draw_boxes

    directory.mkdir(parents=True, exist_ok=True)
    paths = batch.get("image_path")
    records = []
    for b in range(len(heat)):  # one file set per sample
        stem = directory / f"{first_index + b:05d}"
        orig = heatmap_to_original(heat[b].float().cpu(), batch["orig_size"][b].tolist(),
                                   batch["scale"][b].tolist(), batch["offset"][b].tolist())  # (H, W)
        boxes, scores = heatmap_boxes(orig, **box_protocol)
        box = union_box(boxes)
        x, y = peak_point(orig)
        record = {
            "image_id": str(batch["image_id"][b]) if "image_id" in batch else str(first_index + b),
            "phrase": texts[b],
            "box_xyxy": [round(float(v), 2) for v in box],
            "boxes_xyxy": [[round(float(v), 2) for v in bx] for bx in boxes],
            "box_scores": [round(float(s), 4) for s in scores],
            "point_xy": [x, y],
            "heatmap_png": stem.name + "_heatmap.png",
            "image_size": [orig.shape[1], orig.shape[0]],
        }
        gray = (orig.clamp(0, 1) * 255).round().byte().numpy()  # (H, W)
        Image.fromarray(gray, "L").save(stem.parent / record["heatmap_png"])
        if paths is not None and paths[b]:
            image = Image.open(paths[b]).convert("RGB")
        else:  # no original file: the model input, resized to the original size
            image = denormalise(batch["image"][b], mean, std).resize((orig.shape[1], orig.shape[0]))
        width = max(2, round(max(image.size) / 200))
        overlay = draw_boxes(heat_overlay(image, orig), [record["box_xyxy"]], [PRED], width=width)
        caption_below(overlay, texts[b], width_chars=60).save(stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        records.append(record)
    return records


__all__ = ["CLIPMapGrounding", "WSGGrounding", "heat_colours", "heat_overlay", "write_heatmap_predictions"]
