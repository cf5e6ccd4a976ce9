"""What a CAM explains, for any model: a scalar of one image's model output.

Why callables: a classifier's target is a class, but a segmenter's is "class c over this region" and
a detector's "this box". pytorch-grad-cam's contract covers all three: a target is a callable of
*one image's* model output that returns a scalar, and the CAM backpropagates the sum over the
batch. camzoo takes the same contract (``camzoo.explain(..., target=SegmentationTarget(3))``, or a
list with one target per image) and ships the three targets below. Any callable of one image's
output works too; subclass :class:`Target` to give it a ``category`` (recorded in
``Explanation.targets``; -1 otherwise).

What one image's output is (``camzoo.methods.objectives.per_image_outputs``): a classifier's (K,)
logits; a segmenter's (C, H, W) class scores (a torchvision segmenter's ``out``); a torchvision
detector's dict of ``boxes`` (N, 4), ``labels`` (N,) and ``scores`` (N,).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


class Target:
    """Base of camzoo's targets: ``category`` is the class the target concerns (-1: none)."""

    category: int = -1

    def __call__(self, output: Any) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, output: Any) -> Target:
        """This target fixed on the image's unperturbed output (default: itself). camzoo binds every
        target before explaining, so a perturbation method's passes all score the same objective."""
        return self

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({fields})"


def _category(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be a class index (an int >= 0); got {value!r}")
    return int(value)


class ClassTarget(Target):
    """The logit of class ``category``: a classifier's target, as ``target=category`` is."""

    def __init__(self, category: int) -> None:
        self.category = _category(category, "ClassTarget's category")

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 1:
            raise ValueError(f"ClassTarget scores one image's (num_classes,) logits; got {_shape(output)}")
        if self.category >= output.shape[0]:
            raise ValueError(f"ClassTarget({self.category}) is out of range for {output.shape[0]} classes")
        return output[self.category]


class SegmentationTarget(Target):
    """Class ``category``'s scores summed over ``mask`` (pytorch-grad-cam's SemanticSegmentationTarget).

    mask: (H, W), nonzero = inside, at the output's resolution (a torchvision segmenter's output has
    the input's); None: the pixels the model predicts as ``category`` (argmax over classes) on the
    unperturbed image, fixed before explaining (:meth:`bind`), so that Score-CAM's and Ablation-CAM's
    perturbed passes are scored over the same region.
    """

    def __init__(self, category: int, mask: torch.Tensor | np.ndarray | None = None) -> None:
        self.category = _category(category, "SegmentationTarget's category")
        if mask is not None:
            mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
            if mask.ndim != 2:
                raise ValueError(f"SegmentationTarget's mask must be (H, W); got shape {tuple(mask.shape)}")
            mask = mask != 0
        self.mask = mask

    def region(self, output: torch.Tensor) -> torch.Tensor:
        """The (H, W) float mask the class scores are summed over."""
        if self.mask is None:
            return (output.detach().argmax(dim=0) == self.category).to(output.dtype)
        if tuple(self.mask.shape) != tuple(output.shape[-2:]):
            raise ValueError(f"SegmentationTarget's mask is {tuple(self.mask.shape)} but the model's output is "
                             f"{tuple(output.shape[-2:])}; give the mask at the output's resolution")
        return self.mask.to(device=output.device, dtype=output.dtype)

    def bind(self, output: torch.Tensor) -> SegmentationTarget:
        self._check(output)
        return self if self.mask is not None else SegmentationTarget(self.category, self.region(output) > 0)

    def _check(self, output: object) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 3:
            raise ValueError(f"SegmentationTarget scores one image's (classes, H, W) output; got {_shape(output)}")
        if self.category >= output.shape[0]:
            raise ValueError(f"SegmentationTarget({self.category}) is out of range for {output.shape[0]} classes")

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self._check(output)
        return (output[self.category] * self.region(output)).sum()


class BoxTarget(Target):
    """A detected box: IoU + score of the predicted box of class ``label`` that overlaps ``box`` most.

    box: x0, y0, x1, y1 in input pixels. The best predicted box of the same label must have IoU >
    ``iou_threshold``; otherwise the target is 0 (with a warning), as in pytorch-grad-cam's
    FasterRCNNBoxScoreTarget (``warn=False``: silently; the benchmark scores such a map as it is).
    One difference, on purpose: pytorch-grad-cam takes the box of largest IoU over *all* labels and
    scores 0 when its label differs; camzoo looks among boxes of ``label`` only, so a
    better-overlapping box of another class does not hide the one asked for.
    """

    def __init__(self, label: int, box: Sequence[float] | torch.Tensor | np.ndarray,
                 iou_threshold: float = 0.5, warn: bool = True) -> None:
        self.category = _category(label, "BoxTarget's label")
        values = torch.as_tensor(np.asarray(box, dtype=np.float64) if not isinstance(box, torch.Tensor) else box)
        if values.numel() != 4 or not torch.isfinite(values).all():
            raise ValueError(f"BoxTarget's box must be 4 finite numbers x0, y0, x1, y1; got {box!r}")
        values = values.reshape(4).double()
        if not (values[2] >= values[0] and values[3] >= values[1]):  # a detector may keep a box of no area
            raise ValueError(f"BoxTarget's box must have x1 >= x0 and y1 >= y0; got {values.tolist()}")
        if not 0.0 <= float(iou_threshold) < 1.0:
            raise ValueError(f"BoxTarget's iou_threshold must be in [0, 1); got {iou_threshold!r}")
        self.box = values
        self.iou_threshold = float(iou_threshold)
        self.warn = bool(warn)

    def __call__(self, output: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from torchvision.ops import box_iou

        if not isinstance(output, Mapping) or not all(k in output for k in ("boxes", "labels", "scores")):
            raise ValueError(f"BoxTarget scores one image's detections, a dict with boxes, labels and scores; got "
                             f"{_shape(output)}")
        boxes, labels, scores = output["boxes"], output["labels"], output["scores"]
        zero = scores.sum() * 0  # keeps the graph, so a batch where nothing matches gives all-zero maps
        same = torch.nonzero(labels == self.category)[:, 0]
        if same.numel():
            ious = box_iou(self.box.to(device=boxes.device, dtype=boxes.dtype)[None], boxes[same])[0]
            best = int(ious.detach().argmax())
            if float(ious[best].detach()) > self.iou_threshold:
                return ious[best] + scores[same[best]]
        if self.warn:
            warnings.warn(f"BoxTarget(label={self.category}): no predicted box of that label has IoU > "
                          f"{self.iou_threshold} with {self.box.tolist()}; its map is all zeros", stacklevel=2)
        return zero


def _shape(output: object) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"a dict with keys {list(output)[:6]}"
    return f"a {type(output).__name__}"
