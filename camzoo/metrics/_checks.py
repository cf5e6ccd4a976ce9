"""Input validation shared by every metric.

Why: a metric fed a wrongly shaped map or a NaN returns a plausible-looking number that silently
poisons a results table. Every public metric calls these checks first, so a bad input fails loudly
with a message that names the argument, what was wrong and what to do.
"""

from __future__ import annotations

import torch

from ..groundtruth import bad_images as _bad_images, boxes_to_masks, check_boxes, check_masks

# Maps come out of per-image min-max normalisation; allow float rounding just outside [0, 1].
_RANGE_TOLERANCE = 1e-5


def check_maps(maps: object, name: str = "maps", unit_range: bool = True) -> torch.Tensor:
    """Validate saliency maps: a finite float tensor (B,H,W), in [0,1] when ``unit_range``."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,H,W); got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        raise ValueError(
            f"{name} must be (B,H,W); got {tuple(maps.shape)}: squeeze the channel dimension "
            f"({name}[:, 0])"
        )
    if maps.dim() != 3:
        raise ValueError(f"{name} must be a (B,H,W) tensor; got shape {tuple(maps.shape)}")
    if maps.shape[0] == 0:
        raise ValueError(f"{name} is empty (batch size 0)")
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be a float tensor; got {maps.dtype}")
    finite = torch.isfinite(maps)
    if not bool(finite.all()):
        raise ValueError(
            f"{name} contains NaN or inf (images {_bad_images(~finite)}); an explanation method failed "
            "upstream: fix it there rather than here"
        )
    if unit_range:
        low, high = float(maps.min()), float(maps.max())
        if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise ValueError(
                f"{name} must lie in [0,1] (per-image min-max normalised, as camzoo.explain returns "
                f"them); got values in [{low:.4g}, {high:.4g}]"
            )
    return maps


def check_images(images: object, maps: torch.Tensor | None = None) -> torch.Tensor:
    """Validate a normalised image batch (B,C,H,W) that matches ``maps`` in batch size and size."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B,C,H,W); got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be a (B,C,H,W) tensor; got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a float tensor (normalised); got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or inf")
    if maps is not None:
        if images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
            raise ValueError(
                f"images {tuple(images.shape)} and maps {tuple(maps.shape)} disagree: maps must be "
                "(B,H,W) at the images' resolution, one per image"
            )
        if images.device != maps.device:
            raise ValueError(f"images are on {images.device} but maps on {maps.device}: move them together")
    return images


def check_targets(targets: object, batch: int, num_classes: int | None = None,
                  device: torch.device | None = None) -> torch.Tensor:
    """Validate class targets: an int tensor/sequence of length ``batch`` within [0, num_classes)."""
    targets = torch.as_tensor(targets, device=device)
    if targets.dim() == 0:
        targets = targets.expand(batch)
    if targets.dim() != 1 or targets.shape[0] != batch:
        raise ValueError(f"targets must be a (B,) tensor with B={batch}; got shape {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices; got {targets.dtype}")
    targets = targets.long()
    if num_classes is not None and batch > 0:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"targets must lie in [0, {num_classes}); got values in [{low}, {high}]")
    return targets


def object_masks(maps: torch.Tensor, masks: torch.Tensor | None, boxes: torch.Tensor | None,
                 metric: str) -> torch.Tensor:
    """Ground-truth regions (B,H,W) for a map batch: the masks if given, else the rasterised boxes."""
    batch, height, width = maps.shape
    if masks is not None:
        regions = check_masks(masks, maps.shape).to(maps.device)
    elif boxes is not None:
        regions = boxes_to_masks(check_boxes(boxes, batch, height, width).to(maps.device), height, width)
    else:
        raise ValueError(f"{metric} needs ground truth: pass masks=(B,H,W) bool or boxes=(B,K,4)")
    empty = ~regions.flatten(1).any(1)
    if bool(empty.any()):
        raise ValueError(
            f"{metric}: the ground truth of images {torch.nonzero(empty).flatten().tolist()[:10]} is empty "
            "(no object pixel); drop those images before scoring"
        )
    return regions
