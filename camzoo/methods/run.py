"""Run one registered method by name on a batch: the one place that turns (name, layer, options)
into an Explanation.

Why here and not in a metric: the metrics that re-explain (class sensitivity, the grid games, a
method spec's ``explain``) and ``camzoo.explain`` must build a method the same way, its options
checked against its signature, or a cell's maps and the maps a metric recomputes would differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..explanation import Explanation
from .base import TargetSpec
from .registry import get_method


def run_method(model: nn.Module, images: torch.Tensor, method: str, targets: TargetSpec = None, layer: Any = None,
               batch_size: int | None = None, method_options: Mapping[str, Any] | None = None,
               ground_truth: Mapping[str, torch.Tensor] | None = None) -> Explanation:
    """``method`` (a registered name, ``captum:<Name>`` included) on a normalised batch, as
    ``camzoo.explain`` runs it on a tensor: its options checked by ``check_options``, then one call."""
    cls = get_method(method)
    explainer = cls(model, layer=layer, batch_size=batch_size, **cls.check_options(method_options))
    return explainer(images, targets, ground_truth=ground_truth)
