"""HiLoRA: stage-wise LoRA on CLIP, from shallow to deep, as a Lightning callback backed by PEFT.

A schedule is a list of :class:`LoRAStage` (epochs, lr, which vision / text blocks get a LoRA
adapter). At the first epoch of each stage :class:`HiLoRAScheduler`

1. merges the previous stage's adapter into CLIP's weights (PEFT ``merge_and_unload``; outputs
   unchanged) and re-freezes every CLIP weight (PEFT 0.21 hands merged
   ``nn.MultiheadAttention`` weights back with ``requires_grad=True``);
2. starts a fresh adapter on the stage's blocks (init seeded by ``seed`` + stage, so it does
   not depend on the run's history: a resumed run makes the same adapters);
3. under DDP, wraps the module in a new ``DistributedDataParallel``: DDP registers the
   parameters that require grad when it wraps, so an adapter created later would never be
   all-reduced and the ranks would drift apart; the new wrapper registers it and broadcasts
   rank 0's weights;
4. rebuilds the optimizer and scheduler from the module's ``configure_optimizers`` with the
   stage's lr and length.

HiVG's schedule: a warm-up stage without LoRA (bridge and grounding head only, high lr), then
stage k adapts layer groups 1..k. A plain one-round LoRA is one stage with every block.

The LightningModule mixes in :class:`StagedLoRA`, which owns the adapter and records the stage
in checkpoints (``on_save_checkpoint``); on resume it rebuilds the live adapter in
``on_load_checkpoint``, which Lightning runs before loading the state dict, so merged weights
and the adapter's weights load into the right places.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning as L
import torch
from torch import nn

log = logging.getLogger(__name__)

#: HiVG adapts the attention q, k, v, out projections and the MLP's first layer.
DEFAULT_TARGETS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.c_fc")
_VISION_PREFIX = r"model\.visual\.transformer\.resblocks"
_TEXT_PREFIX = r"model\.transformer\.resblocks"
CHECKPOINT_KEY = "hilora"


@dataclass
class LoRAStage:
    """One stage: ``epochs`` at ``lr``; LoRA on ``vision_blocks`` / ``text_blocks`` (0-based; empty = none)."""

    epochs: int
    lr: float
    vision_blocks: list[int] = field(default_factory=list)
    text_blocks: list[int] = field(default_factory=list)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"a LoRA stage needs at least 1 epoch, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"a LoRA stage needs a positive lr, got {self.lr}")


def target_regex(vision_blocks: Sequence[int], text_blocks: Sequence[int],
                 targets: Sequence[str] = DEFAULT_TARGETS) -> str | None:
    """PEFT ``target_modules`` regex (a full match over module names of ``vpg.clip.CLIP``)."""
    modules = "|".join(re.escape(t) for t in targets)
    parts = []
    for prefix, blocks in ((_VISION_PREFIX, vision_blocks), (_TEXT_PREFIX, text_blocks)):
        if blocks:
            parts.append(rf"{prefix}\.({'|'.join(str(int(b)) for b in sorted(set(blocks)))})\.({modules})")
    return "|".join(f"(?:{p})" for p in parts) or None


def _fork_rng():
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


class StagedLoRA:
    """Mixin for a LightningModule with a CLIP core at ``self.clip``: one live LoRA adapter at a
    time, merged into the weights when the next stage starts; the stage is saved in checkpoints.

    State: ``hilora_stage`` (-1 before the first stage), ``hilora_adapter`` (the live adapter's
    spec or None), ``hilora_lr`` / ``hilora_epochs`` (what ``configure_optimizers`` should use).
    """

    clip: nn.Module

    def init_staged_lora(self, lr: float, epochs: int | None = None) -> None:
        self.hilora_stage: int = -1
        self.hilora_adapter: dict | None = None
        self.hilora_lr: float = float(lr)
        self.hilora_epochs: int | None = epochs
        self._set_wrapper(None)

    def _set_wrapper(self, wrapper) -> None:
        # The peft LoraModel around self.clip, kept out of nn.Module registration: as a submodule
        # it would put every CLIP weight in the state dict twice.
        object.__setattr__(self, "_lora_wrapper", wrapper)

    # -- adapters
    def merge_live_adapter(self) -> None:
        """Fold the live adapter into CLIP's weights and freeze every CLIP weight again."""
        if self._lora_wrapper is not None:
            self._lora_wrapper.merge_and_unload()
            self._set_wrapper(None)
        self.hilora_adapter = None
        self.clip.requires_grad_(False)  # PEFT may leave merged weights trainable

    def inject_adapter(self, spec: dict) -> None:
        """Add a fresh LoRA adapter described by ``spec`` (see :meth:`start_lora_stage`)."""
        from peft import LoraConfig, LoraModel

        regex = target_regex(spec["vision_blocks"], spec["text_blocks"], spec["targets"])
        if regex is None:
            return
        config = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                            target_modules=regex, bias="none")
        training = self.clip.training
        with _fork_rng():
            torch.manual_seed(spec["seed"])  # the same adapter init on every rank and on resume
            self._set_wrapper(LoraModel(self.clip, config, spec["name"]))
        self.clip.train(training)  # new modules (LoRA dropout) start in train mode; follow the tower
        self.hilora_adapter = dict(spec)

    def start_lora_stage(self, index: int, stage: LoRAStage, rank: int = 32, alpha: float = 16,
                         dropout: float = 0.1, targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0) -> None:
        """Merge the live adapter, then start stage ``index``'s adapter and optimiser settings."""
        self.merge_live_adapter()
        spec = {"name": f"stage{index}", "vision_blocks": list(stage.vision_blocks),
                "text_blocks": list(stage.text_blocks), "rank": int(rank), "alpha": float(alpha),
                "dropout": float(dropout), "targets": list(targets), "seed": int(seed) + index}
        self.inject_adapter(spec)
        self.hilora_stage, self.hilora_lr, self.hilora_epochs = index, float(stage.lr), int(stage.epochs)
        leaked = [n for n, p in self.clip.named_parameters() if p.requires_grad and "lora_" not in n]
        if leaked:
            raise RuntimeError(f"HiLoRA stage {index}: CLIP weights left trainable: {leaked[:3]}")

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.clip.named_parameters() if "lora_" in n]

    # -- checkpoints (Lightning hooks; subclasses calling super() keep them)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"stage": self.hilora_stage, "adapter": self.hilora_adapter,
                                      "lr": self.hilora_lr, "epochs": self.hilora_epochs}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        # Runs before load_state_dict: rebuild the live adapter so its keys exist; the merged
        # weights of earlier stages are plain CLIP weights and load as they are.
        if self._lora_wrapper is not None:
            self._lora_wrapper.unload()  # drop (do not merge) an adapter this fresh module already has
            self._set_wrapper(None)
            self.clip.requires_grad_(False)
        if state["adapter"]:
            self.inject_adapter(state["adapter"])
        self.hilora_stage, self.hilora_lr, self.hilora_epochs = state["stage"], state["lr"], state["epochs"]


class HiLoRAScheduler(L.Callback):
    """Run a LoRA stage schedule on a :class:`StagedLoRA` module (see the module docstring).

    Args:
        stages: the schedule, in order; epochs past the last stage stay in the last stage.
        rank, alpha, dropout: LoRA hyperparameters (HiVG: 32, 16, 0.1).
        targets: module name suffixes inside each adapted block.
        seed: adapter init seed (stage k uses ``seed + k``).
    """

    def __init__(self, stages: list[LoRAStage], rank: int = 32, alpha: float = 16.0, dropout: float = 0.1,
                 targets: list[str] | None = None, seed: int = 0):
        if not stages:
            raise ValueError("HiLoRAScheduler needs at least one stage")
        self.stages = [s if isinstance(s, LoRAStage) else LoRAStage(**s) for s in stages]
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.targets = list(targets or DEFAULT_TARGETS)
        self.seed = int(seed)
        self.stage = -1  # last stage seen on the module (also kept in the callback's state_dict)

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def stage_at(self, epoch: int) -> int:
        """Stage index of a 0-based epoch."""
        end = 0
        for i, s in enumerate(self.stages):
            end += s.epochs
            if epoch < end:
                return i
        return len(self.stages) - 1

    def _check_module(self, pl_module: L.LightningModule) -> StagedLoRA:
        if not isinstance(pl_module, StagedLoRA):
            raise TypeError(f"HiLoRAScheduler needs a module with vpg.callbacks.hilora.StagedLoRA, "
                            f"got {type(pl_module).__name__}")
        return pl_module

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module = self._check_module(pl_module)
        if stage == "fit" and module.hilora_stage < 0:
            # the optimiser Lightning builds before the first epoch uses stage 0's settings
            module.hilora_lr, module.hilora_epochs = self.stages[0].lr, self.stages[0].epochs
        if stage == "fit" and trainer.max_epochs is not None and trainer.max_epochs != self.total_epochs:
            log.warning("HiLoRA: trainer.max_epochs=%s but the stages add up to %d epochs",
                        trainer.max_epochs, self.total_epochs)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = self._check_module(pl_module)
        target = self.stage_at(trainer.current_epoch)
        if module.hilora_stage == target:
            self.stage = target
            return
        if module.hilora_stage > target:
            raise RuntimeError(f"HiLoRA: the module is in stage {module.hilora_stage} but epoch "
                               f"{trainer.current_epoch} belongs to stage {target}")
        had_adapter = module.hilora_adapter is not None
        for index in range(max(module.hilora_stage + 1, 0), target + 1):  # stages skipped by a resume still merge
            module.start_lora_stage(index, self.stages[index], self.rank, self.alpha, self.dropout, self.targets,
                                    self.seed)
        self.stage = target
        if had_adapter or module.hilora_adapter is not None:
            self._rewrap_ddp(trainer)
        trainer.strategy.setup_optimizers(trainer)
        log.info("HiLoRA: stage %d from epoch %d (lr %g, LoRA on vision blocks %s, text blocks %s; "
                 "%d adapter parameters)", target, trainer.current_epoch, self.stages[target].lr,
                 self.stages[target].vision_blocks, self.stages[target].text_blocks,
                 sum(p.numel() for p in module.lora_parameters()))

    @staticmethod
    def _rewrap_ddp(trainer: L.Trainer) -> None:
        """Wrap the module in a new DDP so that the current trainable parameters are all-reduced."""
        from lightning.pytorch.strategies import DDPStrategy

        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy):
            strategy.model = strategy.lightning_module  # drop the wrapper built for the old parameters
            strategy.configure_ddp()  # new DDP: registers the adapter, broadcasts rank 0's state
        elif trainer.world_size > 1:
            raise NotImplementedError(f"HiLoRA supports DDP for multi-device training, not "
                                      f"{type(strategy).__name__}")

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "stages": [asdict(s) for s in self.stages]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage = int(state_dict.get("stage", -1))


__all__ = ["DEFAULT_TARGETS", "HiLoRAScheduler", "LoRAStage", "StagedLoRA", "target_regex"]
