"""A picture grid of a dataset's first images, with mask outlines and boxes, for eyeballing annotations.

A dataset with per-object annotations (``get_objects``, e.g. "scenes") shows every object's outline
and box, read through ``get_batch(indices, objects=True)`` so they follow any flip of the pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..inputs import to_display_images
from ..io import atomic_write
from .base import CamzooDataset
from .loading import loader

OUTLINE = np.array([255, 255, 0], dtype=np.uint8)  # mask outline: yellow
BOX = np.array([255, 0, 64], dtype=np.uint8)        # box: red


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of the mask with a 4-neighbour outside it, (B,H,W)."""
    m = mask.float()[:, None]
    inner = -torch.nn.functional.max_pool2d(-m, 3, stride=1, padding=1)  # erosion
    return (m - inner)[:, 0] > 0


def _instance_outlines(instances: torch.Tensor) -> torch.Tensor:
    """Pixels (B,H,W) on the outline of any object of an instance map (0 = background, k = object k-1)."""
    out = torch.zeros(instances.shape, dtype=torch.bool)
    for k in instances.unique().tolist():  # at most a few objects per image
        if k > 0:
            out |= _outline(instances == k)
    return out


def _first_items(dataset: CamzooDataset, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Images, outline pixels and boxes (NaN-padded) of the first n items: every object's when the
    dataset has per-object annotations, else the targets' mask and boxes."""
    if callable(getattr(dataset, "get_objects", None)):
        images, _, targets = dataset.get_batch(torch.arange(n), objects=True)
        return images, _instance_outlines(targets["instances"]), targets["object_boxes"]
    images, _, targets = next(iter(loader(dataset, batch_size=n)))  # the first batch = the first n items
    mask = targets.get("mask")
    return images, None if mask is None else _outline(mask), targets.get("boxes")


def render_grid(dataset: CamzooDataset, rows: int = 4, cols: int = 8, scale: int = 1, annotate: bool = True) -> np.ndarray:
    """(H,W,3) uint8 grid of the first rows*cols items, 2 px gaps."""
    n = min(rows * cols, len(dataset))
    images, outline, all_boxes = _first_items(dataset, n)
    pixels = to_display_images(images, dataset.mean, dataset.std).copy()
    size = pixels.shape[1]
    if annotate and outline is not None:
        pixels[outline.numpy()] = OUTLINE
    if annotate and all_boxes is not None:
        for i, boxes in enumerate(all_boxes.numpy()):
            for x0, y0, x1, y1 in boxes[~np.isnan(boxes).any(axis=1)]:
                c0, r0 = int(np.clip(np.floor(x0), 0, size - 1)), int(np.clip(np.floor(y0), 0, size - 1))
                c1, r1 = int(np.clip(np.ceil(x1) - 1, 0, size - 1)), int(np.clip(np.ceil(y1) - 1, 0, size - 1))
                pixels[i, r0, c0:c1 + 1] = BOX
                pixels[i, r1, c0:c1 + 1] = BOX
                pixels[i, r0:r1 + 1, c0] = BOX
                pixels[i, r0:r1 + 1, c1] = BOX
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    side, gap = pixels.shape[1], 2
    grid = np.full((rows * (side + gap) - gap, cols * (side + gap) - gap, 3), 255, dtype=np.uint8)
    for k in range(n):  # at most rows*cols tiles: a preview, not a hot path
        r, c = divmod(k, cols)
        grid[r * (side + gap): r * (side + gap) + side, c * (side + gap): c * (side + gap) + side] = pixels[k]
    return grid


def preview_grid(dataset: CamzooDataset, out: str | os.PathLike, rows: int = 4, cols: int = 8, scale: int = 1,
                 annotate: bool = True) -> Path:
    from PIL import Image

    grid = render_grid(dataset, rows, cols, scale, annotate)
    return atomic_write(out, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG", optimize=True))
