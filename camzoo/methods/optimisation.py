"""Opti-CAM: channel weights found by optimisation, per image, instead of read off gradients.

Why its own module: it is the one method whose map is the result of an iterative optimisation
(a forward and a backward pass per step), so it owns its optimiser settings; the activations come
from the shared base's capture like every other method's, and each step runs the whole chunk of
images at once (one weight vector per image: Adam's updates are per parameter, so the images of a
chunk do not influence each other).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..maps import minmax_normalise
from .base import CAMMethod
from .objectives import OutputTargets, target_values
from .registry import register

OPTICAM_ITERATIONS = 50  # the official generate_opticam.py's defaults: --max_iter 50 ...
OPTICAM_LR = 0.1  # ... --learning_rate 0.1 (Adam), loss "plain", normalisation "max_min"
OPTICAM_START = 0.5  # util.py Basic_OptCAM.forward: w = 0.5 * ones, i.e. uniform softmax weights


@register
class OptiCAM(CAMMethod):
    """Opti-CAM (Zhang et al., CVIU 2024): u = argmax_u y_c(X * S(u)), map = S(u).

    S(u) = min-max(upsample(sum_k softmax(u)_k ReLU(A_k))) (bilinear, align_corners=False), optimised
    per image by Adam from u = 0.5 (uniform weights): ``iterations`` steps at ``lr``, maximising the
    target logit of the masked input (the official "plain" loss, sum of y_c(X) - y_c(X * S)). As in
    Score-CAM here, the mask multiplies the normalised input (masked pixels take the dataset's mean
    colour; the official code multiplies [0,1] pixels, masking to black). The official loop also stops
    early when the loss of the whole batch rises between checks, which makes one image's map depend
    on the others in its batch; camzoo always runs the ``iterations`` steps. Cost: ``iterations``
    forward and backward passes per image.
    """

    name = "opticam"
    family = "optimisation"
    cost = "iterative"

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None, *,
                 iterations: int = OPTICAM_ITERATIONS, lr: float = OPTICAM_LR, **options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **options)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0; got {iterations!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive; got {lr!r}")
        self.iterations = iterations
        self.lr = float(lr)

    @staticmethod
    def combine(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_k softmax(u)_k ReLU(A_k) at the layer's resolution: (B,h,w). Multiply-and-sum in the
        official code's order: Adam turns rounding-level gradients into full steps (docs/methods.md)."""
        return (weights.softmax(dim=1)[:, :, None, None] * features).sum(dim=1)

    @classmethod
    def mask(cls, features: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """S(u): the combined channels, upsampled and min-max normalised: (B,H,W)."""
        upsampled = F.interpolate(cls.combine(features, weights)[:, None], size=size, mode="bilinear",
                                  align_corners=False)[:, 0]
        return minmax_normalise(upsampled)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, chosen, activations, _ = self.layer_outputs(images, targets)
        objective = targets if isinstance(targets, OutputTargets) else chosen
        features = activations.float().clamp_min(0)
        size = (images.shape[-2], images.shape[-1])
        weights = torch.full(features.shape[:2], OPTICAM_START, device=features.device, requires_grad=True)
        optimiser = torch.optim.Adam([weights], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.iterations):
                masked = images * self.mask(features, weights, size)[:, None].to(images.dtype)
                score = target_values(self.model, masked, objective, self.output)
                # gradient of the loss sum(y_c(X) - y_c(X * S)) with respect to u only: the model's
                # parameters collect no gradient
                (gradient,) = torch.autograd.grad(-score.sum(), weights)
                weights.grad = gradient
                optimiser.step()
        with torch.no_grad():
            raw = self.combine(features, weights)
        return logits, chosen, raw
