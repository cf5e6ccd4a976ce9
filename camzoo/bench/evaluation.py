"""The evaluation images of a benchmark and their explanations: what every method of every model sees.

Why a module of its own: the runner decides *which* cells to compute; this says *on what* (the first
N test images, streamed in blocks on the device, :class:`EvalStream`) and *how the maps are made*
(one pass for the gradient family, timed per batch: :func:`explain_group`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..modelutil import synchronize


@dataclass
class EvalSet:
    """Evaluation images every method of every model explains, on the device: the first N of the test
    split, or one block of them (images ``start`` .. ``start + len``) when they stream."""

    images: torch.Tensor  # (N,3,H,W) normalised, on the device
    labels: torch.Tensor  # (N,)
    masks: torch.Tensor | None  # (N,H,W) bool
    boxes: torch.Tensor | None  # (N,K,4) NaN-padded
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    # results of map-only metrics by the maps' content, shared by every model on these images (the
    # centre, edges and oracle controls' maps are the same for every model; metrics.score_maps)
    memo: dict = field(default_factory=dict, repr=False, compare=False)
    start: int = 0  # the index of its first image in the evaluation set
    # The object track (camzoo.bench.objects): one entry per (image, object) pair. ``targets``: what each
    # map explains (one output target per pair; None: the class in ``labels``); ``other_masks``: the
    # pair's other objects (N,H,W) bool. Its maps are scored alone, without the model's games.
    targets: Any = field(default=None, repr=False, compare=False)
    other_masks: torch.Tensor | None = field(default=None, repr=False, compare=False)
    # A planted shortcut's artefact region in each image (N,H,W) bool (camzoo.data.shortcuts): shortcut_share.
    regions: torch.Tensor | None = field(default=None, repr=False, compare=False)
    # The parts track (camzoo.bench.parts_track): the images as a parts world, with the calibration split
    parts: Any = field(default=None, repr=False, compare=False)


def load_eval_set(test_split, count: int, device: torch.device, start: int = 0,
                  batch_size: int | None = None) -> EvalSet:
    """Images ``start`` .. ``count`` of the test split on the device, read ``batch_size`` at a time
    (None: in one batch) so that a GPU run's loader workers decode them in parallel."""
    from ..data import loader

    subset = torch.utils.data.Subset(test_split, range(start, min(count, len(test_split))))
    batches = list(loader(subset, batch_size=batch_size or len(subset), shuffle=False, device=device))
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    truth = {key: cat_padded([b[2][key] for b in batches]) for key in ("mask", "boxes") if key in batches[0][2]}
    region = getattr(test_split, "shortcut_region", None)  # a planted shortcut's: the same in every image
    regions = None if region is None else region.to(device).expand(images.shape[0], *region.shape)
    return EvalSet(
        images=images, labels=labels, masks=truth.get("mask"), boxes=truth.get("boxes"),
        mean=tuple(test_split.mean), std=tuple(test_split.std), classes=list(test_split.classes), start=start,
        regions=regions,
    )


def cat_padded(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate batches; boxes (B,K,4) NaN-padded to the largest K first (masks pass through)."""
    if len(parts) == 1 or parts[0].ndim != 3 or parts[0].shape[-1] != 4 or parts[0].dtype == torch.bool:
        return torch.cat(parts) if len(parts) > 1 else parts[0]
    k = max(part.shape[1] for part in parts)
    return torch.cat([torch.nn.functional.pad(part, (0, 0, 0, k - part.shape[1]), value=float("nan")) for part in parts])


class EvalStream:
    """The evaluation images (the first ``count`` of a test split) as blocks of ``block`` images on the
    device. Why: a 50,000-image validation set does not fit on a device at once, and peak memory must
    not grow with the number of images. The first block is loaded once and kept (every model reads it,
    its memo shares the controls' map-only results across models; a set that fits in one block is
    never read twice); later blocks are read again for each model and dropped after use."""

    def __init__(self, split: Any, count: int, block: int, device: torch.device, batch_size: int | None = None):
        self.split, self.count, self.block, self.device = split, min(count, len(split)), block, device
        self.batch_size = batch_size
        self._first: EvalSet | None = None

    @property
    def first(self) -> EvalSet:
        if self._first is None:
            self._first = load_eval_set(self.split, min(self.block, self.count), self.device, 0, self.batch_size)
        return self._first

    @property
    def last_start(self) -> int:
        """The first image of the last block: there every method's cell is complete as soon as it
        is scored (``score_model`` hands it over then)."""
        return max(0, (self.count - 1) // self.block * self.block)

    def blocks(self) -> Iterator[EvalSet]:
        """Every block in order (block 0 from memory)."""
        for start in range(0, self.count, self.block):
            yield self.first if start == 0 else load_eval_set(self.split, min(start + self.block, self.count),
                                                              self.device, start, self.batch_size)


class Renormalised(torch.utils.data.Dataset):
    """A split's items normalised with another mean/std (a ``[[models]]`` entry's own): the split's
    normalisation undone, the entry's applied. One mean/std value: a grayscale model's, whose images
    become their luma first, as ``camzoo.explain`` gives them (``inputs.pixels_for_model``). Module
    level, so loader workers can pickle it."""

    def __init__(self, split: Any, mean: Sequence[float], std: Sequence[float]):
        self.split, self.mean, self.std = split, tuple(mean), tuple(std)
        self.classes = list(split.classes)
        for name in ("annotations", "class_map", "num_model_classes", "image_size", "skipped", "shortcut_region"):
            if hasattr(split, name):
                setattr(self, name, getattr(split, name))
        self._undo = (torch.tensor(split.std).view(-1, 1, 1), torch.tensor(split.mean).view(-1, 1, 1))
        self._apply = (torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        from ..inputs import pixels_for_model

        image, label, target = self.split[index]
        (scale, shift), (mean, std) = self._undo, self._apply
        pixels = pixels_for_model((image * scale + shift)[None], len(self.mean))[0]
        return (pixels - mean) / std, label, target


def fingerprint(*tensors: torch.Tensor, digest: Any = None) -> str:
    """Short hash of tensors' bytes: proves two runs scored the very same evaluation images.
    ``digest``: a hashlib object already fed earlier tensors (the blocks of a stream)."""
    digest = digest or hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def explain_all(model, eval_set: EvalSet, method: str, batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Maps of every evaluation image for its true class, the raw maps at the layer's resolution
    (what ``lfi_compat`` stability reads), and the median seconds per image."""
    explained, seconds = explain_group(model, eval_set, [method], batch_size, device)
    maps, raw = explained[method]
    return maps, raw, seconds


def explain_group(model, eval_set: EvalSet, methods: Sequence[str], batch_size: int, device: torch.device,
                  layers: Mapping[str, str | None] | None = None, reshape: Callable | None = None
                  ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """``explain_all`` for several methods at once: ``{method: (maps, raw maps)}`` and the median
    seconds per image of the whole group.

    The gradient family (``methods.multi.shares_one_pass``) shares one forward and one backward per
    batch (``methods.multi.explain_many``); other methods run one after the other. A row
    ``NAME@LAYER`` explains that layer (``methods.split_layer``): the methods are explained per layer,
    the layer passed to ``explain_many``, and returned under their full names. The evaluation
    images are already a validated, normalised batch on the device, so ``camzoo.explain``'s input
    handling would only repeat work. Timing: one untimed call on the first batch's shape (layer
    detection, lazy initialisation and allocator warm-up are not per-image costs), then the median
    over batches of seconds per image, so a small evaluation set is not dominated by one slow call.
    ``reshape``: a ``[[models]]`` entry's rule for its layer's output, given to every method that takes one.
    """
    explained, seconds = explain_block(model, eval_set, methods, batch_size, device, layers, reshape)
    return explained, float(np.median(seconds))


def explain_block(model, eval_set: EvalSet, methods: Sequence[str], batch_size: int, device: torch.device,
                  layers: Mapping[str, str | None] | None = None, reshape: Callable | None = None,
                  warm_up: bool = True) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[float]]:
    """:func:`explain_group` on one block: the maps and the seconds per image of every batch (the
    median is taken over all blocks); ``warm_up``: the untimed first call (the first block only)."""
    from ..methods import split_layer
    from ..methods.multi import explain_many

    truth = {"mask": eval_set.masks, "boxes": eval_set.boxes}
    by_layer: dict[str | None, dict[str, str]] = {}  # layer -> {method name: row name}
    for row in methods:  # ``layers`` (the plan's): a row's layer, or its model entry's
        name, layer = split_layer(row)
        layer = layers.get(row, layer) if layers else layer
        by_layer.setdefault(layer, {})[name] = row

    calls = []  # (layer, {method: row}, options): a reshape goes to the methods that take one
    for layer, rows in by_layer.items():
        takes = {name: row for name, row in rows.items() if method_options(name, reshape)}
        rest = {name: row for name, row in rows.items() if name not in takes}
        calls += [(layer, part, options) for part, options in ((takes, {"reshape": reshape}), (rest, {})) if part]

    def chunk(start: int, stop: int):
        ground_truth = {k: v[start:stop] for k, v in truth.items() if v is not None}
        found = {}
        for layer, rows, options in calls:
            targets = eval_set.labels if eval_set.targets is None else eval_set.targets
            results = explain_many(model, eval_set.images[start:stop], list(rows), target=targets[start:stop],
                                   layer=layer, ground_truth=ground_truth or None, **options)
            found.update({rows[name]: result for name, result in results.items()})
        return found

    if warm_up:
        chunk(0, batch_size)
    parts: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {m: ([], []) for m in methods}
    per_image_seconds = []
    for start in range(0, eval_set.images.shape[0], batch_size):
        synchronize(device)
        begin = time.perf_counter()
        results = chunk(start, start + batch_size)
        synchronize(device)
        count = min(start + batch_size, eval_set.images.shape[0]) - start
        per_image_seconds.append((time.perf_counter() - begin) / count)
        for name, result in results.items():
            parts[name][0].append(result.maps)
            parts[name][1].append(result.raw)
    explained = {name: (torch.cat(maps), torch.cat(raw)) for name, (maps, raw) in parts.items()}
    return explained, per_image_seconds


def first_images(block: EvalSet, count: int) -> EvalSet:
    """The first ``count`` images of a block (with their labels, ground truth, the object track's targets and a
    planted shortcut's regions)."""
    cut = {name: None if value is None else value[:count]
           for name, value in (("masks", block.masks), ("boxes", block.boxes), ("targets", block.targets),
                               ("other_masks", block.other_masks), ("regions", block.regions))}
    return EvalSet(block.images[:count], block.labels[:count], cut["masks"], cut["boxes"], block.mean, block.std,
                   block.classes, start=block.start, targets=cut["targets"], other_masks=cut["other_masks"],
                   regions=cut["regions"])


def score_block(scorer: torch.nn.Module, block: EvalSet, method: str, maps: torch.Tensor, settings: Any,
                model_memo: dict, map_memo: dict | None, layer: str | None, reshape: Callable | None,
                seconds: dict[str, float] | None = None) -> dict:
    """One method row's rows on one block (``camzoo.metrics.score_maps``), as every cell is scored: the
    controls share ``map_memo`` (their maps repeat across models, a method's never do), a ``[[models]]``
    entry's ``reshape`` reaches the methods that take one; ``seconds`` collects each metric's time."""
    from .. import metrics
    from ..methods import get_method
    from ..metrics import MethodSpec

    name = MethodSpec.parse(method).name
    memo = map_memo if get_method(method).reference else None
    spec = MethodSpec(name, layer, method_options(name, reshape) or None)
    objects = block.other_masks is not None  # the object track scores the maps alone (no games on a segmenter)
    return metrics.score_maps(None if objects else scorer, block.images, maps, block.labels, block.masks, block.boxes,
                              settings, map_memo=memo, model_memo=model_memo, method=None if objects else spec,
                              start=block.start, seconds=seconds, other_masks=block.other_masks, parts=block.parts,
                              regions=block.regions)


def method_options(name: str, reshape: Callable | None) -> dict[str, Any]:
    """The options a method is explained and scored with on a model: a ``[[models]]`` entry's ``reshape``
    rule for a method that takes one (``CAMMethod.base_options``), else none. Decided here for both."""
    from ..methods import get_method

    return {"reshape": reshape} if reshape is not None and "reshape" in get_method(name).base_options() else {}
