"""Heatmaps of a text in an image from CLIP alone (no training): the CLIP rows of WSG papers.

Every map is computed on the CLIP core's extension points, batched over (image, text) rows:

- ``similarity``: VPT-WSG's similarity map S = reshape(cos(e_T, e_I)): the text embedding
  against every patch embedding projected into the joint space (``dense="tokens"``: ln_post +
  proj of the last block's patch tokens), without [CLS].
- ``maskclip``: the same cosine on MaskCLIP's dense features (``dense="values"``: the last
  block's value path, no query-key mixing).
- ``gae``: Chefer et al.'s Generic Attention-model Explainability on the last block, as WWbL
  uses it for its pseudo-labels: R = I + mean_heads clamp(dA ⊙ A, 0) with A the last block's
  attention probabilities and dA the gradient of the image-text score with respect to A;
  the map is R[CLS, patches]. With one block the identity adds nothing off the diagonal, so
  the map is mean_heads clamp(dA ⊙ A, 0)[CLS, 1:].
- ``gradcam``: Grad-CAM on the input tokens of the last block (the last block's output patch
  tokens do not reach the [CLS] embedding, so their gradient is zero): channel weights = mean
  gradient over the patches, map = relu(Σ_c w_c x_c).

The gradient maps differentiate a *copy* of the input that requires grad and ask autograd for
the gradient with respect to the attention / tokens only (``torch.autograd.grad``): nothing is
accumulated into CLIP's parameters, CLIP is not changed, and the caller's graph (e.g. a
network being trained) is untouched. They also work inside Lightning's ``inference_mode``
evaluation loops (gradients are switched back on locally).

All functions return raw maps on the patch grid (N, h, w); :func:`to_image` resizes
(bilinear) and min-max normalises them per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vpg.clip import CLIP

MAP_KINDS = ("similarity", "gae", "gradcam", "maskclip")


def _grid(clip: CLIP, images: Tensor) -> tuple[int, int]:
    return clip.grid_size(tuple(images.shape[-2:]))


def _check_rows(images: Tensor, text_features: Tensor) -> None:
    if images.dim() != 4 or text_features.dim() != 2 or len(images) != len(text_features):
        raise ValueError(f"expected images (N, 3, H, W) and text features (N, E) with the same N, got "
                         f"{tuple(images.shape)} and {tuple(text_features.shape)}")


def dense_cosine_map(clip: CLIP, images: Tensor, text_features: Tensor, dense: str = "tokens") -> Tensor:
    """cos(e_T, e_I) per patch: images (N, 3, H, W), text features (N, E) -> (N, h, w) in [-1, 1].

    ``dense="tokens"`` is the similarity map, ``"values"`` MaskCLIP's.
    """
    _check_rows(images, text_features)
    patches = F.normalize(clip.forward_image(images, dense=dense).dense, dim=-1)  # (N, hw, E)
    text = F.normalize(text_features.to(patches.dtype), dim=-1)  # (N, E)
    cos = torch.einsum("npe,ne->np", patches, text)  # (N, hw)
    return cos.view(len(images), *_grid(clip, images))  # (N, h, w)


def similarity_map(clip: CLIP, images: Tensor, text_features: Tensor) -> Tensor:
    """VPT-WSG's prompt: S = reshape(cos(e_T, e_I)) on the patch grid, (N, h, w)."""
    return dense_cosine_map(clip, images, text_features, "tokens")


def maskclip_map(clip: CLIP, images: Tensor, text_features: Tensor) -> Tensor:
    """MaskCLIP: cosine of the text with the last block's value-path features, (N, h, w)."""
    return dense_cosine_map(clip, images, text_features, "values")


def _score_and_inputs(clip: CLIP, images: Tensor, text_features: Tensor, **extensions):
    """Forward a grad-requiring copy of the images; score = Σ_n cos(image_n, text_n)."""
    images = images.detach().clone().requires_grad_(True)  # a copy: the caller's tensor is untouched
    text = F.normalize(text_features.detach().clone().float(), dim=-1)  # (N, E), a normal (non-inference) tensor
    out = clip.forward_image(images, **extensions)
    # Rows do not interact in the image tower, so d(sum)/d(row n's input) = d(score_n)/d(...).
    score = (F.normalize(out.pooled.float(), dim=-1) * text).sum()
    return score, out


def gae_map(clip: CLIP, images: Tensor, text_features: Tensor) -> Tensor:
    """Chefer et al.'s GAE on the last block: R[CLS, patches] on the patch grid, (N, h, w), >= 0."""
    _check_rows(images, text_features)
    last = clip.num_vision_layers - 1
    with torch.inference_mode(False), torch.enable_grad():
        score, out = _score_and_inputs(clip, images, text_features, attention_layers=[last])
        attn = out.attention[last]  # (N, H, L, L)
        (grad,) = torch.autograd.grad(score, attn)
        cam = (grad * attn).clamp(min=0).mean(dim=1)  # (N, L, L) mean over heads of clamp(dA ⊙ A, 0)
        relevance = torch.eye(cam.shape[-1], dtype=cam.dtype, device=cam.device) + cam  # R = I + cam
        row = relevance[:, 0, 1:].detach()  # (N, hw): [CLS] row, patch columns (the identity is 0 there)
    n_patches = _grid(clip, images)
    return row[:, : n_patches[0] * n_patches[1]].view(len(images), *n_patches).to(images.dtype)


def gradcam_map(clip: CLIP, images: Tensor, text_features: Tensor) -> Tensor:
    """Grad-CAM on the last block's input tokens, (N, h, w), >= 0."""
    _check_rows(images, text_features)
    if clip.num_vision_layers < 2:
        raise ValueError("gradcam needs at least 2 vision blocks (it reads the last block's input)")
    before_last = clip.num_vision_layers - 2
    grid = _grid(clip, images)
    n_patches = grid[0] * grid[1]
    with torch.inference_mode(False), torch.enable_grad():
        score, out = _score_and_inputs(clip, images, text_features, hidden_layers=[before_last])
        tokens = out.hidden[before_last]  # (N, L, D) input of the last block
        (grad,) = torch.autograd.grad(score, tokens)
        patches, patch_grad = tokens[:, 1 : 1 + n_patches].detach(), grad[:, 1 : 1 + n_patches]  # (N, hw, D)
        weights = patch_grad.mean(dim=1, keepdim=True)  # (N, 1, D) channel importance
        cam = (weights * patches).sum(-1).clamp(min=0)  # (N, hw)
    return cam.view(len(images), *grid).to(images.dtype)


_MAPS = {"similarity": similarity_map, "gae": gae_map, "gradcam": gradcam_map, "maskclip": maskclip_map}


def clip_map(kind: str, clip: CLIP, images: Tensor, text_features: Tensor) -> Tensor:
    """Raw map of ``kind`` (one of :data:`MAP_KINDS`) on the patch grid, (N, h, w)."""
    if kind not in _MAPS:
        raise ValueError(f"unknown CLIP map {kind!r}; choose one of {MAP_KINDS}")
    return _MAPS[kind](clip, images, text_features)


def minmax(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-row min-max normalisation of (N, ...) maps to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)  # (N, 1)
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(maps)


def to_image(maps: Tensor, size: tuple[int, int], normalize: bool = True) -> Tensor:
    """(N, h, w) grid maps -> (N, H, W): bilinear resize, then min-max normalised per row."""
    out = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return minmax(out) if normalize else out


__all__ = ["MAP_KINDS", "clip_map", "dense_cosine_map", "gae_map", "gradcam_map", "maskclip_map", "minmax",
           "similarity_map", "to_image"]
