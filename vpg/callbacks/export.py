"""Write the trained CLIP in open_clip's layout when a fit ends (the committed tiny CLIP)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from vpg.clip import save_open_clip_weights


class ExportCLIPWeights(L.Callback):
    """On fit end, save ``pl_module.clip`` as open_clip safetensors (fp16 with ``half``)."""

    def __init__(self, path: str, half: bool = True):
        self.path, self.half = Path(path), half

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            out = save_open_clip_weights(pl_module.clip, self.path, half=self.half)
            print(f"exported CLIP weights: {out}")
