"""Which images' ground truth covers no pixel once resized, found from the annotation files alone.

Why: at a small image size a thin box falls between two pixel centres and a small mask vanishes under
nearest-neighbour resizing. The localisation metrics cannot score such an image, and a benchmark used
to stop half-way on it, naming batch indices that no rerun could avoid. Here the same rules the items
follow (camzoo.data.transforms, camzoo.groundtruth) run on the records, without decoding a photo, so
``camzoo bench --check`` (and every run's plan) and ``camzoo datasets check --verify`` can name the
files, and the smallest image size that keeps them, before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..groundtruth import covered_pixels, scale_boxes
from .annotated import probe_image
from .files import FileDataset, Record
from .transforms import resize_mask

MAX_SUGGESTED_SIZE = 1024  # the largest image side a remedy proposes
BARE = "has neither box nor mask (kept by unannotated=\"keep\")"  # why an unannotated image kept is empty


@dataclass(frozen=True)
class Truth:
    """One record's ground truth in original pixels: its boxes (clipped as the items clip them, or the
    mask's tight box) and its mask, or neither (an unannotated image kept)."""

    size: tuple[int, int]  # (width, height) as displayed
    boxes: np.ndarray  # (K,4) pixel edges
    mask: np.ndarray | None

    def empty_at(self, side: int) -> str | None:
        """Why nothing of the object is left at ``side`` x ``side`` px, or None when something is."""
        if self.mask is None and not len(self.boxes):
            return BARE
        if self.mask is not None and not bool(resize_mask(self.mask, side).any()):
            return f"its mask covers no pixel at {side} px"
        scaled = scale_boxes(self.boxes, self.size, (side, side))
        if not bool(covered_pixels(scaled).any()):
            widths = ", ".join(f"{float(b[2] - b[0]):.2g}x{float(b[3] - b[1]):.2g} px" for b in scaled[:3])
            many = len(scaled) > 1
            return f"its box{'es' if many else ''} ({widths} at {side} px) cover{'' if many else 's'} no pixel centre"
        return None

    def safe_side(self) -> float:
        """A side from which on the object never vanishes: each box of at least 1 px covers a pixel centre,
        and a mask resized to its own size or larger loses no pixel (inf: never, e.g. nothing annotated)."""
        if self.mask is None and not len(self.boxes):
            return math.inf
        width, height = self.size
        spans = self.boxes[:, 2:] - self.boxes[:, :2]
        side = min((math.ceil(max(width / w, height / h)) for w, h in spans if w > 0 and h > 0), default=math.inf)
        if self.mask is not None:
            side = max(side, max(width, height)) if self.mask.any() else math.inf
        return side


def truth_of(split: FileDataset, record: Record) -> Truth | str:
    """A record's ground truth from its files (the image's header, its mask file), or why it cannot be read."""
    size = probe_image(record.path, False)
    if isinstance(size, str):
        return size
    width, height = size
    mask = None if record.mask_path is None else split._read_mask(record, size)
    if record.boxes is not None:
        boxes = np.clip(np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4), 0, [width, height, width, height])
    elif mask is not None:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        boxes = (np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=np.float32) if rows.size
                 else np.zeros((0, 4), np.float32))
    else:
        boxes = np.zeros((0, 4), np.float32)
    return Truth((width, height), boxes, mask)


@dataclass(frozen=True)
class Vanished:
    """The images whose ground truth covers no pixel at ``side`` px: (index, record name, why) each, and
    the smallest side up to :data:`MAX_SUGGESTED_SIZE` from which on every one of them that has a box or
    mask keeps a pixel (None: none)."""

    side: int
    images: tuple[tuple[int, str, str], ...]
    remedy_side: int | None

    def __bool__(self) -> bool:
        return bool(self.images)

    def text(self, how: str = "--image-size {side}", shown: int = 3) -> str:
        """One line: how many, which files (with their rows), and what to do (``how``: how the reader sets
        the size, "{side}" standing for it)."""
        small = [f"{name}: {why}" for _, name, why in self.images if why != BARE]
        bare = [name for _, name, why in self.images if why == BARE]
        parts = []
        if small:
            bigger = (f"use {how.format(side=self.remedy_side)} or larger (the smallest side from which on every "
                      "one keeps a pixel)" if self.remedy_side else f"no side up to {MAX_SUGGESTED_SIZE} px keeps them")
            parts.append(f"at {self.side} px the object of {len(small)} image(s) covers no pixel: {_listed(small, shown)}"
                         f". Remedy: {bigger}; or enlarge those boxes or masks")
        if bare:
            parts.append(f"{len(bare)} image(s) have neither box nor mask but are kept (unannotated=\"keep\"): "
                         f"{_listed(bare, shown)}. Remedy: annotate them, or leave them out (unannotated=\"drop\")")
        return "the localisation metrics cannot score every image: " + "; and ".join(parts)


def _listed(items: Sequence[str], shown: int) -> str:
    return "; ".join(items[:shown]) + (f"; ... and {len(items) - shown} more" if len(items) > shown else "")


def vanished(split: object, indices: Iterable[int], side: int) -> Vanished:
    """The images among ``indices`` of a file-backed split whose ground truth covers no pixel at ``side``
    px (a split without records or annotations: none)."""
    records: Sequence[Record] | None = getattr(split, "records", None)
    if records is None or not getattr(split, "annotations", ()) or not isinstance(split, FileDataset):
        return Vanished(side, (), None)
    found, truths = [], []
    for index in indices:
        truth = truth_of(split, records[index])
        if isinstance(truth, str):  # an unreadable file is reported where it is read
            continue
        why = truth.empty_at(side)
        if why is not None:
            found.append((index, records[index].record, why))
            if why != BARE:
                truths.append(truth)
    return Vanished(side, tuple(found), remedy_side(truths, side) if truths else None)


def remedy_side(truths: Sequence[Truth], side: int) -> int | None:
    """The smallest side above ``side`` from which on (every larger side too: a thin box reappears and
    vanishes again as pixel centres move) every one of ``truths`` has an object; None past
    :data:`MAX_SUGGESTED_SIZE`."""
    bound = max(t.safe_side() for t in truths)
    if bound > MAX_SUGGESTED_SIZE:
        return None
    found = int(bound)
    while found - 1 > side and all(t.empty_at(found - 1) is None for t in truths):
        found -= 1
    return max(found, side + 1)


__all__ = ["BARE", "MAX_SUGGESTED_SIZE", "Truth", "Vanished", "remedy_side", "truth_of", "vanished"]
