"""A picture grid of a dataset's first images, with mask outlines and boxes, for eyeballing annotations.

A dataset with per-object annotations (``get_objects``, e.g. "scenes") shows every object's outline
and box, read through ``get_batch(indices, objects=True)`` so they follow any flip of the pixels.
A dataset with part maps and a renderer ("parts") shows each row of images above its part maps, and
a last row of interventions: the first image, then it with each part slot removed in turn, then with
every background object removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..inputs import to_display_images
from ..io import atomic_write
from . import parts_world as world
from .base import CamzooDataset
from .loading import loader

OUTLINE = np.array([255, 255, 0], dtype=np.uint8)  # mask outline: yellow
BOX = np.array([255, 0, 64], dtype=np.uint8)        # box: red
# Part-map ids as colours: background black, body grey, the five slots bright, distractors muted.
PART_COLOURS = np.array([[0, 0, 0], [128, 128, 128], [255, 140, 0], [255, 255, 255], [255, 230, 0], [40, 90, 255],
                         [0, 230, 230]] + [[90 + 20 * (k % 4), 40 + 30 * (k % 3), 110 + 25 * (k % 5)] for k in range(25)],
                        dtype=np.uint8)


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
    return _assemble(pixels, rows, cols, scale)


def _assemble(tiles: np.ndarray, rows: int, cols: int, scale: int) -> np.ndarray:
    """(H,W,3) uint8 grid of tiles (K,S,S,3) laid out row by row, 2 px white gaps."""
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    side, gap = tiles.shape[1], 2
    grid = np.full((rows * (side + gap) - gap, cols * (side + gap) - gap, 3), 255, dtype=np.uint8)
    for k in range(min(len(tiles), rows * cols)):  # at most rows*cols tiles: a preview, not a hot path
        r, c = divmod(k, cols)
        grid[r * (side + gap): r * (side + gap) + side, c * (side + gap): c * (side + gap) + side] = tiles[k]
    return grid


def _showcase(part_maps: torch.Tensor) -> int:
    """The first image whose map shows every part slot and a distractor (else the first image), so
    that each intervention of the preview's last row visibly changes it."""
    slots = range(world.FIRST_SLOT_ID, world.FIRST_OBJECT_ID)
    shown = torch.stack([(part_maps == k).flatten(1).any(1) for k in slots], 1).all(1)
    shown &= (part_maps >= world.FIRST_OBJECT_ID).flatten(1).any(1)
    return int(shown.nonzero()[0, 0]) if shown.any() else 0


def render_parts_grid(dataset: CamzooDataset, rows: int = 4, cols: int = 8, scale: int = 1) -> np.ndarray:
    """(H,W,3) uint8: ``rows`` rows of images, each above their part maps (coloured by id), then one
    row of interventions on one image (as stored, each slot removed in turn, all distractors
    removed). Why: the part maps and exact removals are this dataset's ground truth."""
    n = min(rows * cols, len(dataset))
    images = dataset.images[:n].permute(0, 2, 3, 1).numpy()
    maps = PART_COLOURS[np.minimum(dataset.part_maps[:n].numpy(), len(PART_COLOURS) - 1)]
    slots = dataset.present.shape[1]
    removed = np.zeros((slots + 2, slots), dtype=bool)
    removed[np.arange(1, slots + 1), np.arange(slots)] = True
    no_background = np.zeros((slots + 2, dataset.max_background), dtype=bool)
    no_background[-1] = True
    first = _showcase(dataset.part_maps[:256])
    edited, _ = dataset.render(np.full(slots + 2, first, dtype=np.int64), removed, no_background)
    width = max(cols, slots + 2)
    blank = np.full((width, *images.shape[1:]), 255, dtype=np.uint8)
    tiles = []
    for r in range(-(-n // cols)):
        for source in (images, maps):
            row = blank.copy()
            part = source[r * cols:(r + 1) * cols]
            row[:len(part)] = part
            tiles.append(row)
    last = blank.copy()
    last[:slots + 2] = edited.permute(0, 2, 3, 1).numpy()
    tiles.append(last)
    return _assemble(np.concatenate(tiles), len(tiles), width, scale)


def preview_grid(dataset: CamzooDataset, out: str | os.PathLike, rows: int = 4, cols: int = 8, scale: int = 1,
                 annotate: bool = True) -> Path:
    from PIL import Image

    if callable(getattr(dataset, "render", None)) and hasattr(dataset, "part_maps"):
        grid = render_parts_grid(dataset, rows, cols, scale)
    else:
        grid = render_grid(dataset, rows, cols, scale, annotate)
    return atomic_write(out, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG", optimize=True))
