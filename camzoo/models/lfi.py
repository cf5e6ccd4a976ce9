"""LFI-CAM (Lee et al. 2021): a Feature Importance Network (FIN) learns per-channel weights of the
last feature map; their weighted sum is the attention map M, and the classifier sees (1 + M) * F.

Steps, following the official code (TrustworthyAI-kr/LFI-CAM, ``models/*/resnet_lfiv2.py``):
1. F = final feature map (B, C, h, w); g = image averaged over RGB, bilinearly resized to (h, w).
2. F_norm = per-channel min-max of F over (h, w). Official edge cases kept exactly: a constant
   channel becomes 1 (their 0/0 NaN patched to 1), and positions where F == 0 become 0.
3. w = softmax_C(GAP(FIN(F_norm * g))).
4. M = per-image min-max of ReLU(sum_c w_c F_c) -> (B, 1, h, w) in [0, 1].
5. logits = Linear(GAP((1 + M) * F)); one cross-entropy.

Differences from the official code (see docs/methods.md): one einsum instead of a Python loop over
channels, guarded divisions instead of dividing by zero and patching NaNs, and a constant map M
becomes 0 (the official code keeps its un-normalised value, which can exceed 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..maps import minmax_normalise
from .backbones import init_like_official
from .base import CamModel, ModelOutput
from .kinds import register_kind

FIN_VARIANTS = ("imagenet", "cifar")


class FeatureImportanceNetwork(nn.Module):
    """Four 3x3 conv + BN layers (C -> width -> width -> width -> C) and global average pooling.

    ``variant="imagenet"``: ReLU after every BN (official ImageNet/Cat&Dog/STL models).
    ``variant="cifar"``: ReLU after the 2nd and 4th BN only (official CIFAR models).
    ``width`` defaults to C as in the paper; a narrower FIN is cheaper.
    """

    def __init__(self, channels: int, width: int | None = None, variant: str = "imagenet") -> None:
        super().__init__()
        if variant not in FIN_VARIANTS:
            raise ValueError(f"fin_variant must be one of {FIN_VARIANTS}, got {variant!r}")
        width = channels if width is None else int(width)
        if width < 1:
            raise ValueError(f"fin_width must be a positive number of channels, got {width}")
        widths = [channels, width, width, width, channels]
        relu_after = (True, True, True, True) if variant == "imagenet" else (False, True, False, True)
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(widths[i + 1])]
            if relu_after[i]:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)
        init_like_official(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) masked features -> (B, C) channel scores (before the softmax)."""
        return self.layers(x).mean(dim=(2, 3))


def normalize_channels(features: torch.Tensor) -> torch.Tensor:
    """Per-channel min-max over (h, w), with the official code's edge cases and no NaN:
    constant channels -> 1, exact zeros -> 0."""
    fmin = features.amin(dim=(2, 3), keepdim=True)
    span = features.amax(dim=(2, 3), keepdim=True) - fmin
    flat = span <= 0
    scaled = (features - fmin) / torch.where(flat, torch.ones_like(span), span)
    scaled = torch.where(flat, torch.ones_like(scaled), scaled)
    return torch.where(features == 0, torch.zeros_like(scaled), scaled)


def lfi_attention(features: torch.Tensor, images: torch.Tensor, fin: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """LFI-CAM's attention map M (B, 1, h, w) in [0, 1] and FIN weights w (B, C), batched.

    Computed in float32 (min-max divisions are fragile in half precision); the FIN itself runs
    under whatever autocast is active.
    """
    feats = features.float()
    gray = images.float().mean(dim=1, keepdim=True)
    gray = F.interpolate(gray, size=feats.shape[-2:], mode="bilinear", align_corners=False)
    scores = fin(normalize_channels(feats) * gray)  # autocast, if active, applies here only
    with torch.autocast(feats.device.type, enabled=False):
        weights = torch.softmax(scores.float(), dim=1)
        saliency = torch.einsum("bc,bchw->bhw", weights, feats).unsqueeze(1)
        return minmax_normalise(F.relu(saliency)), weights


@register_kind
class LFICAM(CamModel):
    """LFI-CAM on any camzoo backbone; the attention mechanism is (1 + M) * F."""

    kind = "lfi"
    options = ("fin_width", "fin_variant")
    produces_attention = True

    @classmethod
    def kind_kwargs(cls, options: dict, backbone) -> dict:
        """``fin_variant`` defaults to "cifar" on CIFAR ResNets and "imagenet" otherwise, as the official code."""
        variant = options.get("fin_variant") or ("cifar" if backbone.family == "cifar_resnet" else "imagenet")
        if variant not in FIN_VARIANTS:
            raise ValueError(f"fin_variant must be one of {FIN_VARIANTS}, got {variant!r}")
        return {"fin_width": options.get("fin_width"), "fin_variant": variant}

    @classmethod
    def default_stem_stride1(cls, backbone) -> bool:
        """The official ImageNet LFI-CAM halves the stem's stride (layer4 at 14x14 for 224 px)."""
        return backbone.family != "cifar_resnet" and backbone.stem_stride() > 1

    def __init__(self, backbone, num_classes, config, pretrained_cfg, class_names=None, *,
                 fin_width: int | None = None, fin_variant: str = "imagenet") -> None:
        super().__init__(backbone, num_classes, config, pretrained_cfg, class_names)
        self.fin = FeatureImportanceNetwork(backbone.num_features, fin_width, fin_variant)

    def forward_train(self, x: torch.Tensor) -> ModelOutput:
        self.check_input(x)
        features = self.backbone(x)
        attention, weights = self.attention_map(features, x)
        logits = self.classify(features * (1 + attention).to(features.dtype))
        return ModelOutput(logits=logits, attention=attention, channel_weights=weights)

    def attention_map(self, features: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lfi_attention(features, images, self.fin)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, attention (B, 1, h, w) in [0, 1]) at the final feature map's resolution."""
        out = self.forward_train(x)
        return out.logits, out.attention
