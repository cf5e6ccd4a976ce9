"""Eigen-CAM: the activations' first principal component, class-agnostic and gradient-free.

The projection (``first_component_projection``) lives in methods/smoothing.py, which ``eigen_smooth``
shares with it.
"""

from __future__ import annotations

import torch

from .base import CAMMethod
from .smoothing import first_component_projection
from .registry import register


@register
class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin 2020), as pytorch-grad-cam computes it (mean-centred, then ReLU),
    plus a sign fix pytorch-grad-cam lacks."""

    name = "eigencam"
    family = "activation"
    cost = "forward"

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return first_component_projection(activations).clamp_min(0)
