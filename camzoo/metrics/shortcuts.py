"""Scores of a planted shortcut (Zhou et al., AAAI 2022; camzoo.data.shortcuts): how much of a map's
attribution lies on the artefact a model is known to use, and how well the model beats a constant.

Why a metric of its own: on a planted-shortcut dataset the labels are random and only the artefact
predicts them, so a model above the best constant accuracy must use the artefact, and a faithful map
must point at its region. The share of positive attribution inside the region says how much it does;
its chance level is the region's area ratio (a map spread evenly over the image).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._checks import check_maps
from .context import ScoringContext
from .table import MetricInfo, register_metric


def shortcut_share(maps: torch.Tensor, regions: torch.Tensor) -> dict[str, torch.Tensor]:
    """The share of each map's positive attribution inside the artefact's region.

    Args:
        maps: (N,H,W) saliency in [0,1] (camzoo's maps).
        regions: (N,H,W) bool, the artefact's region in each image (defined whether it is drawn or not).

    Returns:
        ``shortcut_share`` (N,): mass inside / total mass, 0 for an all-zero map;
        ``shortcut_share_chance`` (N,): the region's share of the image's area (any constant map's share).

    Raises:
        ValueError: shapes that differ, or an empty region.
    """
    maps = check_maps(maps)
    if not isinstance(regions, torch.Tensor) or regions.shape != maps.shape:
        shape = tuple(regions.shape) if isinstance(regions, torch.Tensor) else type(regions).__name__
        raise ValueError(f"maps and regions must share one (N,H,W) shape; got {tuple(maps.shape)} and {shape}")
    region = regions.to(maps.device).bool()
    if not region.flatten(1).any(1).all():
        raise ValueError("every image needs a non-empty shortcut region (the artefact's place)")
    positive = maps.float().clamp_min(0)
    total = positive.flatten(1).sum(1)
    inside = (positive * region).flatten(1).sum(1)
    share = torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))
    chance = region.flatten(1).float().mean(1)
    return {"shortcut_share": share, "shortcut_share_chance": chance}


def best_constant_accuracy(labels: torch.Tensor | np.ndarray) -> float:
    """The accuracy of the best constant prediction: the largest class's share of ``labels``.

    Args:
        labels: (N,) integer class labels of the evaluated images.

    Returns:
        The largest class share in [0, 1] (0 for no labels): what a model that ignores the images reaches.
    """
    values = torch.as_tensor(labels).flatten().long()
    if values.numel() == 0:
        return 0.0
    return float(torch.bincount(values - values.min()).max()) / values.numel()


def _share(name: str) -> Any:
    def compute(ctx: ScoringContext) -> tuple[float, np.ndarray]:
        result = ctx.cached("shortcut", lambda: shortcut_share(ctx.maps, ctx.regions))
        values = result[name].detach().float().cpu().numpy()
        return float(values.mean()), values

    return compute


for _entry in (
    MetricInfo("shortcut_share", True, 0, 1, "shortcut_share",
               "share of positive attribution inside the planted artefact's region (Zhou et al. 2022)",
               needs=("shortcut",), column="Shortcut share", compute=_share("shortcut_share")),
    MetricInfo("shortcut_share_chance", True, 0, 1, "shortcut_share",
               "the shortcut share of a map spread evenly: the artefact region's share of the image",
               needs=("shortcut",), column="Shortcut at chance", compute=_share("shortcut_share_chance")),
    MetricInfo("best_constant_accuracy", True, 0, 1, "best_constant_accuracy",
               "the largest class share of the evaluated labels: the accuracy of a model blind to the images "
               "(planted-shortcut datasets)", scope="model", column="Best constant"),
):
    register_metric(_entry)
