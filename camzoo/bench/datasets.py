"""One dataset's evaluation data during a run: its splits loaded once, its evaluation stream (and the
streams of ``[[models]]`` entries that prepare the same images their own way), and its gallery cell.

Why a module of its own: every model job of a dataset shares these (the first block of a stream is
loaded once and its memo shares the controls' map-only results across models), and a model's source
(camzoo.bench.sources) asks for the split it needs: the train split only when it trains.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import cached_property
from typing import Any
from collections.abc import Callable

import numpy as np
import torch

from .evaluation import EvalStream, Renormalised, cat_padded, fingerprint, first_images
from .specs import DatasetSpec


class DatasetData:
    """The loaded splits of one dataset; ``stream``: the plan's evaluation stream of a split."""

    def __init__(self, spec: DatasetSpec, stream: Callable[[Any], EvalStream]):
        self.spec, self._stream = spec, stream
        self.test = spec.load("test")
        self.stream = stream(self.test)
        self._prepared: dict[tuple, tuple[Any, EvalStream]] = {}  # (image size, mean, std) -> split, stream

    @cached_property
    def train(self) -> Any:
        """Loaded on first use: a loaded model is never trained."""
        return self.spec.load("train")

    @property
    def annotated(self) -> bool:
        """Whether the evaluation images have masks or boxes."""
        first = self.stream.first
        return first.masks is not None or first.boxes is not None

    def prepared(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Any, EvalStream]:
        """The test split and stream at ``size`` px normalised with ``mean``/``std``: the dataset's own
        when they are its own, else the same images prepared so (kept for the other models asking)."""
        if size == self.spec.image_size and (mean, std) == (tuple(self.test.mean), tuple(self.test.std)):
            return self.test, self.stream
        key = (size, mean, std)
        if key not in self._prepared:
            split = self.test if size == self.spec.image_size else replace(self.spec, image_size=size).load("test")
            if (mean, std) != (tuple(split.mean), tuple(split.std)):
                split = Renormalised(split, mean, std)
            self._prepared[key] = (split, self._stream(split))
        return self._prepared[key]


def gallery_cell(stream: EvalStream, keep_maps: int, gallery_images: int
                 ) -> tuple[dict[str, tuple[float, None]], dict[str, np.ndarray]]:
    """The dataset's image-set cell: the fingerprint of every evaluation image (one pass over the
    blocks), and the first ``keep_maps`` images with their ground truth for report.html's browser (the
    gallery plot shows the first ``gallery_images`` of those)."""
    from ..inputs import to_display_images

    keep = min(keep_maps, stream.count)
    digest, labels, kept = hashlib.sha256(), [], []
    for block in stream.blocks():
        fingerprint(block.images, digest=digest)
        labels.append(block.labels.cpu())
        if block.start < keep:
            kept.append(first_images(block, keep - block.start))
    labels_all = torch.cat(labels)
    kept = kept or [first_images(stream.first, 0)]  # eval.keep_maps = 0: no image is kept
    images = torch.cat([block.images for block in kept])
    first = stream.first
    arrays = {
        "images": to_display_images(images[:min(gallery_images, keep)], first.mean, first.std),
        "labels": labels_all[:min(gallery_images, keep)].numpy(),
        "class_names": np.array(first.classes),
        "fingerprint": np.array(fingerprint(labels_all, digest=digest)),
        # the first keep_maps evaluation images and their ground truth, for report.html's per-image browser
        "eval_images": to_display_images(images, first.mean, first.std),
        "eval_labels": labels_all[:keep].numpy(),
        **{f"eval_{name}": cat_padded([getattr(block, name) for block in kept]).cpu().numpy()
           for name in ("masks", "boxes") if getattr(first, name) is not None},
    }
    return {"eval_images": (float(stream.count), None)}, arrays
