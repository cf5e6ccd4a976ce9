"""Gradient-weighted CAMs: the channel weights come from d(target logit)/d(activations)."""

from __future__ import annotations

import torch

from .base import CAMMethod
from .registry import register


@register
class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_c mean_hw(dy/dA_c) * A_c).

    Matches Captum's ``LayerGradCam(relu_attributions=True)`` before upsampling.
    """

    name = "gradcam"
    family = "gradient"
    uses_gradients = True

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        assert gradients is not None
        weights = gradients.mean(dim=(2, 3))
        return torch.einsum("bc,bchw->bhw", weights, activations).clamp_min(0)

    def channel_terms(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        assert gradients is not None
        return gradients.float().mean(dim=(2, 3))[:, :, None, None] * activations.float()
