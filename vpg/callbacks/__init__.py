from .export import ExportCLIPWeights

__all__ = ["ExportCLIPWeights"]
