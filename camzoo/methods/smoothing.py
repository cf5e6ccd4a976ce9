"""The two smoothing options every applicable method takes: ``eigen_smooth`` and ``aug_smooth``.

Both come from pytorch-grad-cam (1.5.7), which offers them on every method; camzoo computes them
the same way, batched in torch, so that its maps equal that reference:

- ``eigen_smooth``: a method whose map is ReLU(sum_c T_c) of per-channel terms T (B,C,h,w) (channel
  weights times activations, or an element-wise product) replaces the channel sum by T's first
  principal component (:func:`first_component_projection`, mean-centred, Eigen-CAM's own). Unlike
  pytorch-grad-cam, whose SVD sign is arbitrary, the projection's sign is fixed to correlate with the
  unsmoothed sum, so a smoothed map never comes out inverted.
- ``aug_smooth``: the mean of the method's maps over six test-time augmentations of the input (no
  flip and a horizontal flip, times the normalised input multiplied by 0.9, 1 and 1.1), each map
  upsampled, min-max normalised and flipped back before the mean. This is pytorch-grad-cam's
  heuristic (its ``tta_transforms``), not a published method. The targets are chosen once, on the
  unaugmented images, and every augmentation explains them (pytorch-grad-cam takes each augmented
  image's own prediction when no target is given).
"""

from __future__ import annotations

from typing import Any

import torch

from ..maps import upsample_and_normalise

AUG_FLIPS = (False, True)
AUG_FACTORS = (0.9, 1.0, 1.1)  # pytorch-grad-cam's ttach Multiply factors, on the normalised input


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


def eigen_smoothed(terms: torch.Tensor) -> torch.Tensor:
    """ReLU of the first principal component of per-channel terms (B,C,h,w): (B,h,w)."""
    return first_component_projection(terms.float()).clamp_min(0)


def combine(weights: torch.Tensor, activations: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """ReLU(sum_c w_c A_c) from (B,C) channel weights, or its eigen-smoothed form: the (B,h,w) map."""
    if eigen_smooth:
        return eigen_smoothed(weights.float()[:, :, None, None] * activations.float())
    return torch.einsum("bc,bchw->bhw", weights.float(), activations.float()).clamp_min(0)


def aug_smoothed_run(method: Any, images: torch.Tensor, target: Any,
                     ground_truth: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets, map) of ``method`` (a ``CAMMethod``: the base calls this, so it is not imported
    here) averaged over the six augmentations; the map is at the images' resolution. The unaugmented
    pass (``method.run(..., augment=False)``) runs first and fixes the targets for the others."""
    size = tuple(images.shape[-2:])
    logits, targets, raw = method.run(images, target, ground_truth, augment=False)
    if method.explains_outputs:  # a box or a mask would have to be flipped with the image
        raise ValueError(f"method {method.name!r}: aug_smooth explains class targets only; drop aug_smooth for "
                         "segmentation or detection targets")
    total = torch.zeros(images.shape[0], *size, device=raw.device)
    for flip in AUG_FLIPS:
        flipped = images.flip(-1) if flip else images
        for factor in AUG_FACTORS:
            if factor == 1.0 and not flip:
                part = raw
            else:
                _, _, part = method.run(flipped * factor, targets, ground_truth, augment=False)
            maps = upsample_and_normalise(part, size)
            total += maps.flip(-1) if flip else maps
    return logits, targets, total / (len(AUG_FLIPS) * len(AUG_FACTORS))
