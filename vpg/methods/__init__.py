"""One LightningModule per method. Importing vpg imports them all, so checkpoints' class paths resolve."""

from .base import VPGModule
from .cavpt import PromptTuningClassifier  # noqa: F401  (CoOp / VPT / CAVPT variants; see vpg/methods/cavpt.py)
from .clip_pretrain import CLIPPretraining
from .falip import FALIPClassifier, FALIPPointCloud, FALIPRec  # noqa: F401  (FALIP; see vpg/methods/falip.py)
from .hivg import HiVG  # noqa: F401  (HiVG; HiLoRA is vpg.callbacks.HiLoRAScheduler)
from .tai_dpt import TaIDPT  # noqa: F401  (TaI-DPT; see vpg/methods/tai_dpt.py)
from .wsg import CLIPMapGrounding, WSGGrounding  # noqa: F401  (WWbL / VPT-WSG; see vpg/methods/wsg.py)
from .zeroshot import ZeroShotClassifier

__all__ = ["VPGModule", "CLIPPretraining", "ZeroShotClassifier"]
