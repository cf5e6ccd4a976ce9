"""Ground truth (object masks and boxes) as camzoo passes it around: validation and rasterisation.

Why its own module: the metrics score against ground truth and the ``oracle`` control *is* the
ground truth, and methods must not import metrics; both read the one set of rules here. Boxes are
x0,y0,x1,y1 in pixel-edge coordinates, (B,K,4), rows of NaN as padding.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def bad_images(mask: torch.Tensor) -> list[int]:
    """Indices (along dim 0) where ``mask`` is true anywhere, for error messages."""
    return torch.nonzero(mask.flatten(1).any(1)).flatten().tolist()[:10]


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
        raise ValueError(f"boxes of images {bad_images(partial)} are partly NaN: a padding row must be all NaN")
    valid = ~nan.all(-1)
    if bool(torch.isinf(boxes).any()):
        raise ValueError("boxes contain inf")
    b = torch.nan_to_num(boxes)
    wrong = valid & ((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1]))
    if bool(wrong.any()):
        raise ValueError(f"boxes of images {bad_images(wrong)} have x1 < x0 or y1 < y0 (need x0,y0,x1,y1)")
    outside = valid & ((b[..., 0] < 0) | (b[..., 1] < 0) | (b[..., 2] > width) | (b[..., 3] > height))
    if bool(outside.any()):
        raise ValueError(
            f"boxes of images {bad_images(outside)} lie outside the {height}x{width} image: boxes must be "
            "in pixel coordinates of the image the maps were computed for"
        )
    return boxes


def scale_boxes(boxes: object, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Boxes (K,4) x0,y0,x1,y1 of a ``old`` = (width, height) image, in pixel-edge coordinates of the
    same image resized to ``new`` = (width, height); float32.

    Why not ``boxes * (new / old)`` in float32: the ratio is rounded first, so a box ending on the far
    edge leaves the image (423 * float32(224 / 423) = 224.00002), and a box inside its photo is then
    refused. Here ``x * new / old`` is computed in float64: the product is exact (a float32 coordinate
    times an integer side fits float64's mantissa), the division is rounded once, and rounding is
    monotone, so 0 and the far edge map exactly onto 0 and the new side and a box inside its image stays
    inside; no tolerance, no clamp.
    """
    scale = torch.tensor([new[0], new[1], new[0], new[1]], dtype=torch.float64)
    side = torch.tensor([old[0], old[1], old[0], old[1]], dtype=torch.float64)
    found = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).double()
    return (found * scale / side).float()


def covered_pixels(boxes: torch.Tensor) -> torch.Tensor:
    """Per box (..., 4): whether it covers a pixel centre in both axes, the rule of
    :func:`boxes_to_masks` and of MaxBoxAcc's ground-truth boxes (a box between two pixel centres
    covers nothing, and an image whose every box does so has no object at that size)."""
    first = torch.ceil(boxes[..., :2].double() - 0.5)
    last = torch.floor(boxes[..., 2:].double() - 0.5)
    return (last >= first).all(-1)


def boxes_to_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rasterise NaN-padded boxes (B,K,4) to bool masks (B,H,W): the union of the boxes.

    Convention: coordinates are pixel edges (pixel column j spans [j, j+1]); a pixel belongs to a box
    when its centre lies inside it, so the box (10,10,20,20) covers pixels 10..19 in both axes.

    Args:
        boxes: (B,K,4) float tensor of x0,y0,x1,y1 in pixel-edge coordinates, rows of NaN as padding
            (a padding row is all NaN); every box within the ``height`` x ``width`` image, x1 >= x0,
            y1 >= y0. A 2-D (1,4) tensor is read as one box of one image.
        height: H of the masks, the image the boxes are in.
        width: W of the masks.

    Returns:
        (B,H,W) bool on the boxes' device: True where a pixel centre lies in any of the image's boxes.

    Raises:
        ValueError: a wrong shape; partly NaN rows; inf; x1 < x0 or y1 < y0; a box outside the image.
    """
    boxes = check_boxes(boxes, boxes.shape[0] if boxes.dim() == 3 else 1, height, width)
    centres_x = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    centres_y = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))  # (B,K,1); NaN compares false
    inside_x = (centres_x >= x0) & (centres_x <= x1)  # (B,K,W)
    inside_y = (centres_y >= y0) & (centres_y <= y1)  # (B,K,H)
    return (inside_y[..., :, None] & inside_x[..., None, :]).any(1)


# {"mask": (B,H,W) bool, "boxes": (B,K,4) float x0,y0,x1,y1 pixel edges, rows of NaN as padding};
# either key may be absent or None.
GroundTruth = Mapping[str, torch.Tensor | None]
GROUND_TRUTH_KEYS = ("mask", "boxes")


def check_ground_truth(ground_truth: GroundTruth | None, images: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Validate ground truth against a (B,3,H,W) batch; return it on the images' device (None if empty).

    Why here: every method is called with the same ground truth by the benchmark, so a mask for the
    wrong batch or the wrong image size must fail at the call, not as a plausible oracle row. A
    ``None`` value counts as absent, so ``{"mask": dataset.masks, "boxes": dataset.boxes}`` works for
    datasets that have only one of them.
    """
    if ground_truth is None:
        return None
    if not isinstance(ground_truth, Mapping):
        raise TypeError(
            "ground_truth must be a dict with 'mask' ((B,H,W) bool) and/or 'boxes' ((B,K,4) x0,y0,x1,y1, "
            f"NaN-padded); got {type(ground_truth).__name__}"
        )
    unknown = sorted(str(key) for key in ground_truth if key not in GROUND_TRUTH_KEYS)
    if unknown:
        raise ValueError(
            f"unknown ground_truth key(s) {unknown}; use 'mask' ((B,H,W) bool) and/or 'boxes' ((B,K,4) "
            "x0,y0,x1,y1 in pixel-edge coordinates, NaN-padded)"
        )
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    truth: dict[str, torch.Tensor] = {}
    mask = ground_truth.get("mask")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"ground_truth['mask'] must be a bool torch.Tensor (B,H,W); got {type(mask).__name__}")
        if tuple(mask.shape) != (batch, height, width):
            raise ValueError(
                f"ground_truth['mask'] must be (B,H,W) = ({batch}, {height}, {width}), one mask per image at "
                f"the images' resolution; got {tuple(mask.shape)}"
            )
        truth["mask"] = check_masks(mask, mask.shape).to(images.device)
    boxes = ground_truth.get("boxes")
    if boxes is not None:
        if not isinstance(boxes, torch.Tensor):
            raise TypeError(f"ground_truth['boxes'] must be a float torch.Tensor (B,K,4); got {type(boxes).__name__}")
        if boxes.ndim not in (2, 3) or boxes.shape[0] != batch:
            raise ValueError(
                f"ground_truth['boxes'] must be (B,K,4) with B = {batch}, one row of boxes per image; got "
                f"{tuple(boxes.shape)}"
            )
        truth["boxes"] = check_boxes(boxes, batch, height, width).to(images.device)
    return truth or None
