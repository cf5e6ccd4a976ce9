"""Eigen-CAM: the activations' first principal component, class-agnostic and gradient-free."""

from __future__ import annotations

import torch

from .base import CAMMethod
from .registry import register


def first_component_projection(activations: torch.Tensor) -> torch.Tensor:
    """Project each image's mean-centred (h*w, C) activation matrix on its first right-singular vector.

    Batched on the activations' device. The SVD's sign is arbitrary, so it is fixed to make the
    projection correlate positively with the channel-mean activation: otherwise two runs (or seeds)
    can return inverted maps for no reason. Returns (B,h,w), before ReLU.

    Computed from the smaller Gram matrix instead of a full SVD (the same vector: X v1 = s1 u1, and
    u1 / v1 are the top eigenvectors of X X^T / X^T X): for a ResNet-50 ``layer4`` (49 x 2048) the
    SVD cost a fifth of the forward pass on a CPU, the Gram matrix and a 49 x 49 ``eigh`` almost nothing.
    """
    batch, channels, height, width = activations.shape
    matrix = activations.float().flatten(2).transpose(1, 2)  # (B, hw, C)
    centred = matrix - matrix.mean(dim=1, keepdim=True)
    if height * width <= channels:  # X X^T: (B, hw, hw); projection = sqrt(lambda1) u1
        values, vectors = torch.linalg.eigh((centred @ centred.transpose(1, 2)).double())
        projection = (vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()).to(centred.dtype)
    else:  # X^T X: (B, C, C); projection = X v1
        _, vectors = torch.linalg.eigh((centred.transpose(1, 2) @ centred).double())
        projection = torch.einsum("bpc,bc->bp", centred, vectors[..., -1].to(centred.dtype))
    mean_activation = matrix.mean(dim=2)
    covariance = ((projection - projection.mean(1, keepdim=True))
                  * (mean_activation - mean_activation.mean(1, keepdim=True))).sum(1)
    sign = torch.where(covariance < 0, -1.0, 1.0).to(projection.dtype)
    return (projection * sign[:, None]).view(batch, height, width)


@register
class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin 2020), as pytorch-grad-cam computes it (mean-centred, then ReLU),
    plus a sign fix pytorch-grad-cam lacks."""

    name = "eigencam"
    family = "activation"
    cost = "forward"

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return first_component_projection(activations).clamp_min(0)
