"""One dataset's evaluation data during a run: its splits loaded once, its evaluation stream (and the
streams of ``[[models]]`` entries that prepare the same images their own way), and its gallery cell.

Why a module of its own: every model job of a dataset shares these (the first block of a stream is
loaded once and its memo shares the controls' map-only results across models), and a model's source
(camzoo.bench.sources) asks for the split it needs: the train split only when it trains.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
from dataclasses import replace
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .evaluation import EvalStream, Renormalised, cat_padded, fingerprint, first_images
from .specs import DatasetSpec


class DatasetData:
    """The loaded splits of one dataset; ``stream``: the plan's evaluation stream of a split."""

    def __init__(self, spec: DatasetSpec, stream: Callable[[Any], EvalStream]):
        self.spec, self._stream = spec, stream
        self.test = class_order(spec.load("test"))
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
            split = self.test if size == self.spec.image_size else class_order(replace(self.spec, image_size=size).load("test"))
            if (mean, std) != (tuple(split.mean), tuple(split.std)):
                split = Renormalised(split, mean, std)
            self._prepared[key] = (split, self._stream(split))
        return self._prepared[key]


ORDER_SEED = 0  # the evaluation images of an on-disk folder: the same ones on every run and machine


def stratified_order(labels: Sequence[int], seed: int = ORDER_SEED) -> list[int]:
    """Indices of ``labels`` such that every prefix holds each class in proportion to its share, within
    one image: after k images, class c (a share p of the labels) has between k·p − 1 and k·p + 1 of them.

    Why: a class-sorted folder's first N images were N of its first class (``--images 4``: four
    astronauts); now the first N images sample every class, and so do the first ``game_images`` and
    ``keep_maps`` of them. How: Tijdeman's solution of the chairman assignment problem (1980), an
    earliest-deadline rule: image k goes to the class, among those owed at least δ = 1/(2(m−1)) images
    (m classes), whose debt would first exceed 1 − δ. Images within a class, and ties between classes,
    in a seeded random order, so the same folder gives the same images on every run and machine.
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(labels)
    classes = np.unique(values).tolist()
    members = {c: np.flatnonzero(values == c)[rng.permutation(int((values == c).sum()))].tolist() for c in classes}
    if len(classes) <= 1:
        return [i for c in classes for i in members[c]]
    total, delta = len(values), Fraction(1, 2 * (len(classes) - 1))
    tie = dict(zip(classes, rng.permutation(len(classes)).tolist()))
    waiting = [((delta * total) / len(members[c]), tie[c], c) for c in classes]  # (release step, tie, class)
    heapq.heapify(waiting)
    ready: list[tuple[Fraction, int, Any]] = []  # (deadline step, tie, class)
    taken = dict.fromkeys(classes, 0)
    order = []
    for step in range(1, total + 1):
        while waiting and (waiting[0][0] <= step or not ready):
            _, _, c = heapq.heappop(waiting)
            heapq.heappush(ready, (((taken[c] + 1 - delta) * total) / len(members[c]), tie[c], c))
        _, _, c = heapq.heappop(ready)
        order.append(members[c][taken[c]])
        taken[c] += 1
        if taken[c] < len(members[c]):
            heapq.heappush(waiting, (((taken[c] + delta) * total) / len(members[c]), tie[c], c))
    return order


@lru_cache(maxsize=8)
def _cached_order(labels: tuple[int, ...]) -> list[int]:
    """The plan, the run and its notes order the same split: computed once (50,000 images: ~1 s)."""
    return stratified_order(labels)


def class_order(split: Any) -> Any:
    """A file-backed split (its ``records`` sorted by class folder) with its records, sorted by path, in
    :func:`stratified_order`, so the first ``eval.images`` are a stratified sample (idempotent: the order
    is a function of the files); other splits (generated or array datasets, already in random class
    order) as they are."""
    records = getattr(split, "records", None)
    if not records or len(records) < 2:
        return split
    records = sorted(records, key=lambda record: str(record.path))  # so the order depends on the files alone
    order = _cached_order(tuple(record.label for record in records))
    view = copy.copy(split)  # same class and attributes; only the order of its items differs
    view.records = [records[i] for i in order]
    return view


def split_notes(split: Any, used: int, asked: int | None = None, refuse: str = 'unannotated="error"') -> list[str]:
    """What a run takes from an on-disk split, where that is not simply the first ``eval.images``: ``used``
    images when ``asked`` for more, or a sample of the split (how chosen, per class), and what its loader
    left out and why (``refuse``: how the reader sets the option that refuses those instead)."""
    records = getattr(split, "records", None)
    if records is None:
        return []
    notes = []
    if asked is not None and used < asked:
        notes.append(f"{used} evaluation images, all of its test split (eval.images asks for {asked})")
    elif used < len(records):
        chosen = [record.label for record in class_order(split).records[:used]]
        labels = sorted(set(chosen))
        shown = (", ".join(f"{split.classes[label]} {chosen.count(label)}" for label in labels) if len(labels) <= 8
                 else f"{len(labels)} classes")
        notes.append(f"{used} of {len(records)} test images, taken class by class in proportion "
                     f"(seed {ORDER_SEED}): {shown}")
    dropped = split.dropped_note(refuse) if callable(getattr(split, "dropped_note", None)) else None
    return notes + ([dropped] if dropped else [])


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
        # how the images were chosen and what the loader left out, for summary.md's header
        "notes": np.array(split_notes(getattr(stream, "split", None), stream.count), dtype=str),
        # the first keep_maps evaluation images and their ground truth, for report.html's per-image browser
        "eval_images": to_display_images(images, first.mean, first.std),
        "eval_labels": labels_all[:keep].numpy(),
        **{f"eval_{name}": cat_padded([getattr(block, name) for block in kept]).cpu().numpy()
           for name in ("masks", "boxes") if getattr(first, name) is not None},
    }
    return {"eval_images": (float(stream.count), None)}, arrays
