"""Several methods on one batch, with the activation/gradient family sharing one forward and one backward.

Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, Eigen-CAM, EigenGrad-CAM (and any method whose
only work is ``compute(activations, gradients)`` on the same layer) read the same two tensors, so
running them one by one repeats the forward and backward each time. Here one capture (the base
class's, so hooks, eval mode, chunking and checks are the same code) feeds every such method, and
each result is built by the same :meth:`CAMMethod.explanation` a single-method call uses: the maps
are identical to one-at-a-time calls. Methods that need their own passes (Score-CAM, Ablation-CAM,
the controls, ``attention``, Captum) run after it, each as usual.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..explanation import Explanation
from .base import CAMMethod, GroundTruth, TargetSpec
from .capture import fuse_layer_maps
from .registry import get_method, shares_one_pass


class _SharedPass(CAMMethod):
    """Runs the base capture once and stacks every member's raw map: (B, M, h, w)."""

    name = "shared-pass"

    def __init__(self, members: Sequence[CAMMethod], model: nn.Module, layer: Any, batch_size: int | None,
                 **base_options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **base_options)
        self.members = list(members)
        self.uses_gradients = any(m.uses_gradients for m in self.members)  # type: ignore[misc]

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One capture; each member's map computed (and fused over layers) as its own raw_maps would."""
        captured = self.capture(images, targets)
        pairs = list(zip(captured.activations, captured.gradients))
        with torch.no_grad():
            raw = torch.stack([fuse_layer_maps([m.layer_map(a, g if m.uses_gradients else None) for a, g in pairs])
                               for m in self.members], dim=1)
        return captured.logits, captured.targets, raw


def method_list(methods: Sequence[str | type[CAMMethod]]) -> list[type[CAMMethod]]:
    """Method names or classes -> classes, in order, each once (a method named twice runs once)."""
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise TypeError(f"methods must be a non-empty list of method names; got {methods!r}")
    classes = [m if isinstance(m, type) and issubclass(m, CAMMethod) else get_method(m) for m in methods]
    return list(dict.fromkeys(classes))


def explain_many(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str | type[CAMMethod]],
    target: TargetSpec = None,
    layer: Any = None,
    batch_size: int | None = None,
    ground_truth: GroundTruth | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    **base_options: Any,
) -> dict[str, Explanation]:
    """One :class:`Explanation` per method, keyed by method name in the order given.

    images: a normalised (B,3,H,W) batch. method_options: ``{method name: {option: value}}`` for
    the methods that take options (e.g. ``{"scorecam": {"memory_mb": 256}}``). base_options: the
    base class's own keywords (``output=``, ``reshape=``), given to every method.
    """
    classes = method_list(methods)
    options = dict(method_options or {})
    unknown = sorted(set(options) - {c.name for c in classes})
    if unknown:
        raise ValueError(f"method_options names {unknown}, which are not among the methods {[c.name for c in classes]}; "
                         "key the options by method name")
    instances = {cls.name: cls(model, layer=layer, batch_size=batch_size, **base_options,
                               **cls.check_options(options.get(cls.name))) for cls in classes}
    shared = [instances[cls.name] for cls in classes if shares_one_pass(cls) and not instances[cls.name].aug_smooth]
    results: dict[str, Explanation] = {}
    if len(shared) > 1:
        driver = _SharedPass(shared, model, layer, batch_size, **base_options)
        logits, targets, raw = driver.run(images, target, ground_truth)
        for index, member in enumerate(shared):
            member.layers, member.layer = driver.layers, driver.layer
            results[member.name] = driver.explanation(images, logits, targets, raw[:, index], method=member.name)
    for cls in classes:
        if cls.name not in results:
            results[cls.name] = instances[cls.name](images, target, ground_truth=ground_truth)
    return {cls.name: results[cls.name] for cls in classes}
