from .export import ExportCLIPWeights
from .hilora import HiLoRAScheduler, LoRAStage

__all__ = ["ExportCLIPWeights", "HiLoRAScheduler", "LoRAStage"]
