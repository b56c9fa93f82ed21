"""DPT / CAVPT (Xing et al., "Dual Modality Prompt Tuning for Vision-Language Pre-Trained Model",
TMM 2023; "Class-Aware Visual Prompt Tuning"): text and visual prompts learned together on a
frozen CLIP, plus class-aware visual prompts generated from the text features of each image's
top-K_N zero-shot classes.

One LightningModule, :class:`PromptTuningClassifier`; the paper's seven Table 1 rows are values of
``variant``:

| variant       | text side              | image side                                                    |
|---------------|------------------------|---------------------------------------------------------------|
| `zeroshot`    | hand-made templates    | -                                                             |
| `coop`        | 16 learned ctx vectors | -                                                             |
| `vpt_shallow` | templates              | 10 prompts at block 0, carried through                         |
| `vpt_deep`    | templates              | 10 fresh prompts at every block (replacing the previous ones)  |
| `vpt_cavpt`   | templates              | VPT-deep below the CAVPT blocks, CAVPT prompts in them         |
| `vlp_deep`    | 16 learned ctx vectors | VPT-deep                                                      |
| `vlp_cavpt`   | 16 learned ctx vectors | VPT-deep below, CAVPT in the last block(s)                     |

CLIP stays frozen; only ``text_context``, ``visual_prompts`` and ``cavpt`` train. Loss: cross-entropy
of scale * cos(image, class text) (L_ce) + ``aux_weight`` x the auxiliary class-aware loss
(L_ce^ca, Eq. 10-12); optionally the release's "general knowledge guidance" terms for the first
``guidance_epochs`` epochs. Optimiser: SGD with per-group learning rates (visual prompts + CAVPT vs
text context), constant warm-up then cosine decay per epoch, as CoOp/Dassl schedule it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpg.clip import CLIP
from vpg.data.transforms import FewShotTrainTransform, ShortSideCenterCrop
from vpg.errors import ConfigurationError
from vpg.metrics import TopKAccuracy
from vpg.modules.prompts import AUX_TARGETS, ClassAwarePrompts, TextContext, VisualPrompts, class_aware_loss

from .base import ClassifierEval, VPGModule

log = logging.getLogger(__name__)

# variant -> (learned text context, visual prompts "none" | "shallow" | "deep", CAVPT)
VARIANTS: dict[str, tuple[bool, str, bool]] = {
    "zeroshot": (False, "none", False),
    "coop": (True, "none", False),
    "vpt_shallow": (False, "shallow", False),
    "vpt_deep": (False, "deep", False),
    "vpt_cavpt": (False, "deep", True),
    "vlp_deep": (True, "deep", False),
    "vlp_cavpt": (True, "deep", True),
}


@dataclass
class PromptedOutput:
    logits: Tensor  # (B, C) scale * cos(prompted image, class text)
    image: Tensor  # (B, E) normalised prompted image features
    text: Tensor  # (C, E) class text features (not normalised)
    topk: Tensor | None = None  # (B, K_N) zero-shot top classes (CAVPT)
    zero_shot_image: Tensor | None = None  # (B, E) normalised plain-CLIP image features
    aux_logits: list[Tensor] = field(default_factory=list)  # per CAVPT block (B, K_N, C)


def resolve_cavpt_blocks(blocks: int | list[int], num_layers: int) -> list[int]:
    """An int n = the last n blocks (the authors' scripts: 1); a list = 0-based (negative from the end)."""
    if isinstance(blocks, int):
        if not 1 <= blocks <= num_layers:
            raise ConfigurationError(f"cavpt_blocks: the last n blocks needs 1 <= n <= {num_layers}, got {blocks}")
        return list(range(num_layers - blocks, num_layers))
    resolved = sorted({b % num_layers if -num_layers <= b < num_layers else -1 for b in blocks})
    if not resolved or -1 in resolved:
        raise ConfigurationError(f"cavpt_blocks {blocks} out of range for a {num_layers}-block tower")
    return resolved


def warmup_cosine_factor(epoch: int, warmup_epochs: int, max_epochs: int, warmup_ratio: float) -> float:
    """Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=max_epochs), stepped per epoch:
    a constant ``warmup_ratio`` x lr for ``warmup_epochs`` epochs, then the cosine restarts from the
    full lr and decays over ``max_epochs`` epochs counted from the end of the warm-up."""
    if epoch < warmup_epochs:
        return warmup_ratio
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max(1, max_epochs)))


class PromptTuningClassifier(ClassifierEval, VPGModule):
    """Few-shot classification by prompt tuning: zero-shot / CoOp / VPT / VLP / DPT-CAVPT (see the module doc).

    Batch: ``image`` (B, 3, S, S), ``label`` (B,) (``ClassificationDataModule``). Logs
    ``train/loss``, ``train/loss_aux``, ``train/acc@1``, ``val|test/acc@1|acc@5``.

    Args:
        clip: the frozen CLIP core.
        variant: one of ``VARIANTS``.
        templates: the hand-made prompt(s) of zero-shot CLIP: the classifier of the variants without a
            text context, and the zero-shot ranking that picks CAVPT's top-K_N classes.
        class_names: override the DataModule's class names.
        context_length, context_position, context_std: CoOp's M (16), class-name position, init std.
        prompt_length, prompt_std: VPT prompts per block (10) and their init std (N(0, 0.02)).
        cavpt_blocks: blocks with class-aware prompts: an int n = the last n (the authors' scripts: 1),
            or 0-based indices. VPT-deep prompts go into the blocks below the first of them.
        top_k: K_N, the zero-shot top classes per image (10; clipped to the number of classes).
        cavpt_keys: "cls" (the paper: the block input's [CLS] token) or "tokens" (the release: [CLS] +
            patches + ``cavpt_learned_keys`` learnable vectors).
        cavpt_attn_dim, cavpt_query_hidden, cavpt_output_proj: see ``ClassAwarePrompts``.
        aux_weight: weight of L_ce^ca (the paper: 1; the authors' scripts: 0.3).
        aux_targets: "paper" (Eq. 10: one-hot for the ground-truth class's prompt, uniform 1/C for the
            others) or "authors" (the release: the ground-truth class's prompt only).
        guidance_epochs: the release's "general knowledge guidance" for the first epochs (its scripts:
            30 of 60): loss = CE(zero-shot image, learned text) + CE(prompted image, template text)
            + ``guidance_main_weight`` x L_ce (+ the auxiliary term). 0 = off (the paper's Eq. 12).
        lr_visual, lr_text: SGD learning rates of visual prompts + CAVPT (0.01) and text context (0.002).
        warmup_epochs_visual, warmup_epochs_text, warmup_lr: constant warm-up (10 and 1 epochs at 1e-5).
        momentum, weight_decay: SGD (Dassl's defaults 0.9, 5e-4).
        train_crop_scale, flip_prob: CoOp's training augmentation (random resized crop area, flip).
    """

    def __init__(self, clip: CLIP, variant: str = "vlp_cavpt", templates: list[str] | None = None,
                 class_names: list[str] | None = None, context_length: int = 16, context_position: str = "end",
                 context_std: float = 0.02, prompt_length: int = 10, prompt_std: float = 0.02,
                 cavpt_blocks: int | list[int] = 1, top_k: int = 10, cavpt_keys: str = "cls",
                 cavpt_learned_keys: int = 10, cavpt_attn_dim: int = 32, cavpt_query_hidden: int = 0,
                 cavpt_output_proj: bool = True, aux_weight: float = 1.0, aux_targets: str = "paper",
                 guidance_epochs: int = 0, guidance_main_weight: float = 0.1, lr_visual: float = 0.01,
                 lr_text: float = 0.002, warmup_epochs_visual: int = 10, warmup_epochs_text: int = 1,
                 warmup_lr: float = 1e-5, momentum: float = 0.9, weight_decay: float = 5e-4,
                 train_crop_scale: tuple[float, float] = (0.08, 1.0), flip_prob: float = 0.5):
        super().__init__(clip)
        self.save_hyperparameters(ignore=["clip"])
        if variant not in VARIANTS:
            raise ConfigurationError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if aux_targets not in AUX_TARGETS:
            raise ConfigurationError(f"aux_targets must be one of {AUX_TARGETS}, got {aux_targets!r}")
        if top_k < 1:
            raise ConfigurationError(f"top_k must be >= 1, got {top_k}")
        self.variant = variant
        learn_text, visual, use_cavpt = VARIANTS[variant]
        self.templates = list(templates or ["a photo of a {}."])
        self._class_names = class_names
        n_layers = clip.num_vision_layers

        self.text_context = TextContext(context_length, clip.text_width, context_position, context_std) \
            if learn_text else None
        self.cavpt_blocks = resolve_cavpt_blocks(cavpt_blocks, n_layers) if use_cavpt else []
        self.cavpt = nn.ModuleList(
            ClassAwarePrompts(clip.embed_dim, clip.vision_width, keys=cavpt_keys, num_keys=cavpt_learned_keys,
                              attn_dim=cavpt_attn_dim, query_hidden=cavpt_query_hidden,
                              output_proj=cavpt_output_proj)
            for _ in self.cavpt_blocks
        ) if use_cavpt else None
        # VPT-deep: every block below the first CAVPT block (all blocks without CAVPT); shallow: block 0
        prompt_blocks = {"none": [], "shallow": [0],
                         "deep": list(range(self.cavpt_blocks[0] if self.cavpt_blocks else n_layers))}[visual]
        self.visual_prompts = VisualPrompts(prompt_length, clip.vision_width, prompt_blocks, prompt_std) \
            if prompt_blocks and prompt_length > 0 else None

        self.top_k, self.aux_weight, self.aux_targets = top_k, aux_weight, aux_targets
        self.guidance_epochs, self.guidance_main_weight = guidance_epochs, guidance_main_weight
        self.lr_visual, self.lr_text, self.warmup_lr = lr_visual, lr_text, warmup_lr
        self.warmup_epochs_visual, self.warmup_epochs_text = warmup_epochs_visual, warmup_epochs_text
        self.momentum, self.weight_decay = momentum, weight_decay
        self.train_crop_scale, self.flip_prob = tuple(train_crop_scale), flip_prob
        self.register_buffer("classifier", torch.empty(0), persistent=False)  # (C, E) template features
        self.register_buffer("name_tokens", torch.empty(0, dtype=torch.long), persistent=False)  # (C, L)
        self.metrics = nn.ModuleDict()
        self._eval_text: Tensor | None = None

    # ------------------------------------------------------------------ setup
    def image_transform(self, train: bool):
        size = self.clip.image_size[0]
        if train:  # CoOp: random resized crop + flip; evaluation: short side + centre crop
            return FewShotTrainTransform(size, self.clip.image_mean, self.clip.image_std,
                                         scale=self.train_crop_scale, flip_prob=self.flip_prob)
        return ShortSideCenterCrop(size, self.clip.image_mean, self.clip.image_std)

    def setup(self, stage: str) -> None:
        self.setup_classifier()  # template classifier + val/test metrics
        self.metrics["train_top1"] = TopKAccuracy(len(self.class_names), k=1)
        self.prepare_classes(self.class_names)

    def prepare_classes(self, class_names: list[str]) -> None:
        """Tokens of "<name>." for the text context and the auxiliary classifiers' size."""
        if self.text_context is not None:
            self.name_tokens = self.tokenizer([f"{name}." for name in class_names]).to(self.device)
        for generator in self.cavpt or []:
            generator.set_num_classes(len(class_names))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # load_from_checkpoint runs without setup: size the auxiliary classifiers from the saved weights
        for j, generator in enumerate(self.cavpt or []):
            weight = checkpoint["state_dict"].get(f"cavpt.{j}.classifier.weight")
            if weight is not None:
                generator.set_num_classes(weight.shape[0])

    # ------------------------------------------------------------------ forward
    def text_features(self) -> Tensor:
        """(C, E) class features: learned-context features (not normalised) or the template classifier."""
        if self.text_context is None:
            return self.classifier
        return self.text_context(self.clip, self.name_tokens)

    def zero_shot_topk(self, zero_shot_image: Tensor) -> Tensor:
        """(B, E) normalised plain image features -> (B, K_N) the top classes under the templates."""
        scores = zero_shot_image @ self.classifier.to(zero_shot_image).t()  # (B, C)
        return scores.topk(min(self.top_k, scores.shape[1]), dim=-1).indices

    def _generate(self, generator: ClassAwarePrompts, queries: Tensor, aux: list[Tensor], tokens: Tensor) -> Tensor:
        prompts, logits = generator(queries, tokens)  # (B, K, D), (B, K, C)
        if logits is not None:
            aux.append(logits)
        return prompts

    def forward(self, images: Tensor, text: Tensor | None = None, zero_shot: bool = False) -> PromptedOutput:
        """images (B, 3, S, S) -> PromptedOutput. ``text``: precomputed class features (evaluation);
        ``zero_shot``: also return the plain-CLIP image features (guidance terms)."""
        text = self.text_features() if text is None else text  # (C, E)
        extra: dict = dict(self.visual_prompts()) if self.visual_prompts is not None else {}
        aux: list[Tensor] = []
        topk = zs_image = None
        if self.cavpt is not None or zero_shot:
            with torch.no_grad():  # the frozen zero-shot CLIP ranks the classes
                zs_image = F.normalize(self.clip.encode_image(images), dim=-1)  # (B, E)
        if self.cavpt is not None:
            topk = self.zero_shot_topk(zs_image)  # (B, K)
            queries = text[topk]  # (B, K, E) the current text prompts' features of those classes
            for block, generator in zip(self.cavpt_blocks, self.cavpt):
                extra[block] = partial(self._generate, generator, queries, aux)  # prompts from the block input
        image = F.normalize(self.clip.encode_image(images, extra_tokens=extra), dim=-1)  # (B, E)
        # the template classifier is normalised already (normalising twice would move the last bits)
        weights = self.classifier if self.text_context is None else F.normalize(text, dim=-1)  # (C, E)
        logits = self.clip.logit_scale.exp() * image @ weights.to(image).t()  # (B, C)
        return PromptedOutput(logits, image, text, topk, zs_image, aux)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx):
        labels = batch["label"]
        guided = self.current_epoch < self.guidance_epochs
        out = self(batch["image"], zero_shot=guided)
        loss_main = F.cross_entropy(out.logits, labels)
        loss = loss_main
        if guided:  # the release's early epochs: keep both sides close to zero-shot CLIP's knowledge
            scale = self.clip.logit_scale.exp()
            text_vs_zs = scale * out.zero_shot_image @ F.normalize(out.text, dim=-1).t()  # (B, C) learned text
            image_vs_templates = scale * out.image @ self.classifier.to(out.image).t()  # (B, C) learned image
            loss = F.cross_entropy(text_vs_zs, labels) + F.cross_entropy(image_vs_templates, labels) \
                + self.guidance_main_weight * loss_main
        if out.aux_logits:
            loss_aux = torch.stack([class_aware_loss(lg, out.topk, labels, self.aux_targets)
                                    for lg in out.aux_logits]).mean()
            loss = loss + self.aux_weight * loss_aux
            self.log("train/loss_aux", loss_aux)
        self.metrics["train_top1"].update(out.logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc@1", self.metrics["train_top1"], on_step=False, on_epoch=True)
        return loss

    def _fresh_eval_text(self) -> None:
        self._eval_text = None

    on_validation_epoch_start = on_test_epoch_start = on_predict_epoch_start = _fresh_eval_text

    def batch_logits(self, batch: dict) -> Tensor:
        if self._eval_text is None:  # the prompts do not change during an evaluation epoch
            self._eval_text = self.text_features()
        return self(batch["image"], text=self._eval_text).logits

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        visual = [p for m in (self.visual_prompts, self.cavpt) if m is not None for p in m.parameters()]
        groups, warmups = [], []
        if visual:
            groups.append({"params": visual, "lr": self.lr_visual, "name": "visual"})
            warmups.append((self.warmup_epochs_visual, self.warmup_lr / self.lr_visual))
        if self.text_context is not None:
            groups.append({"params": list(self.text_context.parameters()), "lr": self.lr_text, "name": "text"})
            warmups.append((self.warmup_epochs_text, self.warmup_lr / self.lr_text))
        opt = torch.optim.SGD(groups, momentum=self.momentum, weight_decay=self.weight_decay)
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise ConfigurationError("PromptTuningClassifier schedules per epoch: set trainer.max_epochs")
        factors = [partial(warmup_cosine_factor, warmup_epochs=w, max_epochs=max_epochs, warmup_ratio=r)
                   for w, r in warmups]
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factors), "interval": "epoch"}}


__all__ = ["VARIANTS", "PromptTuningClassifier", "PromptedOutput", "resolve_cavpt_blocks", "warmup_cosine_factor"]
