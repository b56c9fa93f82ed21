"""WWbL's grounding network (Shaharabany et al., NeurIPS 2022) with VPT-WSG's prompt input.

image (B, 3, H, W), text embedding t (B, E) [, prompt map S (B, h', w')] -> heatmap M (B, H, W):

- encoder: VGG16 up to relu4_3 (torchvision ``vgg16().features[:23]``, stride 8, 512 ch);
- decoder: bottleneck (2 x conv3x3-BN-ReLU, 512 ch) -> features F; channel-normalised cosine
  of F with t at every position -> a 1-channel map; fusion = F x map; **VPT-WSG**: the prompt
  map S, resized to the fusion grid, is added to the fusion features (broadcast over the
  channels) -> two x2 up-blocks (bilinear up, conv3x3-BN-ReLU) -> 1x1 conv -> bilinear resize
  to the image -> sigmoid.

When the text embedding's width differs from the 512 feature channels (the tiny shapes CLIP
has a 128-d joint space; CLIP ViT-B/32's is 512, WWbL's setting) a linear map brings it to
512 channels; at 512 it is the identity, as in WWbL.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import vgg

from vpg.errors import ConfigurationError, MissingFileError

log = logging.getLogger(__name__)

VGG16_RELU4_3 = 23  # torchvision vgg16().features[:23] ends at relu4_3 (3 max-pools: stride 8)
VGG16_LAYOUT = "D"  # torchvision's name of the VGG16 layout in torchvision.models.vgg.cfgs


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class VGG16Encoder(nn.Module):
    """VGG16 convolutions up to relu4_3: (B, 3, H, W) ImageNet-normalised -> (B, 512·width, H/8, W/8).

    Args:
        width: channel multiplier of the VGG16 layout (1: torchvision's VGG16, the only width
            that takes ImageNet weights; the CPU shapes configs use 0.25, 16x fewer FLOPs).
        weights: None (random init), a local file (a torchvision ``vgg16`` state dict, its
            ``features.*`` keys are used, or one of these features only), or ``"imagenet"``:
            torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (downloaded by torchvision into its
            cache when the network allows; an error otherwise).
    """

    stride = 8

    def __init__(self, weights: str | None = None, width: float = 1.0):
        super().__init__()
        if width <= 0:
            raise ConfigurationError(f"VGG16 width must be positive, got {width}")
        if weights and width != 1.0:
            raise ConfigurationError(f"VGG16 weights need width 1, got width {width}")
        layout = [v if v == "M" else max(1, round(v * width)) for v in vgg.cfgs[VGG16_LAYOUT]]
        self.features = vgg.make_layers(layout)[:VGG16_RELU4_3]  # torchvision's own VGG16 builder
        self.out_channels = max(1, round(512 * width))
        if weights:
            self.load_weights(weights)

    def load_weights(self, weights: str) -> None:
        if weights.lower() == "imagenet":
            try:
                state = torchvision.models.VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
            except Exception as err:  # no network / no cache: say what to do instead
                raise ConfigurationError(f"could not fetch torchvision's ImageNet VGG16 weights ({err}); "
                                         "download vgg16-397923af.pth and pass its path as the weights") from err
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise MissingFileError(f"VGG16 weights file not found: {weights!r}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
        ours = self.features.state_dict()
        mapped = {}
        for key, value in state.items():  # "features.0.weight" or "0.weight"
            short = key.removeprefix("module.").removeprefix("features.")
            if short in ours:
                mapped[short] = value
        missing = sorted(set(ours) - set(mapped))
        if missing:
            raise ConfigurationError(f"VGG16 weights {weights!r} lack {missing[:4]} (expected a torchvision vgg16 "
                                     "state dict)")
        self.features.load_state_dict(mapped)
        log.info("VGG16 encoder: loaded %s", weights)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)  # (B, 512, H/8, W/8)


class WWbLDecoder(nn.Module):
    """Text-conditioned decoder: features (B, C, h, w), text (B, E) [, prompt (B, h', w')] -> logits (B, 4h, 4w)."""

    def __init__(self, text_dim: int, channels: int = 512, up_channels: tuple[int, int] = (256, 128),
                 prompt_weight: float = 1.0):
        super().__init__()
        self.bottleneck = nn.Sequential(_conv_bn_relu(channels, channels), _conv_bn_relu(channels, channels))
        self.text_proj = nn.Identity() if text_dim == channels else nn.Linear(text_dim, channels)
        self.up1 = _conv_bn_relu(channels, up_channels[0])
        self.up2 = _conv_bn_relu(up_channels[0], up_channels[1])
        self.head = nn.Conv2d(up_channels[1], 1, 1)
        self.prompt_weight = float(prompt_weight)

    def fuse(self, features: Tensor, text: Tensor) -> Tensor:
        """Bottleneck features x their cosine with the text: (B, C, h, w)."""
        feats = self.bottleneck(features)  # (B, C, h, w)
        t = self.text_proj(text.to(feats.dtype))  # (B, C)
        cos = F.cosine_similarity(feats, t[:, :, None, None], dim=1)  # (B, h, w) channel-normalised cosine
        return feats * cos[:, None]  # (B, C, h, w)

    def forward(self, features: Tensor, text: Tensor, prompt: Tensor | None = None) -> Tensor:
        fused = self.fuse(features, text)  # (B, C, h, w)
        if prompt is not None:  # VPT-WSG: the similarity map added to the fusion features in latent space
            grid = fused.shape[-2:]
            prompt = F.interpolate(prompt[:, None].to(fused.dtype), size=grid, mode="bilinear", align_corners=False)
            fused = fused + self.prompt_weight * prompt  # (B, C, h, w), broadcast over the channels
        x = self.up1(F.interpolate(fused, scale_factor=2, mode="bilinear", align_corners=False))  # (B, 256, 2h, 2w)
        x = self.up2(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))  # (B, 128, 4h, 4w)
        return self.head(x)[:, 0]  # (B, 4h, 4w) logits


class GroundingNetwork(nn.Module):
    """WWbL's network: VGG16-relu4_3 encoder + text-conditioned decoder -> heatmap in [0, 1].

    Args:
        text_dim: width of the text embedding (CLIP's joint space: 512 for ViT-B/32).
        encoder_weights: see :class:`VGG16Encoder` (None: random init).
        width: channel multiplier of the encoder and decoder (1: WWbL's network; the bottleneck
            has 512·width channels, the up-blocks 256·width and 128·width).
        prompt_weight: scale of the prompt map added to the fusion features (VPT-WSG: 1).
    """

    def __init__(self, text_dim: int = 512, encoder_weights: str | None = None, width: float = 1.0,
                 prompt_weight: float = 1.0):
        super().__init__()
        self.encoder = VGG16Encoder(encoder_weights, width)
        channels = self.encoder.out_channels
        up = (max(1, round(256 * width)), max(1, round(128 * width)))
        self.decoder = WWbLDecoder(text_dim, channels, up, prompt_weight=prompt_weight)
        self.text_dim = text_dim

    def forward(self, images: Tensor, text: Tensor, prompt: Tensor | None = None) -> Tensor:
        """images (B, 3, H, W) ImageNet-normalised, text (B, E), prompt (B, h', w') or None -> (B, H, W)."""
        if text.shape[-1] != self.text_dim:
            raise ValueError(f"text embedding has width {text.shape[-1]}, the network expects {self.text_dim}")
        logits = self.decoder(self.encoder(images), text, prompt)  # (B, 4h, 4w)
        logits = F.interpolate(logits[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits[:, 0])  # (B, H, W)


__all__ = ["GroundingNetwork", "VGG16Encoder", "WWbLDecoder"]
