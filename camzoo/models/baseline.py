"""The baseline: the same backbone with GAP + Linear and no attention (the reference for ABN and
LFI-CAM, and the model Grad-CAM / Eigen-CAM explain post hoc)."""

from __future__ import annotations

import torch

from .base import CamModel, ModelOutput
from .kinds import register_kind


@register_kind
class BaselineModel(CamModel):
    kind = "baseline"

    def forward_train(self, x: torch.Tensor) -> ModelOutput:
        self.check_input(x)
        return ModelOutput(logits=self.classify(self.backbone(x)))
