"""Run the model once and pick what each image's map explains: a class logit, or a target callable's value.

Why one place: every method (the one-pass family, the perturbation methods, Captum, the controls)
explains the same scalar per image, so they run the model through :func:`targeted_forward`. Two
kinds of target reach it:

- **classes** (a classifier): ``None`` (the predicted class), (B,) class indices, or a function of
  the (B, K) logits returning (B,) indices; the scalar is the class's logit.
- **output targets** (:class:`OutputTargets`): one callable per image of *that image's* output
  returning a scalar (``camzoo.targets``: ``ClassTarget``, ``SegmentationTarget``, ``BoxTarget``,
  or the user's own). A bare function given to a model whose output is not a classifier's (a
  segmenter's ``out``, a detector's list of dicts) is taken as one such callable for every image.

What one image's output is (:func:`per_image_outputs`): a detector's dict (its output list read
item by item); a segmenter's (C, H, W) slice of ``out`` (a dict's ``"out"`` key) or of a 4-D
tensor; otherwise the ``output=`` selector's rule (``outputs.select_output``), sliced per image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..targets import Target
from .outputs import OutputSelector, TargetFunction, forward_raw, logits_of, select_output, select_targets


class OutputTargets:
    """One target callable per image of a batch (see the module docstring)."""

    def __init__(self, targets: Sequence[Callable[[Any], torch.Tensor]]) -> None:
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: slice | torch.Tensor | Sequence[int]) -> OutputTargets:
        if isinstance(index, slice):
            return OutputTargets(self.targets[index])
        return OutputTargets([self.targets[int(i)] for i in index])

    def categories(self, device: torch.device | None = None) -> torch.Tensor:
        """(B,) long: each target's ``category`` (-1 for a callable that has none)."""
        values = [getattr(t, "category", -1) for t in self.targets]
        return torch.tensor([v if isinstance(v, int) else -1 for v in values], dtype=torch.long, device=device)

    def bound(self, model: nn.Module, images: torch.Tensor, selector: OutputSelector = None,
              chunk: int | None = None) -> OutputTargets:
        """Every target bound to its image's unperturbed output (``Target.bind``); one no-grad forward
        (in chunks of ``chunk`` images), only where some target binds to anything."""
        if not any(isinstance(t, Target) and type(t).bind is not Target.bind for t in self.targets):
            return self
        step = chunk or len(images)
        bound: list[Callable[[Any], torch.Tensor]] = []
        with torch.no_grad():
            for start in range(0, len(images), step):  # the caller's own batch chunks
                outputs = per_image_outputs(forward_raw(model, images[start:start + step]), selector)
                targets = self.targets[start:start + step]
                bound += [t.bind(o) if isinstance(t, Target) else t for t, o in zip(targets, outputs)]
        return OutputTargets(bound)

    def values(self, output: object, selector: OutputSelector = None) -> torch.Tensor:
        """(B,) float32: each target applied to its image's output (differentiable where the output is)."""
        outputs = per_image_outputs(output, selector)
        if len(outputs) != len(self.targets):
            raise ValueError(f"the model returned {len(outputs)} outputs for {len(self.targets)} targets; give one "
                             "target per image")
        scalars = []
        for index, (target, item) in enumerate(zip(self.targets, outputs)):  # the contract is per image
            value = target(item)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"target {target!r} of image {index} must return a scalar tensor; it returned {got}")
            scalars.append(value.reshape(()).float())
        return torch.stack(scalars)


def output_targets(target: object, batch: int) -> OutputTargets | None:
    """``target`` as :class:`OutputTargets` when it is one (a :class:`~camzoo.targets.Target`, or a
    list of callables, one per image or one for all); None for the class forms."""
    if isinstance(target, OutputTargets):
        return target
    if isinstance(target, Target):
        return OutputTargets([target] * batch)
    if isinstance(target, (list, tuple)) and target and all(callable(t) for t in target):
        if len(target) not in (1, batch):
            raise ValueError(f"got {len(target)} targets for a batch of {batch} images; give one target for all "
                             "images, or one per image in the order of the images")
        return OutputTargets(list(target) * (batch if len(target) == 1 else 1))
    return None


def _segmenter_dict(output: object) -> bool:
    """A torchvision segmenter's output: a dict with ``out`` (and no classifier's ``logits``)."""
    return isinstance(output, Mapping) and "out" in output and "logits" not in output


def is_detection_output(output: object) -> bool:
    """A torchvision detector's output: a list of dicts with ``boxes``."""
    return isinstance(output, (list, tuple)) and bool(output) and all(
        isinstance(item, Mapping) and "boxes" in item for item in output)


def per_image_outputs(output: object, selector: OutputSelector = None) -> Sequence[Any]:
    """What each image's target callable receives (the module docstring's rule)."""
    if selector is None and is_detection_output(output):
        return list(output)  # type: ignore[arg-type]
    if selector is None and _segmenter_dict(output):
        output = output["out"]  # type: ignore[index]
    else:
        output = select_output(output, selector)
    if isinstance(output, torch.Tensor):
        return output  # indexing gives one image's slice
    if isinstance(output, (list, tuple)):
        return output
    raise ValueError(f"cannot split the model's output ({type(output).__name__}) into one item per image; pass "
                     "output= (an index, a key or a callable) selecting a batched tensor or a list")


def is_dense_output(output: object) -> bool:
    """Whether an output is a segmenter's or a detector's, not (B, K) class logits."""
    if is_detection_output(output):
        return True
    if _segmenter_dict(output):
        return True
    return isinstance(output, torch.Tensor) and output.ndim == 4


@dataclass(frozen=True)
class Targeted:
    """One forward's result: ``logits`` (B, K) for classes, or the values as (B, 1) for output targets;
    the chosen classes (categories for output targets); each image's explained scalar ``values`` (B,),
    still attached to the graph; and whether output targets were explained."""

    logits: torch.Tensor
    chosen: torch.Tensor
    values: torch.Tensor
    explains_outputs: bool


def targeted_forward(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | TargetFunction |
                     OutputTargets | None, output: OutputSelector = None) -> Targeted:
    """Run ``model`` once and return what each image explains (see :class:`Targeted`)."""
    raw = forward_raw(model, images)
    batch = images.shape[0]
    if not isinstance(targets, OutputTargets) and callable(targets) and output is None and is_dense_output(raw):
        targets = OutputTargets([targets] * batch)
    if isinstance(targets, OutputTargets):
        values = targets.values(raw, output)
        return Targeted(values.detach()[:, None], targets.categories(values.device), values, True)
    if output is None and is_dense_output(raw):
        raise ValueError(f"the model returns {_dense_kind(raw)}, not class logits, so target= must say what to "
                         "explain: camzoo.targets.SegmentationTarget(class) for a segmenter, BoxTarget(label, box) "
                         "for a detector, or a callable of one image's output returning a scalar")
    logits = logits_of(raw, model, images, output)
    chosen = select_targets(targets, logits.detach())  # type: ignore[arg-type]
    return Targeted(logits, chosen, logits.gather(1, chosen[:, None])[:, 0], False)


def scalar_values(raw: object, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | OutputTargets,
                  output: OutputSelector = None) -> torch.Tensor:
    """(B,) float32 scalars of the given (already chosen) targets in a raw model output: output
    targets' values, or the chosen classes' logits."""
    if isinstance(targets, OutputTargets):
        return targets.values(raw, output)
    logits = logits_of(raw, model, images, output)
    return logits.float().gather(1, targets[:, None].to(logits.device))[:, 0]


def target_values(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | OutputTargets,
                  output: OutputSelector = None) -> torch.Tensor:
    """:func:`scalar_values` on ``model(images)``: what the perturbation methods compare between the
    original and the perturbed inputs."""
    return scalar_values(forward_raw(model, images), model, images, targets, output)


def _dense_kind(output: object) -> str:
    return "detections (a list of dicts with boxes, labels, scores)" if is_detection_output(output) else \
        "a dense map per class (a segmenter's output)"
