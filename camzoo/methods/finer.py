"""Finer-CAM: a one-pass gradient CAM of a contrastive score, the target against its nearest classes.

Why a target objective and not a new map: Finer-CAM changes *what* is explained, not how. The
explained scalar becomes y_t minus alpha times the scores of the classes the model finds closest
to the target, and any one-pass gradient method (Grad-CAM by default) maps it. camzoo builds that
scalar inside the one capture (methods/capture.py), as an extra logit column the capture explains,
so it stays one forward and one backward from the logits to the layer, batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import CAMMethod
from .capture import capture_layers, fuse_layer_maps
from .layers import LayerSpec, resolve_layers
from .outputs import TargetFunction, logits_of, model_errors, select_targets
from .registry import get_method, register, shares_one_pass

WEIGHTINGS = ("softmax", "mean")
SOFTMAX_EPS = 1e-9  # pytorch-grad-cam's FinerWeightedTarget, in the denominator


def comparison_ranks(comparison: int | Sequence[int]) -> tuple[int, ...]:
    """The similarity ranks to compare with: an int n -> (1, ..., n); a sequence of ranks as given
    (rank 0 is the target itself, rank 1 the class whose logit is closest to it)."""
    if isinstance(comparison, bool) or not isinstance(comparison, (int, Sequence)) or isinstance(comparison, str) \
            or (not isinstance(comparison, int) and (not comparison or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in comparison))):
        raise TypeError("method 'finercam': comparison must be a count of nearest classes (e.g. 3) or their ranks "
                        f"(e.g. (1, 2, 3); rank 1 = the class whose logit is closest to the target's); got {comparison!r}")
    ranks = tuple(range(1, comparison + 1)) if isinstance(comparison, int) else tuple(comparison)
    if not ranks or min(ranks) < 1:
        raise ValueError(f"method 'finercam': comparison ranks start at 1 (rank 0 is the target itself); got {comparison!r}")
    return ranks


def nearest_classes(logits: torch.Tensor, targets: torch.Tensor, ranks: tuple[int, ...]) -> torch.Tensor:
    """(B, R) classes at the given ranks of |y_k - y_t| ascending, the target itself being rank 0;
    ranks beyond the last class are dropped (pytorch-grad-cam's rule)."""
    distances = (logits - logits.gather(1, targets[:, None])).abs()
    distances.scatter_(1, targets[:, None], -1.0)  # the target first even where another class ties with it
    order = distances.argsort(dim=1, stable=True)
    kept = [r for r in ranks if r < logits.shape[1]]
    if not kept:
        raise ValueError(f"method 'finercam' compares the target with other classes, but the model has "
                         f"{logits.shape[1]} class(es) and the comparison ranks are {ranks}; use a model with at "
                         "least 2 classes, or lower ranks")
    return order[:, kept]


def finer_score(logits: torch.Tensor, targets: torch.Tensor, comparison: torch.Tensor, alpha: float,
                weighting: str) -> torch.Tensor:
    """(B,) contrastive score. "softmax" (pytorch-grad-cam): sum_k p_k (y_t - alpha y_k) / (sum_k p_k + 1e-9),
    p = softmax(y), differentiated through p as the reference does; "mean" (TorchCAM):
    y_t - alpha mean_k y_k."""
    target = logits.gather(1, targets[:, None])
    others = logits.gather(1, comparison)
    if weighting == "mean":
        return (target - alpha * others.mean(dim=1, keepdim=True))[:, 0]
    weights = logits.softmax(dim=1).gather(1, comparison)
    return (weights * (target - alpha * others)).sum(dim=1) / (weights.sum(dim=1) + SOFTMAX_EPS)


@register
class FinerCAM(CAMMethod):
    """Finer-CAM (Zhang et al. 2025): a gradient CAM of y_t - alpha * y_(nearest classes).

    "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual Explanation" (CVPR 2025,
    arXiv 2501.11309): explaining the target's logit minus those of the classes the model finds most
    similar (closest logits) suppresses the evidence shared with them. Options: ``alpha`` (the
    comparison strength), ``comparison`` (a count n = ranks 1..n, or the ranks themselves, e.g.
    ``(1, 2, 3)``), ``weighting`` ("softmax": pytorch-grad-cam's softmax-weighted differences, the
    default; "mean": TorchCAM's y_t - alpha * mean, whose own default is alpha = 0.6) and ``base``
    (the one-pass gradient method that maps the score, ``gradcam`` by default). Classes only.
    """

    name = "finercam"
    family = "gradient"
    cost = "backward"
    uses_gradients = True
    serves_output_targets = False  # the comparison classes are read off class logits
    eigen_smoothable = True  # the base method's layer_map honours eigen_smooth

    def __init__(self, model: nn.Module, layer: LayerSpec = None, batch_size: int | None = None, *,
                 alpha: float = 1.0, comparison: int | tuple[int, ...] = 3, weighting: str = "softmax",
                 base: str = "gradcam", **base_options: Any) -> None:
        super().__init__(model, layer, batch_size, **base_options)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not torch.isfinite(torch.tensor(alpha)):
            raise ValueError(f"method 'finercam': alpha must be a finite number (the comparison strength); got {alpha!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"method 'finercam': weighting must be one of {', '.join(WEIGHTINGS)} (pytorch-grad-cam's "
                             f"softmax-weighted differences, or TorchCAM's plain mean); got {weighting!r}")
        base_class = get_method(base)
        if not (shares_one_pass(base_class) and base_class.uses_gradients):
            raise ValueError(f"method 'finercam': base must be a one-pass gradient method (its map a function of one "
                             f"layer's activations and gradients, e.g. gradcam, layercam, gradcampp); got {base!r}")
        self.alpha, self.ranks, self.weighting = float(alpha), comparison_ranks(comparison), weighting
        # only its layer_map(activations, gradients) is used: its compute, or its eigen-smoothed terms
        self.base = base_class(model, eigen_smooth=self.eigen_smooth)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | TargetFunction | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with model_errors(images[:1]):
            self.layers = resolve_layers(self.model, self._layer_spec, probe=images[:1])
        self.layer = "+".join(self.layers)
        chosen: dict[str, torch.Tensor] = {}

        def with_score(raw: object) -> torch.Tensor:
            """The model's logits with the contrastive score appended as one more column."""
            logits = logits_of(raw, self.model, images, self.output)
            classes = select_targets(targets, logits.detach())
            comparison = nearest_classes(logits.detach(), classes, self.ranks)
            chosen["targets"] = classes
            return torch.cat([logits, finer_score(logits, classes, comparison, self.alpha, self.weighting)[:, None]], 1)

        def score_column(extended: torch.Tensor) -> torch.Tensor:
            return torch.full((extended.shape[0],), extended.shape[1] - 1, dtype=torch.long, device=extended.device)

        captured = capture_layers(self.model, images, self.layers, score_column, with_grad=True, output=with_score,
                                  reshape=self.reshape)
        self.explains_outputs = False
        with torch.no_grad():
            raw = fuse_layer_maps([self.base.layer_map(a, g) for a, g in zip(captured.activations, captured.gradients)])
        return captured.logits[:, :-1], chosen["targets"], raw
