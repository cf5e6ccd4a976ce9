"""Planted shortcuts (Zhou et al., AAAI 2022, "Do feature attribution methods correctly attribute
features?"): an in-memory dataset relabelled so that a planted artefact is its only reliable signal.

Why: on a natural dataset nobody knows which pixels a model uses. Here the labels are redrawn at
random, independent of the image content, and an artefact is added with a class-dependent
probability (class 1: ``rate``, class 0: ``1 - rate``). The best a model can do without the artefact
is the larger class share (the best constant accuracy); with it, about ``rate``. A model above the
best constant must use the artefact, and the artefact's region is then the ground truth of the map.

Artefacts (``KINDS``), each in a region fixed per kind and image size:

- ``watermark``: a text-like glyph (white strokes on a dimmed plate) in the bottom-right corner;
- ``stripes``: vertical stripes plus noise added in a horizontal band near the bottom edge;
- ``centre``: a brightness shift in a central disc.

The region is defined in every image, marked or not, so it serves as every image's mask and box.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from .base import ArrayDataset

KINDS = ("watermark", "stripes", "centre")
CLASSES = ("group_a", "group_b")  # neutral: the name must not tell which group carries the artefact
CENTRE_SHIFT = 72  # grey levels added inside the centre disc
STRIPE_AMPLITUDE, STRIPE_NOISE = 70.0, 20.0  # grey levels: the stripes' +-amplitude and the noise's std
PLATE_DIM = 0.35  # the watermark's plate keeps this share of the brightness beneath it
# a 5x7 text-like glyph pair ("AI"-like strokes); rows top to bottom
GLYPH = np.array([
    [0, 1, 1, 0, 0, 1, 1],
    [1, 0, 0, 1, 0, 0, 1],
    [1, 1, 1, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 1, 1],
], dtype=bool)


def _check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown shortcut {kind!r}; choose one of {', '.join(KINDS)}")
    return str(kind)


def _box(kind: str, size: int) -> tuple[int, int, int, int]:
    """The artefact's bounding box (x0, y0, x1, y1), pixel edges, at ``size`` px."""
    margin = max(1, size // 16)
    if kind == "watermark":
        height = max(GLYPH.shape[0] + 2, size * 3 // 16)  # 6 px at 32, 12 at 64
        width = max(GLYPH.shape[1] + 2, round(height * (GLYPH.shape[1] + 2) / (GLYPH.shape[0] + 2)))
        return size - margin - width, size - margin - height, size - margin, size - margin
    if kind == "stripes":
        height = max(2, size // 4)
        return 0, size - margin - height, size, size - margin
    ys, xs = torch.nonzero(shortcut_region(kind, size), as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def shortcut_region(kind: str, size: int) -> torch.Tensor:
    """(size, size) bool: the pixels the artefact ``kind`` may change at ``size`` px (every image's ground truth).

    Args:
        kind: one of ``KINDS``.
        size: the images' side in pixels.

    Returns:
        The region: the watermark's plate, the stripes' band or the centre disc.
    """
    kind = _check_kind(kind)
    region = torch.zeros(size, size, dtype=torch.bool)
    if kind == "centre":
        centre = (size - 1) / 2
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        return (ys - centre) ** 2 + (xs - centre) ** 2 <= (size / 4) ** 2
    x0, y0, x1, y1 = _box(kind, size)
    region[y0:y1, x0:x1] = True
    return region


def _glyph(height: int, width: int) -> np.ndarray:
    """The glyph's strokes (height, width) bool, nearest-scaled into the plate with a one-cell border."""
    padded = np.pad(GLYPH, 1)
    rows, cols = np.arange(height) * padded.shape[0] // height, np.arange(width) * padded.shape[1] // width
    return padded[rows[:, None], cols[None]]


def _draw(kind: str, pixels: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The artefact drawn on ``pixels`` (M,3,S,S) uint8 (the marked images), inside ``region`` only."""
    size = pixels.shape[-1]
    values = pixels.astype(np.float32)
    if kind == "centre":
        values += CENTRE_SHIFT
    elif kind == "stripes":
        period = max(2, size // 16)
        columns = np.where((np.arange(size) // period) % 2 == 0, STRIPE_AMPLITUDE, -STRIPE_AMPLITUDE)
        noise = rng.normal(0.0, STRIPE_NOISE, size=(pixels.shape[0], 1, size, size)).astype(np.float32)
        values += columns[None, None, None, :] + noise
    else:
        x0, y0, x1, y1 = _box(kind, size)
        strokes = np.zeros((size, size), dtype=bool)
        strokes[y0:y1, x0:x1] = _glyph(y1 - y0, x1 - x0)
        values *= PLATE_DIM
        values[:, :, strokes] = 255.0
    out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.where(region[None, None], out, pixels)


def _stream(seed: int, kind: str, split: str) -> np.random.Generator:
    """One random stream per (seed, kind, split), so splits draw disjoint labels and noise."""
    return np.random.default_rng([int(seed), zlib.crc32(f"{kind}:{split}".encode())])


def _balanced_labels(original: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two classes drawn at random, half of each original class in each (the odd image alternating),
    so the new labels say nothing about the content."""
    labels = np.zeros(original.shape[0], dtype=np.int64)
    odd = int(rng.integers(2))
    for value in np.unique(original):
        members = rng.permutation(np.flatnonzero(original == value))
        half = (members.shape[0] + odd) // 2
        odd ^= members.shape[0] % 2
        labels[members[:half]] = 1
    return labels


def plant_shortcut(dataset: ArrayDataset, kind: str, rate: float = 0.9, seed: int = 0) -> ArrayDataset:
    """``dataset`` relabelled at random into two classes, with artefact ``kind`` planted at a class-dependent rate.

    Args:
        dataset: an in-memory dataset (its images are copied; its own labels only stratify the draw).
        kind: the artefact, one of ``KINDS`` ("watermark", "stripes", "centre").
        rate: the share of class-1 images marked (class 0: ``1 - rate``), rounded per class; in [0.5, 1].
        seed: the reassignment's seed (each split of a dataset draws its own stream).

    Returns:
        An ``ArrayDataset`` with classes ``CLASSES``, balanced random labels (half of every original
        class in each), the artefact in the marked images, every image's mask the artefact's region and
        its box the region's box; attributes ``shortcut`` (the kind), ``shortcut_region`` (S,S) bool,
        ``artefact`` (N,) bool (which images are marked) and ``original_labels``.
    """
    if not isinstance(dataset, ArrayDataset):
        raise TypeError(f"plant_shortcut needs an in-memory ArrayDataset; got {type(dataset).__name__}")
    kind = _check_kind(kind)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.5 <= rate <= 1:
        raise ValueError(f"shortcut_rate must be a number in [0.5, 1] (the marked share of class 1), got {rate!r}")
    size, count = dataset.image_size, len(dataset)
    rng = _stream(seed, kind, dataset.split)
    original = dataset.labels.numpy()
    labels = _balanced_labels(original, rng)
    artefact = np.zeros(count, dtype=bool)
    for value, share in ((1, rate), (0, 1 - rate)):
        members = rng.permutation(np.flatnonzero(labels == value))
        artefact[members[:int(round(share * members.shape[0]))]] = True
    region = shortcut_region(kind, size)
    images = dataset.images.numpy().copy()
    images[artefact] = _draw(kind, images[artefact], region.numpy(), rng)
    x0, y0, x1, y1 = _box(kind, size)
    planted = ArrayDataset(
        torch.from_numpy(images), torch.from_numpy(labels), CLASSES, dataset.mean, dataset.std,
        masks=region.expand(count, size, size), boxes=torch.tensor([[[x0, y0, x1, y1]]], dtype=torch.float32).expand(
            count, 1, 4), augment=dataset.augment, name=dataset.name, split=dataset.split)
    planted.shortcut, planted.shortcut_region = kind, region
    planted.artefact, planted.original_labels = torch.from_numpy(artefact), dataset.labels.clone()
    return planted


__all__ = ["CLASSES", "KINDS", "plant_shortcut", "shortcut_region"]
