"""HiVG's multi-layer adaptive cross-modal bridge (MACB).

One :class:`CrossModalBridge` sits between self-attention and MLP of one vision block (the
core's ``inserts``). It lets the visual tokens read the text: the hidden states of several text
layers, each weighted by a learnable sample-agnostic gate with a residual ((1 + E_i) * T_i, E_i
one vector per text position), are concatenated channel-wise, projected to the visual width,
and serve as keys/values of a multi-head cross-attention whose queries are the layer-normed
visual tokens; an FFN follows and the result is added back to the tokens.

Each image attends only to its own sample's text (the text padding mask keeps it off the
padding). The authors' release reshapes an (L, B, D) text tensor with ``.view(B, ...)``, so an
image attends to a mix of the batch's texts and accuracy depends on the batch size;
``faithful_batch_mixing=True`` reproduces that for comparison only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class CrossModalBridge(nn.Module):
    """Text-conditioned residual update of the visual tokens of one vision block.

    Args:
        vision_width: width D of the visual tokens.
        text_width: width W of the text hidden states.
        text_levels: how many text layers feed the bridge (their states are concatenated).
        context_length: text positions; one gate vector E_i[t] per level and position.
        heads: cross-attention heads.
        ffn_ratio: hidden width of the FFN as a multiple of ``vision_width``.
        dropout: dropout in the cross-attention and the FFN.
        faithful_batch_mixing: reproduce the authors' cross-sample text mixing (see module doc).

    The FFN's output layer starts at zero, so at initialisation the bridged tower computes what
    the frozen CLIP computes: the warm-up starts from CLIP's own features instead of features
    scrambled by a random residual.
    """

    def __init__(self, vision_width: int, text_width: int, text_levels: int, context_length: int, heads: int = 8,
                 ffn_ratio: float = 4.0, dropout: float = 0.1, faithful_batch_mixing: bool = False):
        super().__init__()
        if vision_width % heads:
            raise ValueError(f"bridge: vision width {vision_width} is not divisible by {heads} heads")
        self.text_levels, self.context_length = text_levels, context_length
        self.faithful_batch_mixing = faithful_batch_mixing
        # E_i: one vector per (level, position), zero = plain T_i
        self.text_gates = nn.Parameter(torch.zeros(text_levels, context_length, text_width))
        self.text_proj = nn.Linear(text_levels * text_width, vision_width)
        self.text_norm = nn.LayerNorm(vision_width)
        self.query_norm = nn.LayerNorm(vision_width)
        self.cross_attn = nn.MultiheadAttention(vision_width, heads, dropout=dropout, batch_first=True)
        hidden = int(round(vision_width * ffn_ratio))
        self.ffn_norm = nn.LayerNorm(vision_width)
        self.ffn = nn.Sequential(nn.Linear(vision_width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, vision_width), nn.Dropout(dropout))
        nn.init.zeros_(self.ffn[3].weight)
        nn.init.zeros_(self.ffn[3].bias)

    def text_memory(self, text_states: Tensor) -> Tensor:
        """Gated, concatenated, projected text: (B, levels, Lt, W) -> (B, Lt, D)."""
        b, levels, length, width = text_states.shape
        if levels != self.text_levels:
            raise ValueError(f"bridge expects {self.text_levels} text levels, got {levels}")
        gates = 1.0 + self.text_gates[:, :length].to(text_states.dtype)  # (levels, Lt, W)
        gated = text_states * gates  # (B, levels, Lt, W)
        return self.text_norm(self.text_proj(gated.permute(0, 2, 1, 3).reshape(b, length, levels * width)))

    def forward(self, x: Tensor, text_states: Tensor, text_padding_mask: Tensor) -> Tensor:
        """x (B, L, D) visual tokens after self-attention; text_states (B, levels, Lt, W);
        text_padding_mask (B, Lt) bool, True at padding. Returns (B, L, D)."""
        memory = self.text_memory(text_states)  # (B, Lt, D)
        mask = text_padding_mask
        if self.faithful_batch_mixing:
            # The release's bug: (Lt, B, D) memory read back with .view(B, Lt, D) mixes samples.
            b, length, d = memory.shape
            memory = memory.transpose(0, 1).contiguous().view(b, length, d)
            mask = mask.transpose(0, 1).contiguous().view(b, length)
        mask = mask.clone()
        mask[:, 0] = False  # a fully masked row would give NaN; the SOT token is never padding anyway
        attended, _ = self.cross_attn(self.query_norm(x), memory, memory, key_padding_mask=mask,
                                      need_weights=False)  # (B, L, D)
        return x + self.ffn(self.ffn_norm(attended))

    def bind(self, text_states: Tensor, text_padding_mask: Tensor) -> Callable[[Tensor], Tensor]:
        """The insert for ``CLIP.forward_image``: this batch's text bound to the bridge."""
        return lambda x: self(x, text_states, text_padding_mask)


__all__ = ["CrossModalBridge"]
