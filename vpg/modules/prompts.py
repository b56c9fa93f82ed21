"""Learnable prompts for CLIP (plain nn.Modules, no Lightning): CoOp's text context, VPT's visual
prompt tokens and CAVPT's class-aware visual prompt generator.

- :class:`TextContext` (CoOp, Zhou et al. 2022): M context vectors spliced around each class
  name in the text tower's token-embedding space; the class features are the text tower's
  EOT features of "[SOT] ctx_1 ... ctx_M <name>. [EOT]" (``CLIP.splice_context``).
- :class:`VisualPrompts` (VPT, Jia et al. 2022): P tokens per prompted block, handed to the core as
  ``extra_tokens={block: (P, D)}``. Given at block 0 only they are carried through every block
  (VPT-shallow); given at every block they *replace* the previous block's prompt outputs
  (VPT-deep): that is how the core treats ``extra_tokens``.
- :class:`ClassAwarePrompts` (CAVPT, Xing et al., "Dual Modality Prompt Tuning", Eq. 9-12): the
  text features of the top-K_N zero-shot classes of an image, mapped to the visual width, attend
  to the image's tokens at the block input; LN(attention + query) feeds a K-way auxiliary
  classifier and, through a linear layer, becomes K_N class-aware prompt tokens of that block.
  It is handed to the core as a prompt generator: ``extra_tokens={block: callable}``.
- :func:`class_aware_targets` / :func:`class_aware_loss`: Eq. 10's soft targets for the
  auxiliary classifier and its cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUX_TARGETS = ("paper", "authors")
CAVPT_KEYS = ("cls", "tokens")


class TextContext(nn.Module):
    """CoOp's learnable text context: ``length`` vectors of the text tower's width, N(0, std).

    Args:
        length: number of context vectors M (CoOp: 16).
        width: the text tower's token-embedding width (``CLIP.text_width``).
        position: where the class name goes: "end" (CoOp default), "middle" or "front".
        std: initialisation standard deviation (CoOp: 0.02).
    """

    def __init__(self, length: int, width: int, position: str = "end", std: float = 0.02):
        super().__init__()
        if length < 1:
            raise ValueError(f"a text context needs at least one vector, got length {length}")
        if position not in ("end", "middle", "front"):
            raise ValueError(f"position must be 'end', 'middle' or 'front', got {position!r}")
        self.position = position
        self.context = nn.Parameter(torch.randn(length, width) * std)  # (M, W)

    def forward(self, clip, name_tokens: Tensor) -> Tensor:
        """Class features (C, E), not normalised. name_tokens: (C, L) ids of "<name>."."""
        embeddings, eot = clip.splice_context(name_tokens, self.context, self.position)  # (C, L, W), (C,)
        return clip.forward_text(embeddings=embeddings, eot_index=eot).pooled  # (C, E)


class VisualPrompts(nn.Module):
    """VPT prompt tokens: ``length`` tokens of the vision width for each block in ``blocks``.

    Args:
        length: prompts per block P (VPT / DPT: 10).
        width: the vision transformer's width D (``CLIP.vision_width``).
        blocks: 0-based blocks that receive fresh prompts: ``[0]`` = VPT-shallow, every block =
            VPT-deep (each block's prompts replace the previous block's prompt outputs).
        std: initialisation standard deviation (DPT: N(0, 0.02)).
    """

    def __init__(self, length: int, width: int, blocks: Sequence[int], std: float = 0.02):
        super().__init__()
        self.blocks = [int(b) for b in blocks]
        if length < 1 or not self.blocks:
            raise ValueError(f"visual prompts need length >= 1 and at least one block, got {length}, {blocks}")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"visual prompt blocks repeat: {blocks}")
        self.tokens = nn.Parameter(torch.randn(len(self.blocks), length, width) * std)  # (n_blocks, P, D)

    def forward(self) -> dict[int, Tensor]:
        """{block: (P, D)} for ``CLIP.forward_image(extra_tokens=...)``."""
        return {block: self.tokens[j] for j, block in enumerate(self.blocks)}


class ClassAwarePrompts(nn.Module):
    """CAVPT's generator for one block: text features of K_N classes -> K_N visual prompt tokens.

    queries  Q = MLP(t)                          (N, K, D)    t: text features of the top-K_N classes
    keys/values = the block input's [CLS] token ("cls", the paper) or [CLS] + patch tokens + ``num_keys``
                  learnable vectors ("tokens", the authors' release); detached (as the release)
    O = LN(Attention(Q, K, V) + Q)                (N, K, D)
    prompts = LP(O)                              (N, K, D)
    aux logits = classifier(O)                   (N, K, C)   the K-way auxiliary classifier (Eq. 10)

    Attention is single-head: q/k projected to ``attn_dim`` (the release: 32) without bias, softmax
    over the keys, values as they are, then a D x D output projection without bias. With the [CLS]
    token as the only key the softmax weight is 1, so attention is out_proj([CLS]) for every query.

    Args:
        text_dim: width of the text features (CLIP's joint space E).
        width: the vision transformer's width D.
        num_classes: classes of the auxiliary classifier; None builds it later (:meth:`set_num_classes`).
        keys: "cls" or "tokens" (see above).
        num_keys: learnable key/value vectors for keys="tokens" (the release: 10).
        attn_dim: q/k projection width.
        query_hidden: 0 = the query MLP is one linear layer (the release); > 0 = two layers with GELU.
        output_proj: LP, a D x D linear layer on O (the paper); False uses O directly (the release).
        detach_keys: stop gradients into the block input through the keys (as the release).
    """

    def __init__(self, text_dim: int, width: int, num_classes: int | None = None, keys: str = "cls",
                 num_keys: int = 10, attn_dim: int = 32, query_hidden: int = 0, output_proj: bool = True,
                 detach_keys: bool = True, std: float = 0.02):
        super().__init__()
        if keys not in CAVPT_KEYS:
            raise ValueError(f"keys must be one of {CAVPT_KEYS}, got {keys!r}")
        self.keys, self.detach_keys, self.width = keys, detach_keys, width
        if query_hidden > 0:
            self.query = nn.Sequential(nn.Linear(text_dim, query_hidden), nn.GELU(), nn.Linear(query_hidden, width))
        else:
            self.query = nn.Linear(text_dim, width)
        # With the [CLS] token as the only key the softmax is 1 for every query: attention is the
        # value path alone, so q/k projections would get no gradient and are not built.
        self.q_proj = nn.Linear(width, attn_dim, bias=False) if keys == "tokens" else None
        self.k_proj = nn.Linear(width, attn_dim, bias=False) if keys == "tokens" else None
        self.out_proj = nn.Linear(width, width, bias=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, width) if output_proj else nn.Identity()
        self.learned_keys = nn.Parameter(torch.randn(num_keys, width) * std) if keys == "tokens" and num_keys > 0 \
            else None  # (num_keys, D)
        self.classifier: nn.Linear | None = None
        if num_classes is not None:
            self.set_num_classes(num_classes)

    def set_num_classes(self, num_classes: int) -> None:
        """Build (or check) the K-way auxiliary classifier; a different C raises."""
        if self.classifier is not None:
            if self.classifier.out_features != num_classes:
                raise ValueError(f"the auxiliary classifier has {self.classifier.out_features} classes, "
                                 f"the data {num_classes}")
            return
        device = self.out_proj.weight.device
        self.classifier = nn.Linear(self.width, num_classes, bias=False, device=device)

    def forward(self, text: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """text (N, K, E), tokens (N, 1 + hw, D) the block input -> prompts (N, K, D), logits (N, K, C)."""
        query = self.query(text.to(self.out_proj.weight.dtype))  # (N, K, D)
        memory = (tokens[:, :1] if self.keys == "cls" else tokens).to(query.dtype)  # (N, S, D)
        if self.detach_keys:
            memory = memory.detach()
        if self.keys == "cls":  # one key: every query receives the [CLS] value
            attended = self.out_proj(memory).expand_as(query)  # (N, K, D)
        else:
            if self.learned_keys is not None:
                learned = self.learned_keys.to(memory.dtype).expand(memory.shape[0], -1, -1)  # (N, n, D)
                memory = torch.cat([memory, learned], dim=1)  # (N, S, D)
            q, k = self.q_proj(query), self.k_proj(memory)  # (N, K, a), (N, S, a)
            weights = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (N, K, S)
            attended = self.out_proj(weights @ memory)  # (N, K, D)
        normed = self.norm(attended + query)  # (N, K, D) O
        logits = self.classifier(normed) if self.classifier is not None else None  # (N, K, C)
        return self.proj(normed), logits


def class_aware_targets(topk: Tensor, labels: Tensor, num_classes: int, mode: str = "paper") -> tuple[Tensor, Tensor]:
    """Eq. 10's targets for the auxiliary classifier of the K_N class-aware prompts.

    topk (B, K) classes of each image's prompts, labels (B,) -> targets (B, K, C), used (B, K) bool.
    "paper": the prompt of the ground-truth class gets its one-hot target, every other prompt the
    uniform 1/C target; every prompt is used. "authors" (the release): only the ground-truth class's
    prompt is used (when the class is among the top K_N), with its one-hot target.
    """
    if mode not in AUX_TARGETS:
        raise ValueError(f"aux targets must be one of {AUX_TARGETS}, got {mode!r}")
    is_gt = topk == labels[:, None]  # (B, K)
    one_hot = F.one_hot(labels, num_classes).to(torch.float32)[:, None].expand(-1, topk.shape[1], -1)  # (B, K, C)
    uniform = torch.full_like(one_hot, 1.0 / num_classes)
    targets = torch.where(is_gt[..., None], one_hot, uniform)  # (B, K, C)
    used = torch.ones_like(is_gt) if mode == "paper" else is_gt
    return targets, used


def class_aware_loss(logits: Tensor, topk: Tensor, labels: Tensor, mode: str = "paper") -> Tensor:
    """Mean soft-target cross-entropy over the used prompts; 0 when none is used. logits (B, K, C)."""
    targets, used = class_aware_targets(topk, labels, logits.shape[-1], mode)
    if not used.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP's unused-parameter bookkeeping) intact
    return F.cross_entropy(logits[used].float(), targets[used])  # soft targets: (n, C) probabilities


__all__ = ["AUX_TARGETS", "CAVPT_KEYS", "ClassAwarePrompts", "TextContext", "VisualPrompts", "class_aware_loss",
           "class_aware_targets"]
