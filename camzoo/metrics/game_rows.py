"""The table's pixel-game metrics: deletion/insertion (and their curves) and the MoRF/LeRF SRG per
substrate, each played once per model for maps that order the pixels alike.

Why a module of its own: these are the costly metrics (dozens of forwards per image), and what makes
them cheap is shared: the game's settings, and a digest of the maps' pixel orders computed once per
cell, keying the model's memo so that rows whose maps order the pixels alike play one game.
"""

from __future__ import annotations

import hashlib
from typing import Any
from collections.abc import Callable

import numpy as np
import torch

from ..inputs import channel_stats
from ..modelutil import model_normalisation
from . import causal, faithfulness
from . import games as games_module
from .context import ScoringContext
from .settings import EvalSettings

Row = tuple[float, np.ndarray | None]


def _row(value: Any, per_image: torch.Tensor) -> Row:
    return float(value), per_image.detach().float().cpu().numpy()


def causal_settings(settings: EvalSettings) -> dict[str, Any]:
    """deletion_insertion's arguments from the eval settings: RISE's protocol exactly, or the
    "default" game with the configured steps and pixel fraction."""
    if settings.protocol == "rise":
        return {"protocol": "rise"}
    return {"protocol": "default", "steps": settings.deletion_steps, "fraction": settings.deletion_fraction}


def causal_games(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    """Deletion and insertion of the cell's maps (AUCs and curves): once per cell, and once per model
    for maps with the same :func:`game_digest` when the cells share the model's memo."""
    def play() -> dict[str, torch.Tensor]:
        options = causal_settings(ctx.settings)
        games = ctx.games
        targets = None if ctx.settings.predicted_target else ctx.labels[games]
        softmax = causal.causal_protocol(options["protocol"]).softmax
        return causal.deletion_insertion(ctx.model, ctx.images[games], ctx.maps[games], targets,
                                         chunk_size=ctx.settings.chunk_for(ctx.images),
                                         autocast=ctx.images.device.type == "cuda",
                                         original_scores=ctx.unperturbed_scores()[games] if softmax else None,
                                         **options)

    def memoised() -> dict[str, torch.Tensor]:
        key = ("causal", repr(causal_settings(ctx.settings)), ctx.settings.game_images,
               ctx.settings.predicted_target, ctx.settings.chunk_for(ctx.images), game_digest(ctx, both_orders=False))
        return ctx.per_model(key, play)

    return ctx.cached("causal", memoised)


def game_digest(ctx: ScoringContext, both_orders: bool) -> str:
    """What a pixel game of this cell's maps depends on, as a digest: the first point at which each
    pixel is changed, per ordering (MoRF; LeRF too with ``both_orders``). ``games.play`` changes a pixel
    at point k exactly when its rank is below ``counts[k]``, so two maps with the same digest play the
    same game on the same model and images: a model's rows whose maps order the pixels alike (Grad-CAM,
    XGrad-CAM and HiResCAM at a layer before global pooling, up to the last float bits) share one game
    through the model's memo. RISE's protocol keys on the ranks themselves. Once per cell (and block):
    deletion, insertion, their curves and every SRG substrate read the same digests."""
    def digest() -> str:
        orders = [_game_points(ctx, "morf")] + ([_game_points(ctx, "lerf")] if both_orders else [])
        return hashlib.sha256(b"".join(orders)).hexdigest()

    return ctx.cached(f"game_digest_{'both' if both_orders else 'morf'}", digest)


def _game_points(ctx: ScoringContext, order: str) -> bytes:
    """The game's point of change of every pixel under one ordering (its rank with RISE's protocol),
    as int32 bytes; once per cell."""
    def compute() -> bytes:
        maps = ctx.maps[ctx.games]
        ranks = causal.saliency_rank(maps if order == "morf" else -maps)
        if ctx.settings.protocol == "default":
            budget = games_module.pixel_budget(ctx.settings.deletion_fraction, maps[0].numel())
            counts = games_module.point_counts(ctx.settings.deletion_steps, budget, ranks.device)
            ranks = torch.searchsorted(counts, ranks.contiguous(), right=True)
        return ranks.to(torch.int32).cpu().numpy().tobytes()

    return ctx.cached(f"game_points_{order}", compute)


def srg(substrate: str) -> Callable[[ScoringContext], Row]:
    """SRG = AUC(LeRF) - AUC(MoRF) with one substrate (its entry is selected by eval.substrates)."""

    def compute(ctx: ScoringContext) -> Row:
        # ROAD's noise is 0.01 in [0,1] pixel units: in the normalised space the model sees, 0.01 / std
        # (one std per channel of the images: a grayscale model's is the average, inputs.channel_stats)
        road_noise = [0.01 / s for s in channel_stats(*model_normalisation(ctx.model), ctx.images.shape[1])[1]]
        games = ctx.games
        key = (f"srg_{substrate}", ctx.settings.deletion_steps, ctx.settings.deletion_fraction, ctx.settings.game_images,
               ctx.settings.protocol, ctx.settings.predicted_target, ctx.settings.chunk_for(ctx.images),
               game_digest(ctx, both_orders=True))
        result = ctx.per_model(key, lambda: faithfulness.morf_lerf(
            ctx.model, ctx.images[games], ctx.maps[games], ctx.labels[games], substrate=substrate,
            steps=ctx.settings.deletion_steps, fraction=ctx.settings.deletion_fraction,
            chunk_size=ctx.settings.chunk_for(ctx.images), autocast=ctx.images.device.type == "cuda", road_noise=road_noise,
            morf_curve=_deletion_as_morf(ctx) if substrate == "zeros" else None,
            original_scores=ctx.unperturbed_scores()[games]))
        return _row(result["srg"].mean(), result["srg"])

    return compute


def _deletion_as_morf(ctx: ScoringContext) -> torch.Tensor | None:
    """The deletion curve when it *is* the zero substrate's MoRF curve (the default protocol scoring the
    labels: same images, targets, order, steps, pixel span and substrate), so that it is not played
    twice; None otherwise (RISE's protocol scores the prediction)."""
    if ctx.settings.protocol != "default" or ctx.settings.predicted_target:
        return None
    return causal_games(ctx)["deletion_curve"]


__all__ = ["causal_games", "causal_settings", "game_digest", "srg"]
