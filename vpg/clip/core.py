"""The one CLIP core every vpg method composes.

``CLIP`` wraps an open_clip model (ViT image tower + transformer text tower) whose
attention modules were converted to :class:`~vpg.clip.attention.Attention`, and runs both
towers itself so methods can hook into them per call. ResNet image towers (open_clip's
``ModifiedResNet``: RN50, RN101, ...) are supported for the image embedding and ``dense``
features only (see :meth:`CLIP.forward_image`); the block extension points are ViT-only.

Image tower (:meth:`CLIP.forward_image`)
- ``attn_bias``: {block: additive bias} - (N, L, L) per sample, or (N, L) for the [CLS]
  query row only (FALIP form a). Shared by heads; (N, H, L, L) for per-head biases.
- ``extra_tokens``: {block: (P, D) shared or (N, P, D) per sample} - prompt tokens that
  replace the previous block's prompt tokens (VPT-deep); a prompt given only at block 0
  is carried through every block (VPT-shallow). Token order is [CLS, patches, prompts].
  A value may also be a callable (N, 1 + h*w, D) -> (N, P, D) that generates the block's
  prompts from its input [CLS] + patch tokens (CAVPT); it is treated as per sample.
- ``inserts``: {block: callable (N, L, D) -> (N, L, D)} run between attention and MLP
  (HiVG's bridge; the callable carries its own per-sample context).
- ``hidden_layers``: block indices whose outputs (N, L, D) are returned.
- ``dense``: patch features in the joint space, "tokens" (ln_post + proj of the last
  block's patch tokens) or "values" (MaskCLIP: value path of the last block). ResNet towers:
  "values" = the attention pool's value path (``c_proj(v_proj(x_j + pos_j))`` per spatial
  position, MaskCLIP / TaI-DPT), "tokens" = the attention pool run with every position as query.
- ``expand_index``: (N,) image row of each output row. Blocks before the first one that
  needs per-row input run once per image, then rows are expanded (exactly equal, cheaper).
- ``attention_layers``: block indices whose softmax attention probabilities (N, H, L, L) are
  returned in ``VisionOutput.attention``; those blocks compute attention explicitly, so the
  probabilities carry gradients (GAE explainability). Rows are then expanded at once.

Text tower (:meth:`CLIP.forward_text`): from token ids or from token embeddings with
learnable context spliced in (:meth:`CLIP.splice_context`); returns the EOT feature,
every token's projected feature, hidden states and the padding mask.

Block indices are 0-based everywhere in vpg.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention

Insert = Callable[[Tensor], Tensor]
PromptGenerator = Callable[[Tensor], Tensor]  # block input (N, 1 + hw, D) -> prompts (N, P, D)


@dataclass
class VisionOutput:
    pooled: Tensor  # (N, E) image embedding (projected [CLS]); not normalised
    tokens: Tensor | None = None  # (N, L, D) last block output, None when only [CLS] was computed
    hidden: dict[int, Tensor] = field(default_factory=dict)  # block -> (N, L, D) block output
    dense: Tensor | None = None  # (N, h*w, E) patch (ResNet: spatial position) features in the joint space
    attention: dict[int, Tensor] = field(default_factory=dict)  # block -> (N, H, L, L) softmax probabilities


@dataclass
class TextOutput:
    pooled: Tensor  # (N, E) EOT feature projected; not normalised
    tokens: Tensor  # (N, L, E) every token's projected feature
    padding_mask: Tensor  # (N, L) bool, True at positions after EOT
    eot_index: Tensor  # (N,) long
    hidden: dict[int, Tensor] = field(default_factory=dict)  # block -> (N, L, W)


@dataclass
class CLSDecomposition:
    """[CLS] image embedding split into additive parts (LayerNorm linearised at its final scale)."""

    embedding: Tensor  # (N, E) class+position embedding after ln_pre, plus ln_post's bias
    attn_heads: Tensor  # (N, layers, H, E) per block, per head (out_proj bias split over heads)
    mlp: Tensor  # (N, layers, E)
    inserts: Tensor  # (N, layers, E) contributions of inserted modules (zero when none)

    def total(self) -> Tensor:
        return self.embedding + self.attn_heads.sum((1, 2)) + self.mlp.sum(1) + self.inserts.sum(1)


def _block_forward(block: nn.Module, x: Tensor, bias: Tensor | None = None, insert: Insert | None = None,
                   causal: bool = False) -> Tensor:
    x = x + block.ls_1(block.attn.attend(block.ln_1(x), bias=bias, causal=causal))
    if insert is not None:
        x = insert(x)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _block_forward_with_attention(block: nn.Module, x: Tensor, bias: Tensor | None = None,
                                  insert: Insert | None = None) -> tuple[Tensor, Tensor]:
    """:func:`_block_forward` that also returns the block's attention probabilities (N, H, L, L)."""
    attended, probs = block.attn.attend_with_probs(block.ln_1(x), bias=bias)
    x = x + block.ls_1(attended)
    if insert is not None:
        x = insert(x)
    return x + block.ls_2(block.mlp(block.ln_2(x))), probs


def _block_forward_cls(block: nn.Module, x: Tensor, bias_row: Tensor | None = None,
                       kv_index: Tensor | None = None) -> Tensor:
    """Output of the [CLS] row only: x (B, L, D) -> (N, 1, D). Keys/values from all rows."""
    cls = x[:, :1] if kv_index is None else x[kv_index, :1]  # (N, 1, D)
    cls = cls + block.ls_1(block.attn.attend_cls(block.ln_1(x), bias_row, kv_index)).unsqueeze(1)
    return cls + block.ls_2(block.mlp(block.ln_2(cls)))


def _per_sample_prompts(prompts: Tensor | PromptGenerator) -> bool:
    """(N, P, D) prompts and prompt generators differ per output row; (P, D) ones are shared."""
    return callable(prompts) or prompts.dim() == 3


def _block_prompts(prompts: Tensor | PromptGenerator, x: Tensor, n_patches: int) -> Tensor:
    """A block's prompt tokens: the tensor, or the generator applied to the block's input
    [CLS] + patch tokens (N, 1 + hw, D) (the previous block's prompts are not part of its input)."""
    if callable(prompts):
        prompts = prompts(x[:, : 1 + n_patches])  # (N, P, D)
    return prompts.to(x.dtype)


def _cls_row(bias: Tensor) -> Tensor:
    """The [CLS] query row of a bias: (N, L) stays, (N, L, L) -> (N, L), (N, H, L, L) -> error."""
    if bias.dim() == 2:
        return bias
    if bias.dim() == 3:
        return bias[:, 0]
    raise ValueError("per-head biases are not supported on the [CLS]-only path")


class CLIP(nn.Module):
    """open_clip ViT model with vpg's extension points (configurable by LightningCLI as a class)."""

    def __init__(self, name: str, pretrained: str | None = None, frozen: bool = True,
                 force_quick_gelu: bool = False, cache_dir: str | None = None):
        """name: open_clip model name; pretrained: open_clip tag or local weights file.
        See :func:`vpg.clip.create_model` (same arguments)."""
        super().__init__()
        from .factory import build_open_clip  # the factory imports this module

        model, image_mean, image_std = build_open_clip(name, pretrained, force_quick_gelu=force_quick_gelu,
                                                       cache_dir=cache_dir)
        self.model = model
        self.name = name
        self.pretrained = pretrained
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        v = model.visual
        self.text_blocks: nn.ModuleList = model.transformer.resblocks
        # "resnet": open_clip ModifiedResNet (conv trunk + attention pool); "vit" otherwise.
        self.vision_kind: str = "resnet" if hasattr(v, "attnpool") else "vit"
        if self.vision_kind == "resnet":
            self.vision_blocks = nn.ModuleList()  # no transformer blocks to hook into
            self.patch_size = (32, 32)  # the trunk's output stride: one spatial position per 32 px
            self.image_size = (v.image_size,) * 2 if isinstance(v.image_size, int) else tuple(v.image_size)
            self.vision_width = v.attnpool.k_proj.in_features
            self.vision_heads = v.attnpool.num_heads
        else:
            self.vision_blocks: nn.ModuleList = v.transformer.resblocks
            self.patch_size: tuple[int, int] = tuple(v.patch_size)
            self.image_size: tuple[int, int] = tuple(v.image_size)
            self.vision_width: int = v.transformer.width
            self.vision_heads: int = self.vision_blocks[0].attn.heads
        self.text_width: int = model.transformer.width
        self.embed_dim: int = v.output_dim
        self.context_length: int = model.context_length
        if frozen:
            self.freeze()

    # ------------------------------------------------------------------ properties
    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale

    @property
    def num_vision_layers(self) -> int:
        return len(self.vision_blocks)

    @property
    def num_text_layers(self) -> int:
        return len(self.text_blocks)

    def grid_size(self, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
        h, w = image_hw or self.image_size
        return h // self.patch_size[0], w // self.patch_size[1]

    def freeze(self) -> CLIP:
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> CLIP:
        """As nn.Module.train, but a frozen ResNet tower's BatchNorm layers stay in eval mode:
        in train mode they would normalise with batch statistics and overwrite the running ones."""
        super().train(mode)
        if mode and self.vision_kind == "resnet":
            for module in self.model.visual.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
                        not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    # ------------------------------------------------------------------ image tower
    def _positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        pos = self.model.visual.positional_embedding  # (1 + h0*w0, D)
        h0, w0 = self.model.visual.grid_size
        if tuple(grid) == (h0, w0):
            return pos
        # Other input sizes: resample the patch position grid (bicubic), keep the [CLS] one.
        patch = pos[1:].reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)], dim=0)

    def image_tokens(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> input tokens (B, 1 + h*w, D) after ln_pre."""
        self._require_vit("image_tokens")
        v = self.model.visual
        x = v.conv1(images)  # (B, D, h, w)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(grid).to(x.dtype)
        return v.ln_pre(v.patch_dropout(x))

    def _project_image(self, x: Tensor) -> Tensor:
        v = self.model.visual
        return v.ln_post(x) @ v.proj if v.proj is not None else v.ln_post(x)

    def forward_image(
        self,
        images: Tensor,
        *,
        attn_bias: Mapping[int, Tensor] | None = None,
        extra_tokens: Mapping[int, Tensor | PromptGenerator] | None = None,
        inserts: Mapping[int, Insert] | None = None,
        hidden_layers: Sequence[int] = (),
        dense: str | None = None,
        expand_index: Tensor | None = None,
        attention_layers: Sequence[int] = (),
    ) -> VisionOutput:
        """Run the image tower with optional extensions (see the module docstring)."""
        if attention_layers:
            self._require_vit("attention_layers")
        if self.vision_kind == "resnet":
            unsupported = [name for name, value in (("attn_bias", attn_bias), ("extra_tokens", extra_tokens),
                                                    ("inserts", inserts), ("hidden_layers", hidden_layers))
                           if value] + (["expand_index"] if expand_index is not None else [])
            if unsupported:
                raise NotImplementedError(f"{self.name} has a ResNet image tower: {unsupported} need a ViT; "
                                          "ResNet towers support the image embedding and `dense` only")
            return self._forward_resnet(images, dense)
        attn_bias, extra_tokens, inserts = dict(attn_bias or {}), dict(extra_tokens or {}), dict(inserts or {})
        n_layers = self.num_vision_layers
        hidden_layers = sorted({self._check_layer(i, n_layers) for i in hidden_layers})
        attention_layers = {self._check_layer(i, n_layers) for i in attention_layers}
        for i in (*attn_bias, *extra_tokens, *inserts):
            self._check_layer(i, n_layers)
        if dense not in (None, "tokens", "values"):
            raise ValueError(f"dense must be None, 'tokens' or 'values', got {dense!r}")

        x = self.image_tokens(images)  # (B, 1 + hw, D)
        n_patches = x.shape[1] - 1

        # Rows stay per image until the first block that needs per-row input.
        per_row = [*attn_bias, *inserts, *(i for i, t in extra_tokens.items() if _per_sample_prompts(t))]
        first_per_row = min(per_row) if (expand_index is not None and per_row) else None
        if expand_index is not None and (first_per_row is None or attention_layers):
            # nothing per row, or attention maps asked for (kept simple: every block runs per row)
            x, expand_index, first_per_row = x[expand_index], None, None
        last = n_layers - 1
        # Only the [CLS] output of the last block is needed unless tokens are asked for.
        cls_only_last = (dense != "tokens" and last not in hidden_layers and last not in inserts
                         and last not in attention_layers)
        hidden: dict[int, Tensor] = {}
        attention: dict[int, Tensor] = {}
        dense_out = None
        for i, block in enumerate(self.vision_blocks):
            bias = attn_bias.get(i)
            row_prompts = i in extra_tokens and _per_sample_prompts(extra_tokens[i])
            cls_bias_only = bias is not None and bias.dim() == 2 and not row_prompts and i not in inserts
            if expand_index is not None and i == first_per_row and not cls_bias_only:
                x, expand_index = x[expand_index], None
            if i in extra_tokens:  # replace the previous prompt tokens (VPT-deep) or add the first ones
                prompts = _block_prompts(extra_tokens[i], x, n_patches)
                if prompts.dim() == 2:
                    prompts = prompts.expand(x.shape[0], -1, -1)  # (N, P, D) shared
                x = torch.cat([x[:, : 1 + n_patches], prompts], dim=1)
            if dense == "values" and i == last:
                dense_out = self._maskclip_values(block, x, n_patches, expand_index)
            if i == last and cls_only_last:
                row = _cls_row(bias) if bias is not None else None
                cls = _block_forward_cls(block, x, row, expand_index)  # (N, 1, D)
                return VisionOutput(pooled=self._project_image(cls[:, 0]), hidden=hidden, dense=dense_out)
            if expand_index is not None and i == first_per_row:
                # [CLS]-row bias on inputs identical across an image's rows: the patch rows do
                # not depend on the row, so run the block once per image and redo only [CLS].
                shared = _block_forward(block, x)  # (B, L, D)
                cls = _block_forward_cls(block, x, bias, expand_index)  # (N, 1, D)
                x, expand_index = torch.cat([cls, shared[expand_index, 1:]], dim=1), None
            else:
                if bias is not None and bias.dim() == 2:  # [CLS]-row bias -> (N, L, L) with zero rows
                    full = bias.new_zeros(bias.shape[0], bias.shape[1], bias.shape[1])
                    full[:, 0] = bias
                    bias = full
                if i in attention_layers:
                    x, attention[i] = _block_forward_with_attention(block, x, bias, inserts.get(i))
                else:
                    x = _block_forward(block, x, bias, inserts.get(i))
            if i in hidden_layers:  # always per output row
                hidden[i] = x if expand_index is None else x[expand_index]
        if expand_index is not None:  # no block needed per-row input (checked above); kept for clarity
            x = x[expand_index]
        if dense == "tokens":
            dense_out = self._project_image(x[:, 1 : 1 + n_patches])
        return VisionOutput(pooled=self._project_image(x[:, 0]), tokens=x, hidden=hidden, dense=dense_out,
                            attention=attention)

    def _maskclip_values(self, block: nn.Module, x: Tensor, n_patches: int, expand_index: Tensor | None) -> Tensor:
        """MaskCLIP dense features: the last block's value path (no q-k mixing), projected."""
        attn: Attention = block.attn
        v = attn.out_proj(attn.v_proj(block.ln_1(x[:, 1 : 1 + n_patches])))  # (B, hw, D)
        v = self._project_image(v)  # (B, hw, E)
        return v if expand_index is None else v[expand_index]

    def _attnpool_positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The attention pool's (1 + h*w, C) position embedding, its spatial part resampled
        (bicubic) when the input size differs from the configured one; the pooled slot is kept."""
        pos = self.model.visual.attnpool.positional_embedding  # (1 + s*s, C)
        side = round((pos.shape[0] - 1) ** 0.5)
        if tuple(grid) == (side, side):
            return pos
        spatial = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        spatial = F.interpolate(spatial.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([pos[:1], spatial.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)], dim=0)

    def _forward_resnet(self, images: Tensor, dense: str | None) -> VisionOutput:
        """ModifiedResNet: conv trunk, then open_clip's attention pool computed here (same maths:
        the query is the mean token, keys/values are [mean, spatial] + position embedding) so the
        value path can be read out per position and other input sizes work."""
        if dense not in (None, "tokens", "values"):
            raise ValueError(f"dense must be None, 'tokens' or 'values', got {dense!r}")
        v = self.model.visual
        pool = v.attnpool
        fmap = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))  # (B, C, h, w)
        grid = tuple(fmap.shape[-2:])
        x = fmap.flatten(2).transpose(1, 2)  # (B, hw, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1 + hw, C): [pooled slot, spatial]
        x = x + self._attnpool_positional_embedding(grid).to(x.dtype)
        n, length, width = x.shape
        heads = pool.num_heads

        def split(t: Tensor) -> Tensor:  # (B, L', C) -> (B, heads, L', C / heads)
            return t.view(n, t.shape[1], heads, width // heads).transpose(1, 2)

        queries = x if dense == "tokens" else x[:, :1]  # every position as query only when asked
        out = F.scaled_dot_product_attention(split(pool.q_proj(queries)), split(pool.k_proj(x)),
                                             split(pool.v_proj(x)))  # (B, heads, Lq, C / heads)
        out = pool.c_proj(out.transpose(1, 2).reshape(n, queries.shape[1], width))  # (B, Lq, E)
        dense_out = None
        if dense == "values":  # MaskCLIP: no query-key mixing, each position's own value, projected
            dense_out = pool.c_proj(pool.v_proj(x[:, 1:]))  # (B, hw, E)
        elif dense == "tokens":
            dense_out = out[:, 1:]  # (B, hw, E)
        return VisionOutput(pooled=out[:, 0], dense=dense_out)

    def _require_vit(self, what: str) -> None:
        if self.vision_kind != "vit":
            raise NotImplementedError(f"{what} needs a ViT image tower; {self.name} has a ResNet one")

    @staticmethod
    def _check_layer(i: int, n: int) -> int:
        if not 0 <= i < n:
            raise IndexError(f"block index {i} out of range for a {n}-block tower (0-based)")
        return i

    def encode_image(self, images: Tensor, normalize: bool = False, **extensions) -> Tensor:
        """Image embedding (N, E); ``extensions`` are :meth:`forward_image` keywords."""
        feats = self.forward_image(images, **extensions).pooled
        return F.normalize(feats, dim=-1) if normalize else feats

    def decompose_image_cls(self, images: Tensor, *, attn_bias: Mapping[int, Tensor] | None = None,
                            extra_tokens: Mapping[int, Tensor | PromptGenerator] | None = None,
                            inserts: Mapping[int, Insert] | None = None) -> CLSDecomposition:
        """Split the image embedding into embedding + per-block per-head attention + MLP parts.

        LayerNorm ln_post is linear once its scale σ (of the final [CLS] token) is fixed:
        LN(Σc) = Σ γ(c - mean c)/σ + β, so each residual contribution is mapped through
        γ(·)/σ @ proj and the parts sum to the real embedding (up to float error).
        """
        self._require_vit("decompose_image_cls")
        attn_bias, extra_tokens, inserts = dict(attn_bias or {}), dict(extra_tokens or {}), dict(inserts or {})
        x = self.image_tokens(images)
        n, layers, heads = x.shape[0], self.num_vision_layers, self.vision_heads
        n_patches = x.shape[1] - 1
        d = self.vision_width
        embedding = x[:, 0]
        attn_parts = x.new_zeros(n, layers, heads, d)
        mlp_parts = x.new_zeros(n, layers, d)
        insert_parts = x.new_zeros(n, layers, d)
        for i, block in enumerate(self.vision_blocks):
            if i in extra_tokens:
                prompts = _block_prompts(extra_tokens[i], x, n_patches)
                prompts = prompts.expand(n, -1, -1) if prompts.dim() == 2 else prompts
                x = torch.cat([x[:, : 1 + n_patches], prompts], dim=1)
            bias = attn_bias.get(i)
            normed = block.ln_1(x)
            heads_out = block.attn.cls_head_outputs(normed, _cls_row(bias) if bias is not None else None)
            attn_parts[:, i] = block.ls_1(block.attn.head_contributions(heads_out))
            if bias is not None and bias.dim() == 2:
                full = bias.new_zeros(bias.shape[0], bias.shape[1], bias.shape[1])
                full[:, 0] = bias
                bias = full
            x = x + block.ls_1(block.attn.attend(normed, bias=bias))
            if i in inserts:
                before = x[:, 0]
                x = inserts[i](x)
                insert_parts[:, i] = x[:, 0] - before
            delta = block.ls_2(block.mlp(block.ln_2(x)))
            mlp_parts[:, i] = delta[:, 0]
            x = x + delta
        ln = self.model.visual.ln_post
        final = x[:, 0]  # (N, D)
        sigma = torch.sqrt(final.var(dim=-1, unbiased=False, keepdim=True) + ln.eps)  # (N, 1)
        proj = self.model.visual.proj

        def through_ln(c: Tensor) -> Tensor:  # linear part of ln_post + proj, per contribution
            c = (c - c.mean(dim=-1, keepdim=True)) * ln.weight
            c = c / sigma.view(n, *([1] * (c.dim() - 2)), 1)
            return c @ proj if proj is not None else c

        emb = through_ln(embedding) + (ln.bias @ proj if proj is not None else ln.bias)
        return CLSDecomposition(embedding=emb, attn_heads=through_ln(attn_parts), mlp=through_ln(mlp_parts),
                                inserts=through_ln(insert_parts))

    # ------------------------------------------------------------------ text tower
    def token_embeddings(self, tokens: Tensor) -> Tensor:
        """tokens (N, L) -> token embeddings (N, L, W) (no position embedding)."""
        return self.model.token_embedding(tokens)

    def eot_index(self, tokens: Tensor) -> Tensor:
        """Position of the end-of-text token: (N,) long (open_clip's 'argmax' / 'eos' pooling)."""
        pool = self.model.text_pool_type
        if pool == "argmax":
            return tokens.argmax(dim=-1)
        if pool == "eos":
            return (tokens == self.model.text_eos_id).int().argmax(dim=-1)
        if pool == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        raise NotImplementedError(f"text pool type {pool!r} is not supported by vpg's core")

    def splice_context(self, tokens: Tensor, context: Tensor, position: str = "end") -> tuple[Tensor, Tensor]:
        """CoOp-style prompts: learnable context vectors around each class name.

        tokens: (C, L) ids of "<name>." (SOT, name, '.', EOT, pad); context: (M, W) shared or
        (C, M, W) class-specific. position: "end" -> [SOT][ctx][name.][EOT],
        "middle" -> [SOT][ctx[:M/2]][name][ctx[M/2:]][.][EOT], "front" -> [SOT][name][ctx][.][EOT].
        Returns (embeddings (C, L, W), eot_index (C,)); the sequence is cut at L.
        """
        emb = self.token_embeddings(tokens)  # (C, L, W)
        c, length, _ = emb.shape
        m = context.shape[-2]
        ctx = context.to(emb.dtype).expand(c, m, -1) if context.dim() == 2 else context.to(emb.dtype)
        eot = self.eot_index(tokens)  # (C,)
        if eot.max() + m >= length:
            raise ValueError(f"{m} context vectors do not fit the context length {length}")
        if position == "end":
            out = torch.cat([emb[:, :1], ctx, emb[:, 1 : length - m]], dim=1)
            return out, eot + m
        if position not in ("middle", "front"):
            raise ValueError(f"position must be 'end', 'middle' or 'front', got {position!r}")
        rows = []
        for j in range(c):  # name lengths differ per class; C is small and this runs once per step
            name_end = int(eot[j]) - 1  # index of the '.' (last token before EOT)
            sot, name, tail = emb[j, :1], emb[j, 1:name_end], emb[j, name_end : length - m]
            if position == "middle":
                half = m // 2
                rows.append(torch.cat([sot, ctx[j, :half], name, ctx[j, half:], tail]))
            else:
                rows.append(torch.cat([sot, name, ctx[j], tail]))
        return torch.stack(rows), eot + m

    def forward_text(self, tokens: Tensor | None = None, *, embeddings: Tensor | None = None,
                     eot_index: Tensor | None = None, hidden_layers: Sequence[int] = ()) -> TextOutput:
        """Text tower from ids (N, L) or from token embeddings (N, L, W) + their EOT positions."""
        m = self.model
        if embeddings is None:
            if tokens is None:
                raise ValueError("forward_text needs tokens or embeddings")
            embeddings, eot_index = self.token_embeddings(tokens), self.eot_index(tokens)
        elif eot_index is None:
            raise ValueError("embeddings need their eot_index")
        hidden_layers = {self._check_layer(i, self.num_text_layers) for i in hidden_layers}
        length = embeddings.shape[1]
        x = embeddings + m.positional_embedding[:length].to(embeddings.dtype)  # (N, L, W)
        hidden = {}
        for i, block in enumerate(self.text_blocks):
            x = _block_forward(block, x, causal=True)
            if i in hidden_layers:
                hidden[i] = x
        x = m.ln_final(x)
        proj = m.text_projection
        if isinstance(proj, nn.Linear):
            tokens_out = proj(x)
        else:
            tokens_out = x @ proj if proj is not None else x  # (N, L, E)
        rows = torch.arange(x.shape[0], device=x.device)
        positions = torch.arange(length, device=x.device)
        return TextOutput(pooled=tokens_out[rows, eot_index], tokens=tokens_out,
                          padding_mask=positions[None] > eot_index[:, None], eot_index=eot_index, hidden=hidden)

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        feats = self.forward_text(tokens).pooled
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised image and text features and the logit scale (exp'd), as CLIP training needs."""
        return self.encode_image(images, normalize=True), self.encode_text(tokens, normalize=True), \
            self.logit_scale.exp()

    # ------------------------------------------------------------------ export
    def open_clip_state_dict(self) -> dict[str, Tensor]:
        """State dict in open_clip's own layout (q/k/v packed back), loadable by open_clip."""
        out: dict[str, Tensor] = {}
        packed: dict[str, dict[str, Tensor]] = {}
        for key, value in self.model.state_dict().items():
            for proj in ("q_proj", "k_proj", "v_proj"):
                tag = f".attn.{proj}."
                if tag in key:
                    prefix, kind = key.split(tag)
                    packed.setdefault(f"{prefix}.attn.in_proj_{kind}", {})[proj] = value
                    break
            else:
                out[key] = value
        for key, parts in packed.items():
            out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
        return out
