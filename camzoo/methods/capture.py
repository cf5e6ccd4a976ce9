"""One forward (and, for gradient methods, one backward) that captures one or several layers.

Why this shape: autograd stays off below the first explained layer, whose hook switches it on and
hands on a fresh leaf, so the backward runs only from the logits down to that layer and no
parameter ``.grad`` is ever touched. A later explained layer is recorded as it is (it is already
part of that graph), so several layers share the one forward and the one backward. Hooks live only
inside the call, also when it raises. Outputs in any layout (tokens, NHWC) are brought to (B,C,h,w)
by :mod:`.reshape` — activations and gradients alike — and returned in float32, whatever the model's
dtype, so that CAM arithmetic never runs in half precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..maps import minmax_normalise
from .layers import get_layer
from .outputs import OutputSelector, TargetFunction, run_model, select_targets
from .reshape import Reshape, check_spatial, to_feature_map


@dataclass(frozen=True)
class LayerCapture:
    """One chunk's pass: float32 logits, targets, and per layer (B,C,h,w) float32 activations and
    gradients (None for gradient-free methods), detached, in the order the layers were given."""

    logits: torch.Tensor
    targets: torch.Tensor
    activations: list[torch.Tensor]
    gradients: list[torch.Tensor | None]


@contextlib.contextmanager
def _hooks(model: nn.Module, names: Sequence[str], with_grad: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Record each named module's output; with gradients, the first one reached becomes the leaf."""
    captured: dict[str, torch.Tensor] = {}
    graph = {"on": False}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor; choose another "
                                "layer (a module whose output is one tensor)")
            if not with_grad:
                captured[name] = output.detach()
                return None
            if graph["on"] and output.requires_grad:  # below another explained layer: keep its graph
                captured[name] = output
                return None
            torch.set_grad_enabled(True)
            graph["on"] = True
            leaf = output.detach().requires_grad_(True)
            captured[name] = leaf
            return leaf.clone()  # a non-leaf, so in-place ops after the layer stay legal

        return hook

    handles = [get_layer(model, name).register_forward_hook(make_hook(name)) for name in dict.fromkeys(names)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def capture_layers(
    model: nn.Module,
    images: torch.Tensor,
    names: Sequence[str],
    targets: torch.Tensor | TargetFunction | None,
    *,
    with_grad: bool,
    output: OutputSelector = None,
    reshape: Reshape | None = None,
) -> LayerCapture:
    """Run ``model`` once on ``images``, capturing the layers ``names`` (see the module docstring)."""
    if with_grad and torch.is_inference_mode_enabled():
        raise RuntimeError("gradient-based CAM methods cannot run inside torch.inference_mode(), which forbids "
                           "autograd everywhere; call explain outside it (inside torch.no_grad() is fine)")
    with _hooks(model, names, with_grad) as captured:
        grad_was_enabled = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(False)  # the first hook switches autograd on at its layer
            logits = run_model(model, images, output)
        finally:
            torch.set_grad_enabled(grad_was_enabled)
    missing = [name for name in names if name not in captured]
    if missing:
        raise RuntimeError(f"layer {missing[0]!r} was not called during the forward pass; choose another layer")
    chosen = select_targets(targets, logits.detach())
    outputs = [captured[name] for name in names]
    gradients: list[torch.Tensor | None] = [None] * len(names)
    if with_grad:
        if not logits.requires_grad:
            raise RuntimeError(f"the logits do not depend on layer {names[0]!r}; choose a layer the output uses")
        with torch.enable_grad():  # also inside the caller's torch.no_grad()
            selected = logits.gather(1, chosen[:, None]).sum()
            grads = torch.autograd.grad(selected, outputs, allow_unused=True)
        for name, grad in zip(names, grads):
            if grad is None:
                raise RuntimeError(f"the logits do not depend on layer {name!r}; choose a layer the output uses")
        gradients = list(grads)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    activations: list[torch.Tensor] = []
    for index, name in enumerate(names):
        module = get_layer(model, name)
        pair = [to_feature_map(t.detach(), model, name, module, size, reshape).float()
                if t is not None else None for t in (outputs[index], gradients[index])]
        check_spatial(pair[0], name, size)
        for what, tensor in zip(("activations", "gradients"), pair):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise FloatingPointError(f"the {what} of layer {name!r} contain NaN or infinite values; check the "
                                         "model's weights and the input for NaN/inf")
        activations.append(pair[0])
        gradients[index] = pair[1]
    return LayerCapture(logits.detach(), chosen, activations, gradients)


def fuse_layer_maps(raws: Sequence[torch.Tensor]) -> torch.Tensor:
    """Several layers' raw maps (B,h_i,w_i) -> one (B,h,w) map at the finest layer's resolution.

    The rule (docs/methods.md): each map is min-max normalised per image (so no layer dominates by
    scale), resized bilinearly to the largest of the layers' resolutions, and the maps are averaged.
    One layer's map is returned unchanged.
    """
    if len(raws) == 1:
        return raws[0]
    size = max((tuple(r.shape[-2:]) for r in raws), key=lambda hw: hw[0] * hw[1])
    resized = [F.interpolate(minmax_normalise(r.float())[:, None], size=size, mode="bilinear",
                             align_corners=False)[:, 0] for r in raws]
    return torch.stack(resized).mean(dim=0)
