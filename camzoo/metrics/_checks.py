"""Input validation shared by every metric.

Why: a metric fed a wrongly shaped map or a NaN returns a plausible-looking number that silently
poisons a results table. Every public metric calls these checks first, so a bad input fails loudly
with a message that names the argument, what was wrong and what to do.
"""

from __future__ import annotations

import torch

# Maps come out of per-image min-max normalisation; allow float rounding just outside [0, 1].
_RANGE_TOLERANCE = 1e-5


def _bad_images(mask: torch.Tensor) -> list[int]:
    """Indices (along dim 0) where ``mask`` is true anywhere, for error messages."""
    return torch.nonzero(mask.flatten(1).any(1)).flatten().tolist()[:10]


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


def check_masks(masks: object, shape: torch.Size) -> torch.Tensor:
    """Validate ground-truth masks: bool (B,H,W) matching ``shape`` (B,H,W) of the maps."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a bool torch.Tensor (B,H,W); got {type(masks).__name__}")
    if tuple(masks.shape) != tuple(shape):
        raise ValueError(f"masks must have the maps' shape {tuple(shape)}; got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() and not bool(torch.isfinite(masks).all()):
            raise ValueError("masks contain NaN or inf")
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("masks must be boolean (or 0/1 valued); got other values")
        masks = masks.bool()
    return masks


def check_boxes(boxes: object, batch: int, height: int, width: int) -> torch.Tensor:
    """Validate boxes (B,K,4) as x0,y0,x1,y1 in pixel-edge coordinates, rows of NaN as padding."""
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a float torch.Tensor (B,K,4); got {type(boxes).__name__}")
    if boxes.dim() == 2 and boxes.shape[-1] == 4:
        boxes = boxes[:, None]
    if boxes.dim() != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B,K,4) with B={batch}; got shape {tuple(boxes.shape)}")
    boxes = boxes.float()
    nan = torch.isnan(boxes)
    partial = nan.any(-1) & ~nan.all(-1)
    if bool(partial.any()):
        raise ValueError(f"boxes of images {_bad_images(partial)} are partly NaN: a padding row must be all NaN")
    valid = ~nan.all(-1)
    if bool(torch.isinf(boxes).any()):
        raise ValueError("boxes contain inf")
    b = torch.nan_to_num(boxes)
    wrong = valid & ((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1]))
    if bool(wrong.any()):
        raise ValueError(f"boxes of images {_bad_images(wrong)} have x1 < x0 or y1 < y0 (need x0,y0,x1,y1)")
    outside = valid & ((b[..., 0] < 0) | (b[..., 1] < 0) | (b[..., 2] > width) | (b[..., 3] > height))
    if bool(outside.any()):
        raise ValueError(
            f"boxes of images {_bad_images(outside)} lie outside the {height}x{width} image: boxes must be "
            "in pixel coordinates of the image the maps were computed for"
        )
    return boxes


def boxes_to_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rasterise NaN-padded boxes (B,K,4) to bool masks (B,H,W): the union of the boxes.

    Convention: coordinates are pixel edges (pixel column j spans [j, j+1]); a pixel belongs to a box
    when its centre lies inside it, so the box (10,10,20,20) covers pixels 10..19 in both axes.
    """
    boxes = check_boxes(boxes, boxes.shape[0] if boxes.dim() == 3 else 1, height, width)
    centres_x = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    centres_y = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))  # (B,K,1); NaN compares false
    inside_x = (centres_x >= x0) & (centres_x <= x1)  # (B,K,W)
    inside_y = (centres_y >= y0) & (centres_y <= y1)  # (B,K,H)
    return (inside_y[..., :, None] & inside_x[..., None, :]).any(1)


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
