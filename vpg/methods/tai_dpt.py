"""TaI-DPT (Guo et al., CVPR 2023): prompts learned from captions only, tested on images.

"Texts as Images": CLIP puts captions and images in one space, so prompts for multi-label
recognition are tuned on captions labelled by a synonym dictionary
(:class:`vpg.data.text.CaptionTextDataModule`) and then applied to images.

- Dual-grained prompts (:class:`vpg.modules.dpt.DualPromptLearner`): a global and a local
  context of M = 16 vectors before every class name give class features G_i and L_i.
- Training (captions): global feature u = the caption's EOT feature, local features U_j =
  every token's projected feature (padding masked out). Logits p_i = 4·cos(u, G_i) and
  p'_i = 4·Σ_j softmax_j(cos(U_j, L_i) / τ) cos(U_j, L_i) with τ = 1/50; ranking loss on both.
- Test (images): u = the image embedding, U_j = dense image features in the joint space (ViT:
  the core's ``dense="values"`` (MaskCLIP) or ``"tokens"``; RN50: the attention pool's value
  path), τ = 1/40; score = 0.5·p + 0.5·p'.

One LightningModule covers the paper's rows and baselines:

- ``prompts: handcrafted`` = zero-shot CLIP ("a photo of a {}." features for both branches,
  nothing trained): ``inference: global`` is plain zero-shot, ``dual`` is zero-shot + DPT inference;
- ``branches: global`` = TaI with one (global) prompt; ``dual`` = TaI-DPT;
- ``loss``: ``ranking`` (the paper's), ``bce``, ``asl`` (the loss ablation);
- training batches of images (a MultiLabelDataModule with a train split) instead of captions
  train the same prompts on labelled images (CoOp-style); ``ensemble_checkpoint`` fuses a
  test's scores with such a model's (the paper's complementarity experiment).

Metrics: macro mAP (``val/mAP``, ``test/mAP``; per-class AP as ``test/ap/<class>``). Validation
is on held-out captions (or a separate image val split), never on the test set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vpg.clip import CLIP
from vpg.data.transforms import ShortSideCenterCrop, clip_transform
from vpg.errors import ConfigurationError
from vpg.losses.ranking import MULTILABEL_LOSSES, multilabel_loss
from vpg.metrics import MultiLabelMAP
from vpg.modules.dpt import DualPromptLearner, dual_scores, local_attention

from .base import VPGModule

log = logging.getLogger(__name__)

AUTHORS_SCALE = 4.0  # logits = 4 x cosine
AUTHORS_TRAIN_TEMPERATURE = 1 / 50  # softmax over caption tokens
AUTHORS_TEST_TEMPERATURE = 1 / 40  # softmax over image positions (NUS-WIDE: 1/4 for both)


class TaIDPT(VPGModule):
    """TaI-DPT and its baselines (module docstring).

    Args:
        clip: the frozen CLIP core (RN50 is the authors' backbone; any ViT works too).
        class_names: override the DataModule's class names; prompt_names: the names put in
            prompts (default: the DataModule's ``prompt_names``, else the class names).
        prompts: ``learned`` (DPT contexts) or ``handcrafted`` (zero-shot templates, nothing trained).
        branches: ``dual`` (global + local prompts, TaI-DPT) or ``global`` (TaI with one prompt).
        inference: which scores make the prediction: ``dual`` (weighted sum), ``global``, ``local``;
            default: ``branches``.
        n_ctx, ctx_init_std, class_specific: the contexts (16, N(0, 0.02), shared by classes).
        templates: handcrafted prompts (mean of normalised template features per class).
        loss, margin: ``ranking`` (margin 1), ``bce`` or ``asl``; summed over the trained branches.
        logit_scale: cosine -> logit factor (4 as the authors).
        train_temperature / test_temperature: τ of the local softmax on captions / images.
        global_weight: final = w·global + (1 - w)·local (0.5).
        dense: ViT dense features for the local branch, ``values`` (MaskCLIP) or ``tokens``.
        lr, momentum, weight_decay, warmup_epochs, warmup_lr: SGD with a constant warm-up
            then cosine decay per epoch (the authors: 1e-4 / 1e-3 NUS, 0.9, 1 epoch at 1e-5).
        test_transform: ``clip`` (squash to the CLIP input) or ``short_side_center_crop``
            (short side to the input size + centre crop, the authors' test transform).
        ensemble_checkpoint, ensemble_weight: fuse test scores with another TaIDPT checkpoint's
            prompts (e.g. trained on labelled images): (1 - w)·own + w·other.
        log_attention: test images whose local attention maps go to TensorBoard (0: none).
    """

    def __init__(
        self,
        clip: CLIP,
        class_names: list[str] | None = None,
        prompt_names: list[str] | None = None,
        prompts: Literal["learned", "handcrafted"] = "learned",
        branches: Literal["dual", "global"] = "dual",
        inference: Literal["dual", "global", "local"] | None = None,
        n_ctx: int = 16,
        ctx_init_std: float = 0.02,
        class_specific: bool = False,
        templates: list[str] | None = None,
        loss: Literal["ranking", "bce", "asl"] = "ranking",
        margin: float = 1.0,
        logit_scale: float = AUTHORS_SCALE,
        train_temperature: float = AUTHORS_TRAIN_TEMPERATURE,
        test_temperature: float = AUTHORS_TEST_TEMPERATURE,
        global_weight: float = 0.5,
        dense: Literal["values", "tokens"] = "values",
        lr: float = 1e-4,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        test_transform: Literal["clip", "short_side_center_crop"] = "clip",
        ensemble_checkpoint: str | None = None,
        ensemble_weight: float = 0.5,
        log_attention: int = 4,
    ):
        super().__init__(clip)
        # test-time choices stay out of the hyperparameters: LightningCLI applies a checkpoint's
        # hyperparameters over the command line's, so saved ones could not be changed at test time
        self.save_hyperparameters(ignore=["clip", "ensemble_checkpoint", "ensemble_weight", "log_attention"])
        self.ensemble_checkpoint, self.ensemble_weight = ensemble_checkpoint, float(ensemble_weight)
        self.log_attention = int(log_attention)
        if prompts not in ("learned", "handcrafted"):
            raise ConfigurationError(f"prompts must be 'learned' or 'handcrafted', got {prompts!r}")
        if branches not in ("dual", "global"):
            raise ConfigurationError(f"branches must be 'dual' or 'global', got {branches!r}")
        inference = inference or branches
        if inference not in ("dual", "global", "local"):
            raise ConfigurationError(f"inference must be 'dual', 'global' or 'local', got {inference!r}")
        if prompts == "learned" and branches == "global" and inference != "global":
            raise ConfigurationError("a global-only prompt has no local branch to infer with (inference: global)")
        if loss not in MULTILABEL_LOSSES:
            raise ConfigurationError(f"loss must be one of {MULTILABEL_LOSSES}, got {loss!r}")
        if dense not in ("values", "tokens"):
            raise ConfigurationError(f"dense must be 'values' or 'tokens', got {dense!r}")
        if class_specific and not class_names:
            raise ConfigurationError("class_specific contexts need class_names (their number fixes the parameters)")
        self.prompts, self.branches, self.inference = prompts, branches, inference
        self.templates = list(templates or ["a photo of a {}."])
        self.loss_name, self.margin, self.scale = loss, float(margin), float(logit_scale)
        self.train_temperature, self.test_temperature = float(train_temperature), float(test_temperature)
        self.global_weight, self.dense = float(global_weight), dense
        self._class_names, self._prompt_names = class_names, prompt_names
        self.prompt_learner = None
        if prompts == "learned":
            self.prompt_learner = DualPromptLearner(
                clip.text_width, n_ctx, ctx_init_std, ("global", "local") if branches == "dual" else ("global",),
                class_specific, len(class_names) if class_names else None)
        self.register_buffer("name_tokens", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("handcrafted", torch.empty(0), persistent=False)  # (C, E) zero-shot features
        self.metrics = torch.nn.ModuleDict()
        self.class_names: list[str] = list(class_names or [])
        self._eval_classes: dict[str, Tensor] | None = None
        self._ensemble: DualPromptLearner | None = None  # set via __dict__: not a submodule, not saved

    # ------------------------------------------------------------------ setup
    def image_transform(self, train: bool):
        if self.hparams.test_transform == "short_side_center_crop":
            return ShortSideCenterCrop(self.clip.image_size[0], self.clip.image_mean, self.clip.image_std)
        return clip_transform(self.clip)

    def set_classes(self, class_names: Sequence[str], prompt_names: Sequence[str] | None = None) -> None:
        """Fix the classes (and the names put in prompts); builds the name tokens / zero-shot features."""
        prompt_names = list(prompt_names or class_names)
        if len(prompt_names) != len(class_names):
            raise ConfigurationError(f"{len(prompt_names)} prompt names for {len(class_names)} classes")
        self.class_names = list(class_names)
        self.prompt_name_list = prompt_names
        self.name_tokens = self.tokenizer([f"{n}." for n in prompt_names]).to(self.device)  # (C, ctx)
        if self.prompts == "handcrafted":
            self.handcrafted = self.class_text_features(prompt_names, self.templates)  # (C, E)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = self._class_names or getattr(dm, "class_names", None)
        if not names:
            raise ConfigurationError("TaIDPT needs class names: from the DataModule or `class_names`")
        prompt_names = self._prompt_names or (getattr(dm, "prompt_names", None) if not self._class_names else None)
        self.set_classes(names, prompt_names)
        n = len(self.class_names)
        self.metrics["val"] = MultiLabelMAP(n)
        for split in self.test_split_names():
            self.metrics[f"test_{split}"] = MultiLabelMAP(n)
        if self.ensemble_checkpoint and self._ensemble is None:
            self.__dict__["_ensemble"] = self._load_ensemble(self.ensemble_checkpoint)

    def _load_ensemble(self, path: str) -> DualPromptLearner:
        """The prompt contexts of another TaIDPT checkpoint (kept out of this module's state)."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hp = checkpoint.get("hyper_parameters", {})
        if hp.get("prompts", "learned") != "learned":
            raise ConfigurationError(f"{path}: the ensemble partner must have learned prompts")
        learner = DualPromptLearner(self.clip.text_width, hp.get("n_ctx", 16), 0.0,
                                    ("global", "local") if hp.get("branches", "dual") == "dual" else ("global",),
                                    hp.get("class_specific", False), len(self.class_names))
        state = {k[len("prompt_learner."):]: v for k, v in checkpoint["state_dict"].items()
                 if k.startswith("prompt_learner.")}
        learner.load_state_dict(state)
        return learner.to(self.device).requires_grad_(False)


    # ------------------------------------------------------------------ features and scores
    def class_features(self, learner: DualPromptLearner | None = None) -> dict[str, Tensor]:
        """{branch: (C, E)}: learned prompts through the text tower, or the zero-shot features."""
        learner = learner if learner is not None else self.prompt_learner
        if learner is None:
            return {"global": self.handcrafted, "local": self.handcrafted}
        return learner.class_features(self.clip, self.name_tokens)

    def caption_features(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Captions stand in for images: EOT feature (N, E), token features (N, L, E), valid (N, L)."""
        out = self.clip.forward_text(tokens)
        return out.pooled, out.tokens, ~out.padding_mask

    def image_features(self, images: Tensor, local: bool = True) -> tuple[Tensor, Tensor | None, None]:
        """Image embedding (N, E) and dense features (N, hw, E) (every position valid)."""
        out = self.clip.forward_image(images, dense=self.dense if local else None)
        return out.pooled, out.dense, None

    def _uses_local(self, training: bool) -> bool:
        return (self.branches == "dual" and self.prompts == "learned") if training else self.inference != "global"

    def scores(self, batch: dict, classes: dict[str, Tensor], training: bool = False) -> dict[str, Tensor]:
        """{"global", "local" (if used), "final"}: (B, C) logits of a caption or an image batch."""
        local = self._uses_local(training)
        if "text" in batch:
            u, tokens, valid = self.caption_features(batch["text"])
            temperature = self.train_temperature
        else:
            u, tokens, valid = self.image_features(batch["image"], local)
            temperature = self.test_temperature
        out = dual_scores(u, tokens, valid, classes["global"], classes.get("local") if local else None,
                          temperature, self.scale)
        if self.inference == "dual" and "local" in out:
            out["final"] = self.global_weight * out["global"] + (1 - self.global_weight) * out["local"]
        else:
            out["final"] = out["local" if self.inference == "local" else "global"]
        return out

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> final logits (B, C)."""
        return self.scores({"image": images}, self.class_features())["final"]

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.scores(batch, self.class_features(), training=True)
        losses = {b: multilabel_loss(self.loss_name, out[b], batch["labels"], self.margin)
                  for b in ("global", "local") if b in out}
        loss = sum(losses.values())
        size = len(batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for b, value in losses.items():
            self.log(f"train/loss_{b}", value, batch_size=size)
        return loss

    def configure_optimizers(self):
        if self.prompt_learner is None:
            return None
        hp = self.hparams
        optimizer = torch.optim.SGD(self.prompt_learner.parameters(), lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay)
        epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
        warmup = min(hp.warmup_epochs, epochs - 1)

        def factor(epoch: int) -> float:  # constant warm-up at warmup_lr, then cosine to 0 over the rest
            if epoch < warmup:
                return hp.warmup_lr / hp.lr
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------ evaluation
    def _cache_eval_classes(self) -> None:
        if self._ensemble is not None:  # loaded in setup, before the trainer moved this module
            self._ensemble.to(self.device)
        with torch.no_grad():
            self._eval_classes = self.class_features()
            self._ensemble_classes = self.class_features(self._ensemble) if self._ensemble is not None else None

    def on_validation_epoch_start(self) -> None:
        self._cache_eval_classes()

    def on_test_epoch_start(self) -> None:
        self._cache_eval_classes()

    def eval_scores(self, batch: dict) -> dict[str, Tensor]:
        if self._eval_classes is None:
            self._cache_eval_classes()
        out = self.scores(batch, self._eval_classes)
        if self._ensemble is not None and "image" in batch:
            other = self.scores(batch, self._ensemble_classes)["final"]
            w = self.ensemble_weight
            out["own"] = out["final"]
            out["final"] = (1 - w) * out["final"] + w * other
        return out

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self.eval_scores(batch)
        size = len(batch["labels"])
        self.metrics["val"].update(out["final"], batch["labels"])
        self.log("val/mAP", self.metrics["val"], on_epoch=True, prog_bar=True, batch_size=size)
        if "text" in batch and self.prompts == "learned":
            loss = sum(multilabel_loss(self.loss_name, out[b], batch["labels"], self.margin)
                       for b in ("global", "local") if b in out and (b == "global" or self.branches == "dual"))
            self.log("val/loss", loss, on_epoch=True, batch_size=size)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        splits = self.test_split_names()
        split = splits[dataloader_idx] if dataloader_idx < len(splits) else f"test{dataloader_idx}"
        out = self.eval_scores(batch)
        key = f"test_{split}"
        if key not in self.metrics:
            self.metrics[key] = MultiLabelMAP(len(self.class_names)).to(self.device)
        self.metrics[key].update(out["final"], batch["labels"])
        name = "test/mAP" if len(splits) == 1 else f"test/mAP/{split}"
        self.log(name, self.metrics[key], on_epoch=True, prog_bar=True, add_dataloader_idx=False,
                 batch_size=len(batch["labels"]))
        if batch_idx == 0 and self.log_attention and "local" in out:
            self._log_attention(batch, out, f"test/attention/{split}" if len(splits) > 1 else "test/attention")

    def on_test_epoch_end(self) -> None:
        splits = self.test_split_names()
        for split in splits:
            metric = self.metrics[f"test_{split}"] if f"test_{split}" in self.metrics else None
            if metric is None or not metric.update_called:
                continue
            per_class = metric.compute_per_class()  # (C,), nan = no positives
            suffix = "" if len(splits) == 1 else f"/{split}"
            for name, ap in zip(self.class_names, per_class.tolist()):
                if not math.isnan(ap):
                    self.log(f"test/ap{suffix}/{name}", ap, add_dataloader_idx=False)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.eval_scores(batch)["final"]

    # ------------------------------------------------------------------ pictures
    def attention_maps(self, images: Tensor, classes: Tensor) -> Tensor:
        """Local branch attention softmax_j(P_ij / τ) of the given classes on the dense grid.

        images: (B, 3, H, W); classes: (B, K) class indices -> (B, K, h, w)."""
        with torch.no_grad():
            _, dense, _ = self.image_features(images)
            similarity = F.normalize(dense, dim=-1) @ F.normalize(self._eval_classes["local"], dim=-1).t()  # (B, hw, C)
            weights = local_attention(similarity, None, self.test_temperature)  # (B, hw, C)
        b, hw, _ = weights.shape
        gh, gw = self.clip.grid_size(tuple(images.shape[-2:]))
        if gh * gw != hw:  # ResNet trunks round sizes differently: square grids
            gh = gw = round(hw**0.5)
        picked = weights.gather(2, classes.unsqueeze(1).expand(b, hw, classes.shape[1]))  # (B, hw, K)
        return picked.transpose(1, 2).reshape(b, classes.shape[1], gh, gw)

    def _log_attention(self, batch: dict, out: dict, tag: str, top: int = 3) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        from vpg.utils.visualize import caption_below, denormalise, grid, to_chw_tensor

        count = min(self.log_attention, len(batch["image"]))
        images = batch["image"][:count]
        scores = out["final"][:count]  # (n, C)
        classes = scores.topk(min(top, scores.shape[1]), dim=1).indices  # (n, K)
        maps = self.attention_maps(images, classes)  # (n, K, h, w)
        size = images.shape[-2:]
        maps = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)
        maps = maps / maps.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]  # (n, K, H, W) in [0, 1]
        tiles = []
        for i in range(count):  # a few pictures for a human
            base = to_chw_tensor(denormalise(images[i], self.clip.image_mean, self.clip.image_std))  # (3, H, W)
            truth = [self.class_names[c] for c in batch["labels"][i].nonzero().flatten().tolist()]
            tiles.append(caption_below(_to_pil(base), "true: " + ", ".join(truth)))
            for k, c in enumerate(classes[i].tolist()):
                heat = maps[i, k].cpu()
                overlay = 0.45 * base + 0.55 * torch.stack([heat, 0.1 * heat, 0.1 * heat])  # red = attended
                tiles.append(caption_below(_to_pil(overlay), f"{self.class_names[c]} {scores[i, c]:.2f}"))
        experiment.add_image(tag, to_chw_tensor(grid(tiles, columns=1 + classes.shape[1])), self.global_step)


def _to_pil(chw: Tensor):
    from PIL import Image

    array = (chw.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


__all__ = ["AUTHORS_SCALE", "AUTHORS_TEST_TEMPERATURE", "AUTHORS_TRAIN_TEMPERATURE", "TaIDPT"]
