from .export import ExportCLIPWeights
from .hilora import HiLoRAScheduler, LoRAStage
from .zeroshot import ZeroShotMonitor

__all__ = ["ExportCLIPWeights", "HiLoRAScheduler", "LoRAStage", "ZeroShotMonitor"]
