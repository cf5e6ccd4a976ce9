"""The table metrics that explain *new* inputs with a cell's method: grid games and class sensitivity.

Why a module of their own: every other map metric reads the cell's maps of the evaluation images;
these ask the cell's method (:class:`~camzoo.metrics.context.MethodSpec`, the ``method`` need) for
maps of inputs where the evidence's place or class is known by construction:

* ``gridpg_NxN``, ``difull_NxN``, ``dipart_NxN``: the Grid Pointing Game on N x N grids of
  evaluation images of distinct classes, on the model or its DiFull / DiPart wrapper
  (:func:`camzoo.metrics.grid_models.play_grid_game`); ``focus``: 2 x 2 mosaics, two cells of the target
  class (:func:`camzoo.metrics.focus`).
* ``random_logit_similarity``, ``randomisation_spearman``
  (:mod:`camzoo.metrics.class_sensitivity`).

The grids and mosaics are built once per model (``ScoringContext.per_model``) from the evaluation
images the model classifies correctly with confidence >= ``EvalSettings.grid_threshold``, so every
method row of a model is scored on the same grids (paired rows). Which of them a cell scores is the
table's declaration (``MetricInfo.selected_by``: eval.grid_games, eval.sensitivity), read by
``score_maps``; a compute here returns None (no value) when too few images qualify, or where the method
cannot play: the DiFull/DiPart wrappers explain their own stitched feature map, so a row at another layer
(``gradcam@layer2``) and a kind's own ``attention`` map have no value there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .class_sensitivity import random_logit_similarity, randomisation_spearman
from .context import ScoringContext
from .focus_mosaics import build_focus_mosaics, focus
from .grid_models import GridWrapper, play_grid_game
from .grids import build_grids, confident_cells
from .settings import EvalSettings

Row = tuple[float, "np.ndarray | None"]
GRID_SEED, FOCUS_SEED, CLASS_SEED = 1, 0, 0


def _row(result: dict[str, Any], key: str) -> Row:
    return float(result[key]), result["per_image"].detach().float().cpu().numpy()


def grids(ctx: ScoringContext, n: int) -> dict[str, Any] | None:
    """The model's N x N grids (once per model); None when fewer than N² classes have a confident image."""
    settings = ctx.settings

    def build() -> dict[str, Any] | None:
        try:
            return build_grids(ctx.model, ctx.images, ctx.labels, n, settings.grid_count, settings.grid_threshold,
                               GRID_SEED, settings.chunk_for(ctx.images))
        except ValueError:  # too few confident images of distinct classes: the cell says so by its count
            return None

    return ctx.per_model(("grids", n, settings.grid_count, settings.grid_threshold), build)


def _truth(ctx: ScoringContext, copies: int = 1) -> dict[str, torch.Tensor] | None:
    """The evaluation images' ground truth (``copies`` times over), for methods that read it (oracle)."""
    truth = {key: torch.cat([value] * copies) for key, value in (("mask", ctx.masks), ("boxes", ctx.boxes))
             if value is not None}
    return truth or None


def _runnable(ctx: ScoringContext) -> bool:
    """Whether the cell's method can explain the evaluation images again (the oracle needs ground truth)."""
    return not ctx.method.method_class.needs_ground_truth or _truth(ctx) is not None


def grid_game(game: str, n: int) -> Callable[[ScoringContext], Row | None]:
    """The ``{game}_{n}x{n}`` column: the cell's method explains every cell of every grid."""

    def compute(ctx: ScoringContext) -> Row | None:
        played = grids(ctx, n)
        spec = ctx.method
        if played is None:
            return None
        if game != "gridpg" and (spec.layer is not None or not spec.method_class.applies_to(GridWrapper)):
            return None  # the wrappers hook their own stitched map; attention needs the kind's own branch
        result = play_grid_game(ctx.model, played, spec.name, game, layer=spec.layer,
                                batch_size=ctx.settings.chunk_for(ctx.images, n * n), method_options=spec.options)
        return _row(result, "score")

    return compute


def plays_grids(n: int | None = None) -> Callable[[EvalSettings], bool]:
    """Whether the settings play a game on N x N grids (any grid game when ``n`` is None): what selects
    the grids' counts, which follow the games (a game's grid size is its name's ``_NxN``)."""
    if n is None:
        return lambda settings: bool(settings.grid_games)
    return lambda settings: any(game.endswith(f"_{n}x{n}") for game in settings.grid_games)


def grid_count(n: int) -> Callable[[ScoringContext], Row]:
    """How many N x N grids the cell's games played (0: too few confident images of distinct classes)."""

    def compute(ctx: ScoringContext) -> Row:
        played = grids(ctx, n)
        return (0.0 if played is None else float(played["labels"].shape[0])), None

    return compute


def _confident(ctx: ScoringContext) -> tuple[int, float]:
    """(images that qualify as grid cells, the highest confidence of a correct prediction; 0 when none is
    correct), once per model: what a report says when no grid qualified, and how far the model was."""

    def build() -> tuple[int, float]:
        found = confident_cells(ctx.model, ctx.images, ctx.labels, ctx.settings.grid_threshold,
                                ctx.settings.chunk_for(ctx.images))
        correct = found["confidence"][found["correct"]]
        return int(found["qualified"]), float(correct.max()) if correct.numel() else 0.0

    return ctx.per_model(("grid_qualified", ctx.settings.grid_threshold), build)


def grid_qualified(ctx: ScoringContext) -> Row:
    """Evaluation images that may become grid cells (correct, confidence >= the threshold)."""
    return float(_confident(ctx)[0]), None


def grid_best_confidence(ctx: ScoringContext) -> Row:
    """The highest softmax confidence of a correctly classified evaluation image (0: none is correct): with
    ``grid_qualified`` 0, how far below ``eval.grid_threshold`` the model was. One number, no per-image values."""
    return _confident(ctx)[1], None


def focus_score(ctx: ScoringContext) -> Row | None:
    """Focus: the cell's method explains each 2 x 2 mosaic's target class; its share on the target cells."""
    settings = ctx.settings

    def build() -> dict[str, Any] | None:
        try:
            return build_focus_mosaics(ctx.model, ctx.images, ctx.labels, settings.grid_count, settings.grid_threshold,
                                       FOCUS_SEED, settings.chunk_for(ctx.images))
        except ValueError:
            return None

    mosaics = ctx.per_model(("focus", settings.grid_count, settings.grid_threshold), build)
    if mosaics is None:
        return None
    images, cells = mosaics["images"], mosaics["target_cells"]
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device) // (height // 2)
    cols = torch.arange(width, device=images.device) // (width // 2)
    owner = (rows[:, None] * 2 + cols[None, :]).flatten()  # (H*W,) the cell of each pixel
    truth = {"mask": cells.to(images.device)[:, owner].reshape(-1, height, width)}  # the oracle's: both target cells
    explanation = ctx.method.explain(ctx.model, images, mosaics["targets"], truth, ctx.settings.chunk_for(ctx.images, 4))
    return _row(focus(explanation.raw, cells, size=(int(height), int(width))), "focus")


def _explain_fn(ctx: ScoringContext, copies: int) -> Callable[..., torch.Tensor]:
    truth = _truth(ctx, copies)

    def explain(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ctx.method.explain(model, images, targets, truth, ctx.settings.chunk_for(ctx.images)).maps

    return explain


def random_logit(ctx: ScoringContext) -> Row | None:
    """The Random Logit test: Spearman of the map for the label and for a random other class."""
    if not _runnable(ctx):
        return None
    result = random_logit_similarity(ctx.model, ctx.images, _explain_fn(ctx, 2), ctx.labels, seed=CLASS_SEED)
    return _row(result, "random_logit_similarity")


def randomisation(ctx: ScoringContext) -> Row | None:
    """Spearman of each map with the map of the fully randomised model (mean over draws)."""
    if not _runnable(ctx):
        return None
    result = randomisation_spearman(ctx.model, ctx.images, _explain_fn(ctx, 1), ctx.labels, cascade=False,
                                    seed=CLASS_SEED, draws=ctx.settings.randomisation_draws)
    return _row(result, "randomisation_spearman")


__all__ = ["focus_score", "grid_best_confidence", "grid_count", "grid_game", "grid_qualified", "grids", "plays_grids",
           "random_logit", "randomisation"]
