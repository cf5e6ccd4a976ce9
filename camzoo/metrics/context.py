"""What a map metric may read while a benchmark cell is scored, and the memos that let metrics share work.

Why a context: metrics that share one computation (deletion and insertion, MaxBoxAccV1 and V2,
every game's unperturbed scores) read it from here, so each runs once per cell — or once per model
or per identical maps when the benchmark passes the memos.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..modelutil import eval_mode
from ._model import unperturbed_scores
from .settings import EvalSettings


@dataclass(frozen=True)
class MethodSpec:
    """The method a cell's maps came from, for the metrics that explain *new* inputs with it (grids,
    another class, a randomised model): the registered name, the layer it explains (None: the
    method's default) and its options. ``MethodSpec.parse("gradcam@layer2")`` reads a row's name."""

    name: str
    layer: str | None = None
    options: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, method: MethodSpec | str) -> MethodSpec:
        if isinstance(method, MethodSpec):
            return method
        from ..methods import get_method, split_layer  # lazy: metrics do not import methods at import time

        name, layer = split_layer(method)
        return cls(get_method(name).name if not name.lower().startswith("captum:") else name, layer)

    @property
    def method_class(self) -> type:
        from ..methods import get_method

        return get_method(self.name)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                ground_truth: Mapping[str, torch.Tensor] | None = None, batch_size: int | None = None):
        """The method on a normalised batch, as the cell's maps were made: an ``Explanation``."""
        from ..methods import run_method

        return run_method(model, images, self.name, targets, self.layer, batch_size, self.options, ground_truth)


@dataclass
class ScoringContext:
    """Everything a map metric may read, plus a memo so that metrics sharing one computation (deletion
    and insertion, MaxBoxAccV1 and V2) run it once."""

    model: nn.Module
    images: torch.Tensor  # (N,3,H,W) normalised, on the model's device
    maps: torch.Tensor  # (N,H,W) in [0,1]
    labels: torch.Tensor  # (N,): the class every map explains
    masks: torch.Tensor | None  # (N,H,W) bool
    boxes: torch.Tensor | None  # (N,K,4) NaN-padded
    settings: EvalSettings  # how to score: steps, pixel span, chunk size, tolerances
    # map-only results shared by the cells of one image set, by the maps' content (see score_maps)
    map_memo: dict | None = None
    # results that depend on the model and images only, shared by the cells of one model (see score_maps)
    model_memo: dict | None = None
    # the method that made the maps (metrics that need "method" explain new inputs with it)
    method: MethodSpec | None = None
    # (N,H,W) bool: the other objects of each map's scene, where each map explains one object of
    # several (the benchmark's object track; metrics that need "objects")
    other_masks: torch.Tensor | None = None
    # the parts track (camzoo.bench.parts_track.PartsTrack): the images as a parts world and the
    # calibration split's (metrics that need "parts", camzoo.metrics.parts_table)
    parts: Any = None
    # (N,H,W) bool: a planted shortcut's artefact region in each image (metrics that need "shortcut")
    regions: torch.Tensor | None = None
    _memo: dict[str, Any] = field(default_factory=dict)
    # what each metric costs (score_maps(seconds=)): the metric being computed, the seconds of each
    # per-cell computation, and which metrics read it (so two metrics sharing one both show its cost)
    reading: str | None = None
    cache_seconds: dict[str, float] = field(default_factory=dict)
    cache_readers: dict[str, set[str]] = field(default_factory=dict)
    _depth: int = 0

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        top = self._depth == 0  # a computation inside another is part of the outer one's time
        if top and self.reading is not None:
            self.cache_readers.setdefault(self.reading, set()).add(key)
        if key not in self._memo:
            start = time.perf_counter()
            self._depth += 1
            try:
                self._memo[key] = compute()
            finally:
                self._depth -= 1
            if top:
                self.cache_seconds[key] = time.perf_counter() - start
        return self._memo[key]

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per cell, and once per identical maps across the cells that share
        ``map_memo`` (for metrics that read nothing but the maps and the image set's ground truth)."""
        if self.map_memo is None:
            return self.cached(key, compute)
        memo, entry = self.map_memo, (key, self.cached("digest", lambda: _digest(self.maps)))

        def lookup() -> Any:
            if entry not in memo:
                memo[entry] = compute()
            return memo[entry]

        return self.cached(key, lookup)

    def unperturbed_scores(self) -> torch.Tensor:
        """Softmax scores (N, classes) of the unperturbed images, which deletion, MoRF and Average
        Drop all start from: once per cell, or once per model when the cells share ``model_memo``.
        Like every forward of a cell, under autocast on CUDA."""
        def compute() -> torch.Tensor:
            with torch.no_grad(), eval_mode(self.model):
                return unperturbed_scores(self.model, self.images, True, self.images.device.type == "cuda",
                                          self.settings.chunk_for(self.images))

        return self.per_model("unperturbed_scores", compute)

    @property
    def games(self) -> slice:
        """The images the perturbation games play on (``EvalSettings.game_images``). Why: a game costs
        dozens of forwards per image, the other metrics one or none, so a CPU budget may cap the games
        alone; every row of a column gets the same images."""
        return self.settings.game_slice

    def per_model(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per model and image set when the cells share ``model_memo`` (e.g. the
        grids every method of a model is scored on, so its rows stay paired); else once per cell."""
        memo = self._memo if self.model_memo is None else self.model_memo
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def has(self, need: str) -> bool:
        if need == "model":
            return self.model is not None  # None: a map-only scoring (the object track's, of a segmenter)
        if need == "objects":
            return self.other_masks is not None
        if need == "shortcut":
            return self.regions is not None
        if need == "masks":
            return self.masks is not None
        if need == "boxes":
            return self.boxes is not None
        if need == "annotations":
            return self.masks is not None or self.boxes is not None
        if need == "method":
            return self.method is not None
        if need == "parts":
            return self.parts is not None
        raise ValueError(f"unknown metric requirement {need!r}")


def _digest(tensor: torch.Tensor) -> str:
    """A content key: the tensor's shape and bytes."""
    digest = hashlib.blake2b(tensor.detach().contiguous().cpu().numpy().tobytes(), digest_size=16)
    digest.update(str(tuple(tensor.shape)).encode())
    return digest.hexdigest()
