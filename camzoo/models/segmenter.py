"""A small semantic segmenter on any camzoo backbone, to explain per-pixel predictions with ground truth.

Why this shape: it is the smallest FCN that camzoo's CAM methods treat like the segmenters users ship
(torchvision's FCN / DeepLab heads): the backbone's final map goes through ``cam_hook`` (so the
default CAM layer is the backbone output, as pytorch-grad-cam's segmentation tutorial explains
``backbone.layer4``), then a 3x3 conv + BN + ReLU and a 1x1 conv to class scores, upsampled
bilinearly to the input size. ``forward(x)`` gives (B, K, H, W) logits where K counts background as
class 0 (the "scenes" dataset's class maps: 0 background, c+1 class c), and the loss is the base
class's cross-entropy, which is per pixel on such logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, init_like_official
from .base import CamModel, ModelOutput
from .kinds import register_kind

MAX_DEFAULT_HEAD_WIDTH = 256  # FCN's head narrows 2048 -> 512; wide timm backbones need no wider head here


@register_kind
class Segmenter(CamModel):
    """Backbone -> ``cam_hook`` -> [3x3 conv, BN, ReLU] -> 1x1 conv -> bilinear upsample: (B, K, H, W)."""

    kind = "segmenter"
    task = "segmentation"
    options = ("head_width",)
    produces_attention = False

    @classmethod
    def kind_kwargs(cls, options: dict[str, Any], backbone: Backbone) -> dict[str, Any]:
        """``head_width``: channels of the 3x3 conv (default min(C, 256)); 0 drops it (a 1x1 conv only)."""
        width = options.get("head_width")
        if width is None:
            width = min(backbone.num_features, MAX_DEFAULT_HEAD_WIDTH)
        if isinstance(width, bool) or not isinstance(width, int) or width < 0:
            raise ValueError(f"head_width must be an integer >= 0 (0: a 1x1 conv only), got {width!r}")
        return {"head_width": width}

    @classmethod
    def default_stem_stride1(cls, backbone: Backbone) -> bool:
        """timm backbones end at stride 32 (2x2 at 64 px); a stride-1 stem halves that, as DeepLab's
        output stride 16. CIFAR ResNets already end at stride 4."""
        return backbone.family != "cifar_resnet" and backbone.stem_stride() > 1

    def __init__(self, backbone: Backbone, num_classes: int, config: dict, pretrained_cfg: dict,
                 class_names: list[str] | None = None, *, head_width: int = 0) -> None:
        super().__init__(backbone, num_classes, config, pretrained_cfg, class_names)
        del self.fc  # no global pooling: the head below classifies every position
        channels = backbone.num_features
        layers: list[nn.Module] = []
        if head_width:
            layers += [nn.Conv2d(channels, head_width, 3, padding=1, bias=False), nn.BatchNorm2d(head_width),
                       nn.ReLU(inplace=True)]
            channels = head_width
        layers.append(nn.Conv2d(channels, num_classes, 1))
        self.head = nn.Sequential(*layers)
        for module in layers[:-1]:
            init_like_official(module)

    def forward_train(self, x: torch.Tensor) -> ModelOutput:
        """Per-pixel logits (B, num_classes, H, W) at the input's size."""
        self.check_input(x)
        scores = self.head(self.cam_hook(self.backbone(x)))
        return ModelOutput(logits=F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False))
