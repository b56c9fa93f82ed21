"""Self-attention with separate q/k/v/out projections.

open_clip 3.x packs q/k/v into one ``nn.MultiheadAttention``. vpg replaces it in place by
:class:`Attention`, whose projections are plain ``nn.Linear`` modules so PEFT can put a
LoRA adapter on each of them by name (HiVG adapts q, k, v and out separately) and so the
core can compute only the rows it needs (the [CLS] query, per-head outputs).

The module keeps ``nn.MultiheadAttention``'s call signature, so open_clip's own
``encode_image`` / ``encode_text`` still run on a converted model and give the same output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _as_sdpa_mask(bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Additive bias (L,L) | (N,L,L) | (N,H,L,L) -> a mask SDPA broadcasts over heads."""
    if bias is None:
        return None
    if bias.dtype == torch.bool:
        # A bool mask means "allowed" to SDPA but open_clip casts bools to 0/1 floats;
        # neither is what an additive bias means, so refuse it loudly.
        raise TypeError("attention bias must be a float additive tensor, not bool")
    if bias.dim() == 3:
        bias = bias.unsqueeze(1)  # (N, 1, L, L): shared by all heads
    return bias.to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention: ``out_proj(softmax(q kᵀ/√d + bias) v)``."""

    def __init__(self, width: int, heads: int, bias: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.q_proj = nn.Linear(width, width, bias=bias)
        self.k_proj = nn.Linear(width, width, bias=bias)
        self.v_proj = nn.Linear(width, width, bias=bias)
        self.out_proj = nn.Linear(width, width, bias=bias)

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> Attention:
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or not mha.batch_first:
            raise ValueError("only batch-first self-attention with packed q/k/v can be converted")
        width, has_bias = mha.embed_dim, mha.in_proj_bias is not None
        attn = cls(width, mha.num_heads, bias=has_bias)
        w_q, w_k, w_v = mha.in_proj_weight.detach().chunk(3, dim=0)
        with torch.no_grad():
            for proj, w in zip((attn.q_proj, attn.k_proj, attn.v_proj), (w_q, w_k, w_v)):
                proj.weight.copy_(w)
            attn.out_proj.weight.copy_(mha.out_proj.weight)
            if has_bias:
                for proj, b in zip((attn.q_proj, attn.k_proj, attn.v_proj), mha.in_proj_bias.detach().chunk(3)):
                    proj.bias.copy_(b)
                attn.out_proj.bias.copy_(mha.out_proj.bias)
        attn.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        attn.requires_grad_(mha.in_proj_weight.requires_grad)
        return attn

    def _heads(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        return x.view(n, length, self.heads, self.head_dim).transpose(1, 2)  # (N, H, L, dh)

    def attend(self, x: Tensor, bias: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (N, L, D) -> (N, L, D). ``bias`` is added to the scaled logits before softmax."""
        n, length, d = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        mask = _as_sdpa_mask(bias, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, d))  # (N, L, D)

    def attend_with_probs(self, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`attend` computed explicitly, also returning the softmax probabilities.

        The probabilities (N, H, L, L) are the tensor the output is computed from, so gradients
        of anything downstream with respect to them are defined (attention explainability,
        e.g. Chefer et al.'s GAE). Same result as :meth:`attend` up to float error; slower.
        """
        n, length, d = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5  # (N, H, L, L)
        mask = _as_sdpa_mask(bias, logits.dtype)
        if mask is not None:
            logits = logits + mask
        probs = logits.softmax(dim=-1)  # (N, H, L, L)
        out = (probs @ v).transpose(1, 2).reshape(n, length, d)  # (N, L, D)
        return self.out_proj(out), probs

    def cls_head_outputs(self, x: Tensor, bias_row: Tensor | None = None, kv_index: Tensor | None = None) -> Tensor:
        """Per-head attention output of the [CLS] query (row 0) only, before ``out_proj``.

        x: (B, L, D) normed tokens. bias_row: (N, L) additive bias of the [CLS] query row.
        kv_index: (N,) row of ``x`` each output row reads (keys/values shared across
        candidates of one image); None means N == B. Returns (N, H, dh).
        """
        q = self._heads(self.q_proj(x[:, :1]))  # (B, H, 1, dh)
        k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))  # (B, H, L, dh)
        logits = (q @ k.transpose(-1, -2)).squeeze(2) * self.head_dim**-0.5  # (B, H, L)
        if kv_index is not None:
            logits, v = logits[kv_index], v[kv_index]  # (N, H, L), (N, H, L, dh)
        if bias_row is not None:
            logits = logits + bias_row.to(logits.dtype).unsqueeze(1)  # shared by heads
        probs = logits.softmax(dim=-1)
        return (probs.unsqueeze(2) @ v).squeeze(2)  # (N, H, dh)

    def attend_cls(self, x: Tensor, bias_row: Tensor | None = None, kv_index: Tensor | None = None) -> Tensor:
        """Attention output of the [CLS] query only: (N, D). See :meth:`cls_head_outputs`."""
        heads = self.cls_head_outputs(x, bias_row, kv_index)
        return self.out_proj(heads.flatten(1))  # (N, D)

    def head_contributions(self, heads: Tensor) -> Tensor:
        """Split ``out_proj(concat heads)`` into per-head terms that sum to it exactly.

        heads: (N, H, dh) -> (N, H, D); the output bias is shared equally by the heads.
        Needs a plain ``nn.Linear`` out_proj (merge LoRA adapters first).
        """
        if not isinstance(self.out_proj, nn.Linear):
            raise TypeError("per-head decomposition needs a plain nn.Linear out_proj; merge adapters first")
        w = self.out_proj.weight.view(self.width, self.heads, self.head_dim)  # (D, H, dh)
        parts = torch.einsum("nhe,dhe->nhd", heads, w)  # (N, H, D)
        if self.out_proj.bias is not None:
            parts = parts + self.out_proj.bias / self.heads
        return parts

    # nn.MultiheadAttention-compatible entry, used when open_clip's own forward runs.
    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, **_):
        if key is not None and key is not query or value is not None and value is not query:
            raise ValueError("vpg Attention is self-attention only")
        return self.attend(query, bias=attn_mask), None
