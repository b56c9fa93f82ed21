"""HiVG (Xiao et al., ACM MM 2024): hierarchical multimodal fine-grained modulation for visual grounding.

Supervised referring expression comprehension / phrase grounding on a frozen CLIP:

    text tower (hidden states of ``text_layers``) ──► MACB bridges inside vision blocks ``bridge_layers``
    image tower (bridged) ──► hidden states of ``perceiver_layers`` ──► perceiver ──┐
    text tower last layer ──► linear ───────────────────────────────────────────────┤
                         grounding encoder over [REG] + visual + text ──► box MLP on [REG]

Losses: L1 (or smooth-L1) + GIoU on the box; image-text contrastive (CLIP InfoNCE between the
bridged image embedding and the text EOT feature); region-text focal + dice between the token
grid and the referred box. HiLoRA (LoRA on CLIP, stage by stage from shallow to deep) is the
callback :class:`vpg.callbacks.hilora.HiLoRAScheduler`; this module mixes in the adapter
bookkeeping (:class:`~vpg.callbacks.hilora.StagedLoRA`).

Block indices are 0-based (the paper's bridge layers 4, 8, 12 of ViT-B/16 are 3, 7, 11 here).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from vpg.callbacks.hilora import StagedLoRA
from vpg.clip import CLIP
from vpg.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    HiVGTrainTransform,
    Letterbox,
)
from vpg.losses import clip_contrastive_loss
from vpg.losses.grounding import box_losses, region_text_losses, token_box_targets
from vpg.modules.bridge import CrossModalBridge
from vpg.modules.grounding import BoxHead, GroundingEncoder, MultiLevelPerceiver, padding_token_mask

from .base import GroundingEval, VPGModule
from .optim import decay_groups, warmup_cosine

log = logging.getLogger(__name__)


def default_bridge_layers(num_layers: int) -> list[int]:
    """The last block of each third of the tower: ViT-B/16 (12) -> [3, 7, 11]; 6 blocks -> [1, 3, 5]."""
    return sorted({max(0, round(num_layers * k / 3) - 1) for k in (1, 2, 3)})


def default_perceiver_layers(num_layers: int) -> list[int]:
    """Block 0 plus the bridge blocks: ViT-B/16 -> [0, 3, 7, 11] (the paper's layers 1, 4, 8, 12)."""
    return sorted({0, *default_bridge_layers(num_layers)})


class HiVG(GroundingEval, StagedLoRA, VPGModule):
    """HiVG for REC on RefDataModule batches (image, text, gold box).

    Args:
        clip: the frozen CLIP core (ViT).
        use_bridge: insert MACB bridges (off: the "warm-up only" / no-bridge ablations).
        bridge_layers: vision blocks that get a bridge; default the last block of each third.
        text_layers: text blocks whose hidden states feed the bridges; default all.
        bridge_heads, bridge_ffn_ratio: cross-attention heads and FFN width ratio of a bridge.
        perceiver_layers: vision blocks whose patch tokens the perceiver reads; default block 0 + bridges.
        width, encoder_layers, encoder_heads, encoder_ffn, dropout: the grounding encoder (HiVG: 512, 6, 8, 2048, 0.1).
        box_loss: "l1" or "smooth_l1".
        box_weight, giou_weight, contrastive_weight, focal_weight, dice_weight: loss weights
            (defaults from the authors: 1, 1, 1, 20, 2); a zero weight skips the term.
        lr, weight_decay: AdamW; ``lr`` is used without a HiLoRA schedule (which sets it per stage).
        normalize: input mean/std, "imagenet" (the authors) or "clip".
        jitter, crop_prob: training augmentation (``HiVGTrainTransform``).
        faithful_batch_mixing: reproduce the authors' cross-sample text mixing in the bridge.
        iou_threshold: Acc@t; log_images: pictures per logged batch (0 = none);
        prediction_dir: where ``vpg predict`` writes JSON + PNG (default <log_dir>/predictions).
    """

    def __init__(self, clip: CLIP, use_bridge: bool = True, bridge_layers: list[int] | None = None,
                 text_layers: list[int] | None = None, bridge_heads: int = 8, bridge_ffn_ratio: float = 4.0,
                 perceiver_layers: list[int] | None = None, width: int = 512, encoder_layers: int = 6,
                 encoder_heads: int = 8, encoder_ffn: int = 2048, dropout: float = 0.1,
                 box_loss: Literal["l1", "smooth_l1"] = "l1", box_weight: float = 1.0, giou_weight: float = 1.0,
                 contrastive_weight: float = 1.0, focal_weight: float = 20.0, dice_weight: float = 2.0,
                 lr: float = 2.5e-4, weight_decay: float = 1e-4, normalize: Literal["imagenet", "clip"] = "imagenet",
                 jitter: float = 0.4, crop_prob: float = 0.5, faithful_batch_mixing: bool = False,
                 iou_threshold: float = 0.5, log_images: int = 8, prediction_dir: str | None = None):
        super().__init__(clip)
        self.save_hyperparameters(ignore=["clip"])
        self.init_staged_lora(lr)
        n_vision, n_text = clip.num_vision_layers, clip.num_text_layers
        self.bridge_layers = [self._block(i, n_vision, "bridge_layers")
                              for i in (bridge_layers if bridge_layers is not None else default_bridge_layers(n_vision))]
        self.text_layers = [self._block(i, n_text, "text_layers")
                            for i in (text_layers if text_layers is not None else range(n_text))]
        self.perceiver_layers = [self._block(i, n_vision, "perceiver_layers") for i in
                                 (perceiver_layers if perceiver_layers is not None else default_perceiver_layers(n_vision))]
        self.use_bridge = use_bridge
        self.bridges = nn.ModuleDict()
        if use_bridge:
            for i in self.bridge_layers:
                self.bridges[str(i)] = CrossModalBridge(clip.vision_width, clip.text_width, len(self.text_layers),
                                                        clip.context_length, bridge_heads, bridge_ffn_ratio, dropout,
                                                        faithful_batch_mixing)
        self.image_size = clip.image_size[0]
        self.grid = clip.grid_size()
        self.perceiver = MultiLevelPerceiver(clip.vision_width, len(self.perceiver_layers), width, dropout)
        self.text_proj = nn.Linear(clip.embed_dim, width)
        self.encoder = GroundingEncoder(width, encoder_layers, encoder_heads, encoder_ffn, dropout,
                                        num_visual=self.grid[0] * self.grid[1], num_text=clip.context_length)
        self.box_head = BoxHead(width)
        # region-text logits = scale * cos(token, text) + shift (learned; the scale starts where a
        # cosine of 1 vs 0 separates well under a sigmoid)
        self.region_scale = nn.Parameter(torch.tensor(10.0))
        self.region_shift = nn.Parameter(torch.tensor(-5.0))
        self.box_loss = box_loss
        self.weights = {"box": box_weight, "giou": giou_weight, "contrastive": contrastive_weight,
                        "focal": focal_weight, "dice": dice_weight}
        self.lr, self.weight_decay = lr, weight_decay
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if normalize == "imagenet" else (CLIP_MEAN, CLIP_STD)
        self.jitter, self.crop_prob = jitter, crop_prob
        self.iou_threshold, self.log_images, self.prediction_dir = iou_threshold, log_images, prediction_dir
        self.metrics = nn.ModuleDict()

    @staticmethod
    def _block(i: int, n: int, what: str) -> int:
        if not -n <= int(i) < n:
            raise ValueError(f"{what}: block {i} out of range for a {n}-block tower (0-based)")
        return int(i) % n

    # -- preprocessing
    def image_transform(self, train: bool):
        if train:
            return HiVGTrainTransform(self.image_size, self.mean, self.std, jitter=self.jitter,
                                      crop_prob=self.crop_prob)
        return Letterbox(self.image_size, self.mean, self.std)

    # -- model
    def forward(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        """images (B, 3, S, S), tokens (B, Lt) -> box (B, 4) xyxy input pixels, box_cxcywh (B, 4)
        normalised, token_logits (B, h*w), visual_padding (B, h*w), image_feature / text_feature (B, E)."""
        text = self.clip.forward_text(tokens, hidden_layers=self.text_layers if self.use_bridge else ())
        inserts = {}
        if self.use_bridge:
            states = torch.stack([text.hidden[i] for i in self.text_layers], dim=1)  # (B, levels, Lt, W)
            inserts = {i: self.bridges[str(i)].bind(states, text.padding_mask) for i in self.bridge_layers}
        vision = self.clip.forward_image(images, inserts=inserts, hidden_layers=self.perceiver_layers)
        n_patches = self.grid[0] * self.grid[1]
        levels = torch.stack([vision.hidden[i][:, 1 : 1 + n_patches] for i in self.perceiver_layers], dim=1)  # (B, levels, hw, D)
        visual = self.perceiver(levels)  # (B, hw, G)
        visual_padding = padding_token_mask(images, self.clip.patch_size)  # (B, hw)
        words = self.text_proj(text.tokens)  # (B, Lt, G)
        reg, visual_out, text_out = self.encoder(visual, words, visual_padding, text.padding_mask)
        box_cxcywh = self.box_head(reg)  # (B, 4) in [0, 1]
        # fused text feature: mean of the encoder's text outputs over real tokens
        keep = (~text.padding_mask).unsqueeze(-1).to(text_out.dtype)  # (B, Lt, 1)
        fused = (text_out * keep).sum(1) / keep.sum(1).clamp(min=1)  # (B, G)
        cosine = F.normalize(visual_out, dim=-1) @ F.normalize(fused, dim=-1).unsqueeze(-1)  # (B, hw, 1)
        token_logits = self.region_scale * cosine.squeeze(-1) + self.region_shift  # (B, hw)
        box = box_convert(box_cxcywh, "cxcywh", "xyxy") * self.image_size  # (B, 4) input pixels
        return {"box": box, "box_cxcywh": box_cxcywh, "token_logits": token_logits, "visual_padding": visual_padding,
                "image_feature": vision.pooled, "text_feature": text.pooled}

    def losses(self, out: dict[str, Tensor], gold: Tensor) -> dict[str, Tensor]:
        """Weighted loss terms and their sum (``loss``); gold (B, 4) xyxy input pixels."""
        gold_cxcywh = box_convert(gold / self.image_size, "xyxy", "cxcywh")  # (B, 4)
        terms: dict[str, Tensor] = {}
        terms["box"], terms["giou"] = box_losses(out["box_cxcywh"], gold_cxcywh, self.box_loss)
        if self.weights["contrastive"]:
            terms["contrastive"] = clip_contrastive_loss(F.normalize(out["image_feature"], dim=-1),
                                                         F.normalize(out["text_feature"], dim=-1),
                                                         self.clip.logit_scale.exp())
        if self.weights["focal"] or self.weights["dice"]:
            targets = token_box_targets(gold, self.grid, (self.image_size, self.image_size))  # (B, hw)
            terms["focal"], terms["dice"] = region_text_losses(out["token_logits"], targets, ~out["visual_padding"])
        terms["loss"] = sum(self.weights[k] * v for k, v in terms.items())
        return terms

    # -- Lightning
    def setup(self, stage: str) -> None:
        self.setup_grounding()

    def training_step(self, batch, batch_idx):
        terms = self.losses(self(batch["image"], batch["text"]), batch["gold"])
        size = len(batch["gold"])
        for k, v in terms.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        self.log("train/hilora_stage", float(self.hilora_stage), batch_size=size)
        return terms["loss"]

    def _eval_step(self, batch: dict, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        out = self(batch["image"], batch["text"])
        split = self.split_name(stage, dataloader_idx)
        self.log_grounding(out["box"], batch["gold"], stage, split)
        if stage == "val":
            self.log("val/loss", self.losses(out, batch["gold"])["loss"], batch_size=len(batch["gold"]),
                     add_dataloader_idx=False, sync_dist=True)
        if batch_idx == 0 and self.log_images:
            self._log_pictures(batch, out, f"{stage}/{split}")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        out = self(batch["image"], batch["text"])
        records = prediction_records(batch, out)
        target = self.prediction_path()
        write_predictions(records, batch, out, target, self.mean, self.std, first_index=batch_idx * len(records))
        return records

    def configure_optimizers(self):
        params = decay_groups(self, self.weight_decay)
        optimizer = torch.optim.AdamW(params, lr=self.hilora_lr)
        epochs = self.hilora_epochs or self.trainer.max_epochs
        total = self.trainer.estimated_stepping_batches  # also sets num_training_batches
        per_epoch = self.trainer.num_training_batches
        if per_epoch == float("inf") or epochs is None or epochs < 0:
            steps = int(total)
        else:
            steps = max(1, -(-int(per_epoch) // self.trainer.accumulate_grad_batches)) * int(epochs)
        # cosine over this stage (HiLoRA rebuilds optimiser and schedule at each stage)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": warmup_cosine(optimizer, 0, steps), "interval": "step"}}

    def _log_pictures(self, batch: dict, out: dict, tag: str) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        from vpg.utils.visualize import to_chw_tensor

        picture = prediction_picture(batch, out, self.mean, self.std, self.log_images)
        experiment.add_image(tag, to_chw_tensor(picture), self.global_step)


# -- pictures and prediction files




def prediction_picture(batch: dict, out: dict, mean, std, count: int = 8, size: int = 192):
    """Grid of model inputs: gold box (green), prediction (red), expression below."""
    from vpg.utils.visualize import GOLD, PRED, caption_below, denormalise, draw_boxes, grid

    tiles = []
    for b in range(min(count, len(batch["image"]))):  # a few pictures for a human, not compute
        image = denormalise(batch["image"][b], mean, std)
        factor = size / image.width
        image = image.resize((size, round(image.height * factor)))
        boxes = [(batch["gold"][b] * factor).tolist(), (out["box"][b] * factor).tolist()]
        tiles.append(caption_below(draw_boxes(image, boxes, [GOLD, PRED]), batch["sentences"][b]))
    return grid(tiles, columns=4)


def prediction_records(batch: dict, out: dict) -> list[dict]:
    """Predicted box per sample in original-image pixels (xyxy): ``input = original * scale + offset``."""
    size = len(batch["sentences"])
    scale = batch["scale"].float().cpu().repeat(1, 2) if "scale" in batch else torch.ones(size, 4)  # (B, 4)
    offset = batch["offset"].float().cpu().repeat(1, 2) if "offset" in batch else torch.zeros(size, 4)  # (B, 4)
    boxes = ((out["box"].detach().float().cpu() - offset) / scale)  # (B, 4)
    if "orig_size" in batch:  # the padded square extends past the photo: clip to it
        wh = batch["orig_size"].float().cpu().repeat(1, 2)  # (B, 4)
        boxes = torch.minimum(boxes.clamp(min=0), wh)
    return [{"image_id": str(batch["image_id"][b]), "expression": sentence,
             "box_xyxy": [round(v, 2) for v in boxes[b].tolist()]}
            for b, sentence in enumerate(batch["sentences"])]


def write_predictions(records: list[dict], batch: dict, out: dict, directory: Path, mean, std,
                      first_index: int = 0) -> None:
    """One ``<n>.json`` + ``<n>.png`` per sample (predicted box red, expression below)."""
    from PIL import Image

    from vpg.utils.visualize import PRED, caption_below, denormalise, draw_boxes

    directory.mkdir(parents=True, exist_ok=True)
    paths = batch.get("image_path")
    for b, record in enumerate(records):
        stem = directory / f"{first_index + b:05d}"
        if paths is not None and paths[b]:
            image, box = Image.open(paths[b]).convert("RGB"), record["box_xyxy"]
        else:  # no original file: draw on the model input
            image, box = denormalise(batch["image"][b], mean, std), out["box"][b].tolist()
        width = max(2, round(max(image.size) / 200))
        caption_below(draw_boxes(image, [box], [PRED], width=width), record["expression"], width_chars=60).save(
            stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


__all__ = ["HiVG", "default_bridge_layers", "default_perceiver_layers", "prediction_records", "write_predictions"]
