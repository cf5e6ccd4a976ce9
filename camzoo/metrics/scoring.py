"""Scoring a benchmark cell: every metric of the table (:mod:`camzoo.metrics.table`) on one set of maps,
and the rows of consecutive blocks of images joined into the rows of the whole set.

Streaming: the benchmark scores the evaluation images in blocks (``score_maps(..., start=)``) and
:func:`combine_blocks` joins the blocks' rows into the rows of the whole set, exactly: per-image
values are concatenated, a mean is the mean of the concatenation, and a dataset-level metric
(MaxBoxAcc, PxAP, the class-mean pointing game) is recomputed by its ``combine`` from the
concatenated per-image tables it is made of.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..modelutil import synchronize
from .context import MethodSpec, ScoringContext
from .settings import EvalSettings
from .table import METRICS, MetricInfo, Row


def score_maps(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor,
               masks: torch.Tensor | None, boxes: torch.Tensor | None, settings: EvalSettings | None = None,
               map_memo: dict | None = None, model_memo: dict | None = None,
               method: MethodSpec | str | None = None, start: int = 0,
               seconds: dict[str, float] | None = None, other_masks: torch.Tensor | None = None,
               parts: Any = None, regions: torch.Tensor | None = None) -> dict[str, Row]:
    """Every map metric of the table that the data allows: name -> (value, per-image values).

    Args:
        model: the classifier the maps explain (the games query it); images: (N,3,H,W) normalised, on
            its device; maps: (N,H,W) in [0,1]; labels: (N,) the class each map explains; masks /
            boxes: ground truth or None (metrics that need it are skipped without it); settings: how
            to score (:class:`EvalSettings`; None: its defaults).

    Returns:
        ``{metric name: (value, per-image values or None)}`` for every metric whose needs are met and
        that the settings ask for (``MetricInfo.selected_by``: e.g. a grid game only when
        ``settings.grid_games`` lists it; the others are not computed).

    ``map_memo`` (the benchmark passes one dict per image set: same images, labels and ground truth,
    never reused for another) returns MaxBoxAcc, the costliest metric that reads only the maps, for
    maps identical to earlier ones: the centre, edges and oracle controls' maps do not depend on the
    model, so nine models share three computations. Exact (tested against computing afresh).
    ``model_memo`` (one dict per model and image set) returns the model's scores on the unperturbed
    images, which every cell of that model needs: one forward over the images per model, not per cell,
    and the grids every method of the model plays on (so its rows are paired).
    ``method`` (a name such as ``"gradcam@layer2"`` or a :class:`MethodSpec`) is the method that made
    the maps: the metrics that need it (grid games, class sensitivity; ``EvalSettings.grid_games`` and
    ``sensitivity``) explain new inputs with it; without it they are skipped.
    ``start``: the images are a block of a larger evaluation set beginning at image ``start`` (the
    benchmark streams blocks; :func:`combine_blocks` joins their rows): the games play on the block's
    share of the set's first ``game_images``, and the metrics that read ``"inputs"`` run on the first
    block only. ``model_memo`` and ``map_memo`` must then be the block's own.
    ``model`` None scores the maps alone (the metrics that need the model are skipped); ``other_masks``
    ((N,H,W) bool, the other objects of each map's scene, where ``masks`` is the one object the map
    explains) adds the metrics that need "objects" (``object_share``); ``parts`` (a parts world and its
    calibration split, camzoo.bench.parts_track.PartsTrack) those that need "parts" (the FunnyBirds protocol);
    ``regions`` ((N,H,W) bool, a planted shortcut's artefact region, camzoo.data.shortcuts) those that need
    "shortcut" (``shortcut_share``).
    ``seconds`` (optional): each metric's wall time is added to it, by name: its own time plus every
    per-cell computation it read, so deletion and insertion each show the game they share (on CUDA the
    device is synchronised around each metric). The reliability card's cost reads it.
    """
    settings = EvalSettings() if settings is None else settings
    if not isinstance(settings, EvalSettings):
        raise TypeError(f"settings must be a camzoo.metrics.EvalSettings (e.g. EvalSettings(deletion_steps=8)); "
                        f"got {type(settings).__name__}")
    spec = None if method is None else MethodSpec.parse(method)
    settings, reads = _block_settings(settings, start, images.shape[0])
    ctx = ScoringContext(model, images, maps, labels, masks, boxes, settings, map_memo, model_memo, spec,
                         other_masks=other_masks, parts=parts, regions=regions)
    chosen = [info for info in METRICS.values() if info.compute is not None and info.reads in reads
              and info.selected(settings) and all(ctx.has(need) for need in info.needs)]
    if seconds is None:
        scored = {info.name: info.compute(ctx) for info in chosen}
    else:
        scored = _timed(chosen, ctx, seconds)
    return {name: row for name, row in scored.items() if row is not None}  # None: no value (e.g. too few grids)


def _timed(chosen: Sequence[MetricInfo], ctx: ScoringContext, seconds: dict[str, float]) -> dict[str, Row | None]:
    """Each metric's row, and its cost added to ``seconds[name]``: its own time plus that of every
    per-cell computation it read (``ScoringContext.cached``), whichever metric ran it first."""
    scored, own = {}, {}
    for info in chosen:
        ctx.reading = info.name
        synchronize(ctx.images.device)
        before, start = sum(ctx.cache_seconds.values()), time.perf_counter()
        scored[info.name] = info.compute(ctx)
        synchronize(ctx.images.device)
        own[info.name] = time.perf_counter() - start - (sum(ctx.cache_seconds.values()) - before)
    ctx.reading = None
    for name, value in own.items():
        shared = sum(ctx.cache_seconds.get(key, 0.0) for key in ctx.cache_readers.get(name, ()))
        seconds[name] = seconds.get(name, 0.0) + value + shared
    return scored


def _block_settings(settings: EvalSettings, start: int, count: int) -> tuple[EvalSettings, tuple[str, ...]]:
    """The settings of a block of ``count`` images beginning at image ``start`` of the evaluation set,
    and which metrics (by ``reads``) it scores. The first block of a set that fits in it is unchanged."""
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an integer >= 0 (the block's first image), got {start!r}")
    reads = ("images", "games", "inputs") if start == 0 else ("images", "games")
    if settings.game_images is None:
        return settings, reads
    games = min(int(settings.game_images), start + count) - start
    if games <= 0:  # the games' images all lie in earlier blocks
        return settings, tuple(r for r in reads if r != "games")
    return (settings if games == settings.game_images else dataclasses.replace(settings, game_images=games)), reads


def combine_blocks(blocks: Sequence[dict[str, Row]], labels: np.ndarray | torch.Tensor) -> dict[str, Row]:
    """The rows of consecutive blocks of images (``score_maps(..., start=)``, in order) as the rows of
    the whole set: per-image values concatenated; the value the mean of the concatenation, or the
    metric's ``combine`` (MaxBoxAcc, PxAP, the class-mean pointing game). A metric scored in one block
    only (the games on early images, the "inputs" metrics) keeps that block's row.

    Args:
        blocks: each block's ``{metric: (value, per-image values)}``.
        labels: (N,) the class every map of the whole set explains (the class-mean pointing game).

    Returns:
        ``{metric: (value, per-image values)}`` of the whole set, as one ``score_maps`` call would give.

    Raises:
        ValueError: a metric scored in several blocks keeps no per-image values and has no ``combine``.
    """
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    names = list(dict.fromkeys(name for block in blocks for name in block))
    per_image: dict[str, np.ndarray] = {}
    for name in names:
        parts = [block[name][1] for block in blocks if name in block]
        if len(parts) > 1 and all(part is not None for part in parts):
            per_image[name] = np.concatenate(parts)
    combined: dict[str, Row] = {}
    for name in names:
        rows = [block[name] for block in blocks if name in block]
        info = METRICS.get(name)
        if len(rows) == 1:
            combined[name] = rows[0]
        elif info is not None and info.combine is not None:
            combined[name] = (info.combine(per_image, labels), per_image.get(name))
        elif name in per_image:
            combined[name] = (float(torch.from_numpy(per_image[name]).mean()), per_image[name])
        else:
            raise ValueError(f"metric {name!r} was scored in several blocks but keeps no per-image values and no "
                             "combine rule: give its MetricInfo a combine function")
    return combined
