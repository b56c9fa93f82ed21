"""FALIP (Zhuang et al., ECCV 2024): foveal attention as a training-free visual prompt for CLIP.

An additive bias in the ViT's self-attention (``vpg.modules.foveal``) makes the [CLS] token
attend to a box without editing the image. Three LightningModules share one prompting core:

- :class:`FALIPRec`: referring expression comprehension by ranking candidate boxes
  (gold boxes or detections) with S_i = T("a photo of " + expression) . V(x, M_i);
  options: subtract (ReCLIP's "P"), ensembles of prompts ("E"), unleashed heads (Eq. 5-6);
- :class:`FALIPClassifier`: classification with one object box per image (paper Table 2);
- :class:`FALIPPointCloud`: PointCLIP-style 6-view depth maps, one mask per view (Table 3).

Prompts (``prompt``, joined with "+"): "none" (the full image), "crop", "redcircle", "blur",
"falip" ("fa"), e.g. "redcircle+blur" or "redcircle+falip". Image edits are the baselines of
``vpg.modules.visual_prompts``; every prompt runs all boxes of a batch in one encoder call.
None of these modules has trainable parameters, so ``vpg fit`` only validates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vpg.clip import CLIP
from vpg.data.pointcloud import depth_to_rgb, project_depth_maps
from vpg.data.transforms import clip_transform
from vpg.modules.foveal import FORMS, foveal_mask, mask_boxes, resolve_layers
from vpg.modules.visual_prompts import edit_images

from .base import ClassifierEval, GroundingEval, VPGModule

log = logging.getLogger(__name__)

# prompt part -> image edit (None: no edit); "falip"/"fa" switch the attention mask on
_PROMPT_PARTS = {"none": None, "crop": "crop", "redcircle": "circle", "circle": "circle", "blur": "blur",
                 "falip": "falip", "fa": "falip"}
AUTHORS_LAYERS = [-4, -3, -2, -1]  # the authors' release: the last 4 of ViT-B/16's 12 blocks


def parse_prompt(prompt: str) -> tuple[tuple[str, ...], bool]:
    """"redcircle+falip" -> (("circle",), True): image edits and whether the foveal mask is on."""
    parts = [p.strip().lower() for p in prompt.split("+") if p.strip()]
    unknown = [p for p in parts if p not in _PROMPT_PARTS]
    if unknown or not parts:
        raise ValueError(f"unknown visual prompt {prompt!r}; combine {sorted(_PROMPT_PARTS)} with '+'")
    kinds = [_PROMPT_PARTS[p] for p in parts]
    edits = tuple(dict.fromkeys(k for k in kinds if k not in (None, "falip")))
    return edits, "falip" in kinds


class PrefixTokenizer:
    """The CLIP tokenizer with a fixed text prefix ("a photo of " + expression, as the authors do)."""

    def __init__(self, tokenizer, prefix: str):
        self.tokenizer, self.prefix = tokenizer, prefix

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer([self.prefix + t for t in texts], context_length=context_length)


class _FovealPrompting(VPGModule):
    """Shared core: region features of (image, box) pairs under a visual prompt.

    Args:
        clip: the frozen CLIP core.
        prompt: visual prompt (see the module docstring).
        form: foveal mask form, "a" ([CLS] row, the paper's best), "b" (all rows), "c" (diagonal).
        alpha, sigma, eps: mask strength, Gaussian width (in tokens) and normaliser (``foveal_mask``).
        layers: blocks that get the mask: indices (0-based, negative from the end), "all",
            "last_third" or "last:K". Default: the authors' last 4 blocks.
        letterbox: keep the aspect ratio (pad) instead of squashing to a square (the authors squash).
        blur_sigma: Gaussian blur of the Blur prompt as a fraction of the input side.
        circle_thickness: RedCircle ring width in input pixels; None = 2 px per 224 px (at least 1).
        unleash: Eq. 5-6: in ``unleash_layers`` every attention head's [CLS] contribution G'
            (with the prompt) is pushed away from G (plain image): G' -> G' + (G' - G).
        unleash_layers: as ``layers``; default the same blocks as ``layers``.
    """

    def __init__(self, clip: CLIP, prompt: str = "falip", form: str = "a", alpha: float = 0.2,
                 sigma: float = 100.0, eps: float = 1e-6, layers: str | list[int] = AUTHORS_LAYERS,
                 letterbox: bool = False, blur_sigma: float = 0.15, circle_thickness: float | None = None,
                 unleash: bool = False, unleash_layers: str | list[int] | None = None):
        super().__init__(clip)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.prompt = prompt
        for p in [prompt] if isinstance(prompt, str) else prompt:
            parse_prompt(p)  # fail at construction, not at the first batch
        self.form, self.alpha, self.sigma, self.eps = form, float(alpha), float(sigma), float(eps)
        self.layers = resolve_layers(layers, clip.num_vision_layers)
        self.unleash = unleash
        self.unleash_layers = resolve_layers(unleash_layers if unleash_layers is not None else layers,
                                             clip.num_vision_layers)
        self.letterbox = letterbox
        side = clip.image_size[0]
        self.blur_sigma_px = float(blur_sigma) * side
        self.circle_thickness = float(circle_thickness) if circle_thickness is not None else max(1.0, 2 * side / 224)

    def image_transform(self, train: bool):
        return clip_transform(self.clip, letterbox=self.letterbox)

    def foveal_bias(self, boxes: Tensor, image_hw: tuple[int, int]) -> dict[int, Tensor]:
        """{block: bias} for (N, 4) boxes; one tensor shared by every masked block."""
        mask = foveal_mask(boxes, self.clip.grid_size(image_hw), image_hw, self.alpha, self.sigma,
                           self.form, self.eps)  # (N, L) form a, (N, L, L) forms b / c
        return dict.fromkeys(self.layers, mask)

    def region_features(self, images: Tensor, boxes: Tensor, index: Tensor, prompt: str) -> Tensor:
        """Normalised image embeddings of each (image, box) under ``prompt``: (N, E).

        images: (B, 3, H, W) model inputs; boxes: (N, 4) xyxy input pixels; index: (N,) image
        row of each box. One encoder call for all N boxes. With the foveal mask alone the
        images are not copied: the core runs the blocks before the first masked one once per
        image (``expand_index``).
        """
        edits, foveal = parse_prompt(prompt)
        image_hw = tuple(images.shape[-2:])
        bias = self.foveal_bias(boxes, image_hw) if foveal else None
        if edits:
            inputs = edit_images(images, boxes, index, edits, mean=self.clip.image_mean, std=self.clip.image_std,
                                 blur_sigma=self.blur_sigma_px, circle_thickness=self.circle_thickness)  # (N, 3, H, W)
            expand = None
        else:
            inputs, expand = images, index
            if len(index) == len(images) and torch.equal(index, torch.arange(len(index), device=index.device)):
                expand = None  # one box per image, in order: nothing to share, skip the expansion
        if self.unleash and (edits or foveal):
            feats = self._unleashed(inputs if edits else images[index], bias, images, index)  # (N, E)
        elif bias is None and not edits:  # "none": one forward per image, every box gets it
            feats = self.clip.encode_image(images)[index]  # (N, E)
        else:
            feats = self.clip.encode_image(inputs, attn_bias=bias, expand_index=expand)  # (N, E)
        return F.normalize(feats, dim=-1)

    def _unleashed(self, prompted: Tensor, bias: dict[int, Tensor] | None, plain: Tensor, index: Tensor) -> Tensor:
        """Eq. 5-6 on the [CLS] decomposition: prompted (N, 3, H, W), plain (B, 3, H, W) -> (N, E)."""
        with_prompt = self.clip.decompose_image_cls(prompted, attn_bias=bias)
        without = self.clip.decompose_image_cls(plain)
        layers = self.unleash_layers
        heads_prompted = with_prompt.attn_heads[:, layers]  # (N, |layers|, H, E): G'
        heads_plain = without.attn_heads[index][:, layers]  # (N, |layers|, H, E): G
        return with_prompt.total() + (heads_prompted - heads_plain).sum((1, 2))  # (N, E)


# ---------------------------------------------------------------------------------------------- REC


def pick_with_random_ties(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """argmax over the last dim, ties broken uniformly at random (the "none" prompt ties all).

    scores: (B, K) with -inf at invalid candidates -> (B,) long.
    """
    best = scores.amax(dim=-1, keepdim=True)  # (B, 1)
    noise = torch.rand(scores.shape, generator=generator, device=scores.device)  # (B, K)
    return torch.where(scores == best, noise, torch.full_like(noise, -1.0)).argmax(dim=-1)


def negative_weights(images: Tensor, has_text: Tensor, owner: Tensor, bank_text: Tensor, num_negatives: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """Uniform weights over ``num_negatives`` negatives per image, drawn without replacement.

    images: (c,) image rows; has_text: (U, D) bool, image u has distinct text d among its own
    expressions; owner: (T,) image of each bank entry; bank_text: (T,) its distinct-text id.
    An entry is a negative for u unless u owns it or its text is one of u's expressions.
    Returns (c, T), each row summing to 1 over its draws (all allowed entries if fewer than Q).
    """
    excluded = has_text[images][:, bank_text] | (owner[None, :] == images[:, None])  # (c, T)
    keys = torch.rand(excluded.shape, generator=generator).masked_fill(excluded, -1.0)  # (c, T)
    picked = keys.topk(min(num_negatives, keys.shape[1]), dim=1)  # random keys: a uniform draw
    allowed = (picked.values >= 0).float()  # (c, Q)
    weights = torch.zeros(excluded.shape).scatter_(1, picked.indices, allowed)  # (c, T)
    return weights / weights.sum(1, keepdim=True).clamp_min(1)


def subtract_negatives(text: Tensor, negatives_mean: Tensor, region: Tensor) -> Tensor:
    """ReCLIP's subtract: S_i - mean_q T(t_q) . V_i, computed as (T - mean_q T(t_q)) . V_i.

    text (B, E), negatives_mean (B, E), region (B, K, E), all normalised rows -> (B, K).
    """
    return torch.einsum("bke,be->bk", region, text - negatives_mean)


class FALIPRec(GroundingEval, _FovealPrompting):
    """Zero-shot REC: rank the candidate boxes of each (image, expression) sample.

    Batch (REF contract): image (B,3,S,S), candidates (B,K,4) xyxy input pixels, candidate_mask
    (B,K), gold (B,4), text (B,ctx) from this module's tokenizer ("a photo of " + expression),
    sentences, image_id, orig_size (B,2) (w,h), scale (B,2) (input = original * scale).

    Args (besides :class:`_FovealPrompting`'s):
        prompt: one prompt, or a list = the ensemble E: sum over prompts of the softmax (at
            CLIP's logit scale) of the candidate scores.
        text_prefix: prepended to every expression.
        subtract: ReCLIP's "P": k = argmax_i [S_i - mean_q T(t_q) . V(x, M_i)], with ``num_negatives``
            captions drawn per image (seeded by ``negatives_seed``) from the expressions of the
            other images of the evaluated split that differ from this image's own expressions.
        iou_threshold: Acc@t.
        log_images: samples drawn to TensorBoard from the first batch of each split (0: none).
        prediction_dir: where ``vpg predict`` writes JSON + PNG (default <log_dir>/predictions).
        seed: tie-breaking (only the "none" prompt has ties).
    """

    def __init__(self, clip: CLIP, prompt: str | list[str] = "falip", form: str = "a", alpha: float = 0.2,
                 sigma: float = 100.0, eps: float = 1e-6, layers: str | list[int] = AUTHORS_LAYERS,
                 letterbox: bool = False, blur_sigma: float = 0.15, circle_thickness: float | None = None,
                 unleash: bool = False, unleash_layers: str | list[int] | None = None,
                 text_prefix: str = "a photo of ", subtract: bool = False, num_negatives: int = 500,
                 negatives_seed: int = 0, iou_threshold: float = 0.5, log_images: int = 8,
                 prediction_dir: str | None = None, seed: int = 0):
        super().__init__(clip, prompt, form, alpha, sigma, eps, layers, letterbox, blur_sigma, circle_thickness,
                         unleash, unleash_layers)
        self.save_hyperparameters(ignore=["clip"])
        self.prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not self.prompts:
            raise ValueError("prompt: give at least one visual prompt")
        self.tokenizer = PrefixTokenizer(self.tokenizer, text_prefix)
        self.subtract, self.num_negatives, self.negatives_seed = subtract, int(num_negatives), negatives_seed
        self.iou_threshold, self.log_images, self.seed = iou_threshold, log_images, seed
        self.prediction_dir = prediction_dir
        self.metrics = torch.nn.ModuleDict()
        self._negative_banks: dict[str, tuple[dict[str, int], Tensor]] = {}

    # -- scoring
    @staticmethod
    def unique_images(batch: dict) -> tuple[Tensor, Tensor]:
        """Samples of one image (one per expression) share their candidates' features.

        Returns (first (U,) row of each distinct image, inverse (B,) its position in ``first``).
        Falls back to no sharing when rows with one image_id differ in pixels or candidates.
        """
        ids = list(batch["image_id"])
        first_of: dict[str, int] = {}
        for row, image_id in enumerate(ids):  # B strings, not boxes
            first_of.setdefault(image_id, row)
        order = {image_id: u for u, image_id in enumerate(first_of)}
        first = torch.tensor(list(first_of.values()), dtype=torch.long)  # (U,)
        inverse = torch.tensor([order[i] for i in ids], dtype=torch.long)  # (B,)
        device = batch["image"].device
        first, inverse = first.to(device), inverse.to(device)
        same = all(torch.equal(batch[k][first][inverse], batch[k]) for k in ("image", "candidates", "candidate_mask"))
        if not same:
            everyone = torch.arange(len(ids), device=device)
            return everyone, everyone
        return first, inverse

    def candidate_features(self, images: Tensor, candidates: Tensor, mask: Tensor, prompt: str) -> Tensor:
        """(U, 3, S, S), (U, K, 4), (U, K) -> (U, K, E) normalised features, zero at padding."""
        owner, slot = mask.nonzero(as_tuple=True)  # (N,), (N,): image row and candidate slot of each box
        feats = self.region_features(images, candidates[owner, slot], owner, prompt)  # (N, E)
        out = feats.new_zeros(*mask.shape, feats.shape[-1])  # (U, K, E)
        out[owner, slot] = feats
        return out

    def score(self, batch: dict, split: str | None = None) -> Tensor:
        """Candidate scores (B, K), -inf at padding; an ensemble gives summed softmax scores."""
        first, inverse = self.unique_images(batch)
        images, candidates = batch["image"][first], batch["candidates"][first]  # (U, 3, S, S), (U, K, 4)
        mask = batch["candidate_mask"][first].bool()  # (U, K)
        text = F.normalize(self.clip.encode_text(batch["text"]), dim=-1)  # (B, E)
        negatives = self.negatives_mean(batch["image_id"], split) if self.subtract else None  # (B, E)
        valid = batch["candidate_mask"].bool()  # (B, K)
        total = None
        for prompt in self.prompts:  # a handful of prompts, each one batched forward
            region = self.candidate_features(images, candidates, mask, prompt)[inverse]  # (B, K, E)
            if negatives is not None:
                scores = subtract_negatives(text, negatives.to(text), region)  # (B, K)
            else:
                scores = torch.einsum("bke,be->bk", region, text)  # (B, K) cosine
            scores = scores.masked_fill(~valid, float("-inf"))
            if len(self.prompts) == 1:
                return scores
            probs = (self.clip.logit_scale.exp() * scores).softmax(dim=-1)  # (B, K)
            total = probs if total is None else total + probs
        return total.masked_fill(~valid, float("-inf"))

    def forward(self, batch: dict, split: str | None = None, generator: torch.Generator | None = None) -> dict:
        scores = self.score(batch, split)  # (B, K)
        choice = pick_with_random_ties(scores, generator)  # (B,)
        rows = torch.arange(scores.shape[0], device=scores.device)
        return {"scores": scores, "index": choice, "box": batch["candidates"][rows, choice]}  # box (B, 4)

    # -- subtract ("P"): one bank of negative captions per evaluated split
    @torch.no_grad()
    def build_negative_bank(self, sentences: Sequence[Sequence[str]], image_ids: Sequence[str],
                            chunk: int = 256) -> tuple[dict[str, int], Tensor]:
        """Mean normalised text feature of ``num_negatives`` negatives per image.

        sentences[r], image_ids[r]: the expressions and image of dataset row r. A negative for
        image u is an expression of another image whose text is none of u's own expressions.
        Returns ({image_id: row}, (U, E)). Text features are computed once per distinct text.
        """
        texts = [s for sents in sentences for s in sents]  # bank entries
        owners = [i for sents, i in zip(sentences, image_ids) for _ in sents]
        image_row: dict[str, int] = {}
        owner = torch.tensor([image_row.setdefault(i, len(image_row)) for i in owners], dtype=torch.long)  # (T,)
        for i in image_ids:
            image_row.setdefault(i, len(image_row))
        text_id: dict[str, int] = {}
        bank_text = torch.tensor([text_id.setdefault(t, len(text_id)) for t in texts], dtype=torch.long)  # (T,)
        distinct = list(text_id)
        feats = torch.cat([F.normalize(self.clip.encode_text(self.tokenizer(distinct[i : i + 512]).to(self.device)), dim=-1)
                           for i in range(0, len(distinct), 512)])  # (D, E)
        bank = feats[bank_text.to(feats.device)]  # (T, E)
        num_images, num_texts = len(image_row), len(distinct)
        has_text = torch.zeros(num_images, num_texts, dtype=torch.bool)  # (U, D): u's own expressions
        has_text[owner, bank_text] = True
        generator = torch.Generator().manual_seed(self.negatives_seed)
        means = []
        for start in range(0, num_images, chunk):  # chunks of images bound the (chunk, T) memory
            rows = torch.arange(start, min(start + chunk, num_images))  # (c,)
            weights = negative_weights(rows, has_text, owner, bank_text, self.num_negatives, generator)  # (c, T)
            means.append(weights.to(bank) @ bank)  # (c, E)
        return image_row, torch.cat(means)  # (U, E)

    def negatives_mean(self, image_ids: Sequence[str], split: str | None) -> Tensor:
        split = split or "predict"
        if split not in self._negative_banks:
            dm = self.trainer.datamodule
            rows = dm.load(split)
            self._negative_banks[split] = self.build_negative_bank(rows["sentences"], [str(i) for i in rows["image_id"]])
            log.info("subtract: negatives bank for split %s built", split)
        lookup, means = self._negative_banks[split]
        return means[torch.tensor([lookup[str(i)] for i in image_ids], device=means.device)]  # (B, E)

    # -- Lightning
    def setup(self, stage: str) -> None:
        self.setup_grounding()

    def _generator(self, batch_idx: int, dataloader_idx: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * dataloader_idx + batch_idx)

    def _eval_step(self, batch: dict, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        split = self.split_name(stage, dataloader_idx)
        out = self(batch, split, self._generator(batch_idx, dataloader_idx))
        self.log_grounding(out["box"], batch["gold"], stage, split)
        if batch_idx == 0 and self.log_images:
            self._log_pictures(batch, out, f"{stage}/{split}")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        split = self.split_name("test", dataloader_idx) if self.subtract else None
        out = self(batch, split, self._generator(batch_idx, dataloader_idx))
        results = prediction_records(batch, out)
        target = self.prediction_path()
        write_predictions(results, batch, out, target, first_index=batch_idx * len(results))
        return results

    def _log_pictures(self, batch: dict, out: dict, tag: str) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        from vpg.utils.visualize import to_chw_tensor

        picture = prediction_picture(batch, out, self.clip.image_mean, self.clip.image_std, self.log_images)
        experiment.add_image(tag, to_chw_tensor(picture), self.global_step)


# -- pictures and prediction files




def prediction_picture(batch: dict, out: dict, mean, std, count: int = 8, size: int = 192):
    """Grid: input image, candidates (grey), gold (green), prediction (red), expression below."""
    from vpg.utils.visualize import GOLD, OTHER, PRED, caption_below, denormalise, draw_boxes, grid

    tiles = []
    for b in range(min(count, len(batch["image"]))):  # a few pictures for a human, not compute
        image = denormalise(batch["image"][b], mean, std)
        factor = size / image.width
        image = image.resize((size, round(image.height * factor)))
        valid = batch["candidate_mask"][b].bool()
        boxes = (batch["candidates"][b][valid] * factor).tolist()
        drawn = [*boxes]
        colours = [OTHER] * len(boxes)
        if "gold" in batch:
            drawn.append((batch["gold"][b] * factor).tolist())
            colours.append(GOLD)
        drawn.append((out["box"][b] * factor).tolist())
        colours.append(PRED)
        tiles.append(caption_below(draw_boxes(image, drawn, colours), batch["sentences"][b]))
    return grid(tiles, columns=4)


def prediction_records(batch: dict, out: dict) -> list[dict]:
    """Chosen box per sample in original-image pixels (xyxy) plus every candidate's score.

    The REF batch maps original pixels to model-input pixels by ``input = original * scale + offset``.
    """
    size = len(batch["sentences"])
    scale = batch["scale"].float().cpu().repeat(1, 2) if "scale" in batch else torch.ones(size, 4)  # (B, 4)
    offset = batch["offset"].float().cpu().repeat(1, 2) if "offset" in batch else torch.zeros(size, 4)  # (B, 4)
    box = ((out["box"].float().cpu() - offset) / scale).tolist()  # (B, 4) original pixels
    candidates = (batch["candidates"].float().cpu() - offset[:, None]) / scale[:, None]  # (B, K, 4)
    records = []
    for b, sentence in enumerate(batch["sentences"]):  # one JSON record per sample
        valid = batch["candidate_mask"][b].bool().cpu()
        records.append({
            "image_id": str(batch["image_id"][b]),
            "expression": sentence,
            "box_xyxy": [round(v, 2) for v in box[b]],
            "candidate_index": int(out["index"][b]),
            "candidates_xyxy": [[round(v, 2) for v in c] for c in candidates[b][valid].tolist()],
            "scores": [float(s) for s in out["scores"][b].cpu()[valid]],
        })
    return records


def write_predictions(records: list[dict], batch: dict, out: dict, directory: Path, first_index: int = 0) -> None:
    """One JSON + one PNG per sample: ``<n>.json`` and ``<n>.png`` (chosen box red, others grey)."""
    from PIL import Image

    from vpg.utils.visualize import OTHER, PRED, caption_below, denormalise, draw_boxes

    directory.mkdir(parents=True, exist_ok=True)
    paths = batch.get("image_path")
    for b, record in enumerate(records):
        stem = directory / f"{first_index + b:05d}"
        if paths is not None and paths[b]:
            image = Image.open(paths[b]).convert("RGB")
            boxes = [*record["candidates_xyxy"], record["box_xyxy"]]
        else:  # no original file: draw on the model input
            image = denormalise(batch["image"][b], (0.0,) * 3, (1.0,) * 3)
            valid = batch["candidate_mask"][b].bool()
            boxes = [*batch["candidates"][b][valid].tolist(), out["box"][b].tolist()]
        colours = [OTHER] * (len(boxes) - 1) + [PRED]
        width = max(2, round(max(image.size) / 200))
        caption_below(draw_boxes(image, boxes, colours, width=width), record["expression"], width_chars=60).save(
            stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- classification


class FALIPClassifier(ClassifierEval, _FovealPrompting):
    """Zero-shot classification with the object's box (paper Table 2): one mask per image.

    Batch: image (B,3,S,S), label (B,), bbox (B,4) xyxy input pixels. Logs acc@1 and acc@5.
    """

    def __init__(self, clip: CLIP, prompt: str = "falip", templates: list[str] | None = None,
                 class_names: list[str] | None = None, form: str = "a", alpha: float = 0.2, sigma: float = 100.0,
                 eps: float = 1e-6, layers: str | list[int] = AUTHORS_LAYERS, letterbox: bool = False,
                 blur_sigma: float = 0.15, circle_thickness: float | None = None, unleash: bool = False,
                 unleash_layers: str | list[int] | None = None):
        super().__init__(clip, prompt, form, alpha, sigma, eps, layers, letterbox, blur_sigma, circle_thickness,
                         unleash, unleash_layers)
        self.save_hyperparameters(ignore=["clip"])
        self.templates = list(templates or ["a photo of a {}."])
        self._class_names = class_names
        self.register_buffer("classifier", torch.empty(0), persistent=False)
        self.metrics = torch.nn.ModuleDict()

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        """(B, 3, S, S), (B, 4) -> logits (B, C)."""
        index = torch.arange(images.shape[0], device=images.device)
        feats = self.region_features(images, boxes, index, self.prompt)  # (B, E)
        return self.clip.logit_scale.exp() * feats @ self.classifier.to(feats).t()  # (B, C)

    def batch_logits(self, batch: dict) -> Tensor:
        return self(batch["image"], batch["bbox"])


# ---------------------------------------------------------------------------------------------- point clouds


class FALIPPointCloud(ClassifierEval, _FovealPrompting):
    """PointCLIP-style zero-shot point-cloud classification with a foveal mask per view (Table 3).

    Each cloud is projected to ``views`` orthogonal depth maps (``project_depth_maps``); each
    view's mask comes from the box of its hit pixels; logits = scale * sum_j beta_j V(x_j, M_j) . T(t_c)
    with normalised view features V and class features T. Batch: points (B, N, 3), label (B,).
    """

    def __init__(self, clip: CLIP, prompt: str = "falip", templates: list[str] | None = None,
                 class_names: list[str] | None = None, views: int = 6, view_weights: list[float] | None = None,
                 splat_radius: int | None = None, form: str = "a", alpha: float = 0.2, sigma: float = 100.0,
                 eps: float = 1e-6, layers: str | list[int] = AUTHORS_LAYERS, blur_sigma: float = 0.15,
                 circle_thickness: float | None = None, unleash: bool = False,
                 unleash_layers: str | list[int] | None = None):
        super().__init__(clip, prompt, form, alpha, sigma, eps, layers, False, blur_sigma, circle_thickness,
                         unleash, unleash_layers)
        self.save_hyperparameters(ignore=["clip"])
        self.templates = list(templates or ["point cloud depth map of a {}."])
        self._class_names = class_names
        self.views, self.splat_radius = views, splat_radius
        weights = torch.tensor(view_weights if view_weights is not None else [1.0] * views, dtype=torch.float32)
        if weights.numel() != views:
            raise ValueError(f"view_weights has {weights.numel()} entries for {views} views")
        self.register_buffer("view_weights", weights, persistent=False)  # (V,) beta_j
        self.register_buffer("classifier", torch.empty(0), persistent=False)
        self.metrics = torch.nn.ModuleDict()

    def depth_images(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, 3) -> normalised depth images (B*V, 3, S, S) and their foreground boxes (B*V, 4)."""
        size = self.clip.image_size[0]
        depth, foreground = project_depth_maps(points, size, self.views, self.splat_radius)  # (B, V, S, S) x2
        rgb = depth_to_rgb(depth.flatten(0, 1))  # (B*V, 3, S, S)
        mean = torch.tensor(self.clip.image_mean, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(self.clip.image_std, device=rgb.device).view(1, 3, 1, 1)
        boxes = mask_boxes(foreground.flatten(0, 1))  # (B*V, 4)
        empty = boxes[:, 2] <= boxes[:, 0]  # a view without hits: the whole image
        boxes[empty] = boxes.new_tensor([0.0, 0.0, size, size])
        return (rgb - mean) / std, boxes

    def forward(self, points: Tensor) -> Tensor:
        """(B, N, 3) -> logits (B, C)."""
        images, boxes = self.depth_images(points)
        index = torch.arange(images.shape[0], device=images.device)
        feats = self.region_features(images, boxes, index, self.prompt).view(points.shape[0], self.views, -1)  # (B, V, E)
        pooled = torch.einsum("bve,v->be", feats, self.view_weights.to(feats))  # (B, E) sum_j beta_j V_j
        return self.clip.logit_scale.exp() * pooled @ self.classifier.to(feats).t()  # (B, C)

    def batch_logits(self, batch: dict) -> Tensor:
        return self(batch["points"])


__all__ = ["AUTHORS_LAYERS", "FALIPClassifier", "FALIPPointCloud", "FALIPRec", "PrefixTokenizer",
           "negative_weights", "parse_prompt", "pick_with_random_ties", "subtract_negatives"]
