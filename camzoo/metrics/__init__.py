"""camzoo.metrics: tensors in, tensors/dicts out, on the inputs' device.

Accuracy, causal metrics (deletion/insertion, Average Drop / Increase in Confidence), localization
(pointing game, energy pointing game, relevance rank accuracy, MaxBoxAccV1/V2, PxAP), cross-seed
stability (IoU, Dice, Spearman, Pearson, SSIM) and the parameter-randomisation sanity check.
``METRICS`` says, for every reported number, which direction is better and its range, so that tables
can draw arrows and mark the best value. Protocols: docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ._checks import boxes_to_masks
from .causal import auc, average_drop_increase, deletion_insertion, rise_blur, rise_blur_kernel, saliency_rank
from .classification import accuracy
from .localization import (
    energy_pointing_game,
    max_box_acc,
    max_box_acc_from_hits,
    pointing_game,
    pxap,
    pxap_from_histograms,
    relevance_rank_accuracy,
)
from .sanity import parameter_randomisation, randomisable_layers
from .stability import pairwise_stability, pearson, spearman, ssim, stability


@dataclass(frozen=True)
class MetricInfo:
    """What a reported number means: its direction, range and the function that computes it."""

    name: str
    higher_is_better: bool
    low: float
    high: float
    function: str
    description: str

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def best(self, values: Sequence[float]) -> int:
        """Index of the best of ``values`` (NaNs never win); -1 when all are NaN."""
        candidates = [(v, i) for i, v in enumerate(values) if v == v]
        if not candidates:
            return -1
        pick = max if self.higher_is_better else min
        return pick(candidates, key=lambda item: item[0])[1]


def _info(name: str, higher: bool, low: float, high: float, function: str, description: str) -> MetricInfo:
    return MetricInfo(name, higher, low, high, function, description)


METRICS: dict[str, MetricInfo] = {info.name: info for info in (
    _info("top1", True, 0, 1, "accuracy",
          "top-1 accuracy"),
    _info("top5", True, 0, 1, "accuracy",
          "top-5 accuracy (datasets with more than 5 classes)"),
    _info("deletion", False, 0, 1, "deletion_insertion",
          "AUC of the target's probability as salient pixels are deleted"),
    _info("insertion", True, 0, 1, "deletion_insertion",
          "AUC of the target's probability as salient pixels are restored on a blurred image"),
    _info("average_drop", False, 0, 100, "average_drop_increase",
          "mean relative drop (%) of the target's score on image x map"),
    _info("increase_in_confidence", True, 0, 100, "average_drop_increase",
          "share (%) of images whose score rises on image x map"),
    _info("pointing_game", True, 0, 1, "pointing_game",
          "share of maps whose maximum lies within the tolerance of the object"),
    _info("energy_pointing_game", True, 0, 1, "energy_pointing_game",
          "share of map mass inside the object"),
    _info("relevance_rank_accuracy", True, 0, 1, "relevance_rank_accuracy",
          "share of the K most salient pixels on the object (K = object size)"),
    _info("max_box_acc_v1", True, 0, 1, "max_box_acc",
          "box accuracy at IoU 0.5, largest region, best CAM threshold"),
    _info("max_box_acc_v2", True, 0, 1, "max_box_acc",
          "box accuracy averaged over IoU 0.3/0.5/0.7, best region, best CAM threshold"),
    _info("pxap", True, 0, 1, "pxap",
          "pixel-wise average precision against object masks"),
    _info("iou", True, 0, 1, "stability",
          "IoU of two seeds' maps binarised at map*255 > 100"),
    _info("dice", True, 0, 1, "stability",
          "Dice of two seeds' maps binarised at map*255 > 100"),
    _info("spearman", True, -1, 1, "stability",
          "Spearman rank correlation of two seeds' maps"),
    _info("pearson", True, -1, 1, "stability",
          "Pearson correlation of two seeds' maps"),
    _info("ssim", True, -1, 1, "stability",
          "SSIM of two seeds' maps (scikit-image defaults)"),
    _info("sanity_spearman", False, -1, 1, "parameter_randomisation",
          "Spearman between maps of the trained and a randomised model"),
    _info("sanity_ssim", False, -1, 1, "parameter_randomisation",
          "SSIM between maps of the trained and a randomised model"),
)}

__all__ = [
    "METRICS",
    "MetricInfo",
    "accuracy",
    "auc",
    "average_drop_increase",
    "boxes_to_masks",
    "deletion_insertion",
    "energy_pointing_game",
    "max_box_acc",
    "max_box_acc_from_hits",
    "pairwise_stability",
    "parameter_randomisation",
    "pearson",
    "pointing_game",
    "pxap",
    "pxap_from_histograms",
    "randomisable_layers",
    "relevance_rank_accuracy",
    "rise_blur",
    "rise_blur_kernel",
    "saliency_rank",
    "spearman",
    "ssim",
    "stability",
]
