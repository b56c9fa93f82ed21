from .contrastive import clip_contrastive_loss

__all__ = ["clip_contrastive_loss"]
