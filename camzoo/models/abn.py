"""Attention Branch Network (Fukui et al., CVPR 2019), on any backbone whose last stage can run
at stride 1.

Following the official code (machine-perception-robotics-group/attention_branch_network,
``models/{cifar,imagenet}/resnet.py``):
1. X = trunk(x): the backbone up to the second-last stage.
2. Attention branch: a stride-1 copy of the last stage (own weights) -> BN -> Conv1x1(C -> K)
   -> BN -> ReLU; then (a) Conv1x1(K -> K) -> GAP -> attention-branch logits and
   (b) Conv3x3(K -> 1) -> BN -> sigmoid -> attention map M (B, 1, h, w).
3. Perception branch: (1 + M) * X -> last stage -> GAP -> Linear -> logits.
4. Loss = CE(attention-branch logits) + CE(perception logits); predictions use the perception logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modelutil import eval_mode
from .backbones import init_like_official
from .base import CamModel, ModelOutput
from .kinds import register_kind


class AttentionBranch(nn.Module):
    def __init__(self, stage: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.stage = stage  # already initialised by its backbone family
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, num_classes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.cls_conv = nn.Conv2d(num_classes, num_classes, 1, bias=False)
        self.map_conv = nn.Conv2d(num_classes, 1, 3, padding=1, bias=False)
        self.map_bn = nn.BatchNorm2d(1)
        for module in (self.bn, self.conv, self.bn2, self.cls_conv, self.map_conv, self.map_bn):
            init_like_official(module)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk features (B, C', h, w) -> (attention-branch logits (B, K), map (B, 1, h, w))."""
        a = self.relu(self.bn2(self.conv(self.bn(self.stage(x)))))
        attention = torch.sigmoid(self.map_bn(self.map_conv(a)))
        return self.cls_conv(a).mean(dim=(2, 3)), attention


@register_kind
class ABN(CamModel):
    kind = "abn"
    produces_attention = True

    def __init__(self, backbone, num_classes, config, pretrained_cfg, class_names=None) -> None:
        super().__init__(backbone, num_classes, config, pretrained_cfg, class_names)
        self.attention_branch = AttentionBranch(backbone.make_stride1_last_stage(), backbone.num_features, num_classes)
        if backbone.family != "cifar_resnet":
            self._check_restride()

    @torch.no_grad()
    def _check_restride(self) -> None:
        """The stride-1 branch must keep the trunk's resolution; say so at build time if not."""
        try:
            with eval_mode(self):
                x = self.backbone.trunk(torch.zeros(1, 3, 64, 64))
                y = self.attention_branch.stage(x)
        except Exception as err:
            raise ValueError(
                f"ABN cannot run the last stage of {self.backbone.name!r} at stride 1 "
                f"({type(err).__name__}: {err}); use a ResNet-, RegNet- or EfficientNet-style backbone"
            ) from err
        if y.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"ABN: the last stage of {self.backbone.name!r} still changes the resolution after "
                f"re-striding ({tuple(x.shape[-2:])} -> {tuple(y.shape[-2:])}); it has strided layers "
                "camzoo does not know how to re-stride"
            )

    def forward_train(self, x: torch.Tensor) -> ModelOutput:
        self.check_input(x)
        trunk = self.backbone.trunk(x)
        aux_logits, attention = self.attention_branch(trunk)
        logits = self.classify(self.backbone.last_stage(trunk * (1 + attention)))
        return ModelOutput(logits=logits, attention=attention, aux_logits=aux_logits)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """Sum of the attention-branch and perception-branch cross-entropies (official)."""
        return F.cross_entropy(output.aux_logits, labels) + F.cross_entropy(output.logits, labels)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(perception logits, attention (B, 1, h, w) in [0, 1]) at the trunk's resolution."""
        out = self.forward_train(x)
        return out.logits, out.attention
