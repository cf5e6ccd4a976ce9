"""One forward (and, for gradient methods, one backward) that captures one or several layers.

Why this shape: autograd stays off below the first explained layer, whose hook switches it on and
hands on a fresh leaf, so the backward runs only from the logits down to that layer and no
parameter ``.grad`` is ever touched. A later explained layer is recorded as it is (it is already
part of that graph), so several layers share the one forward and the one backward. Hooks live only
inside the call, also when it raises. Outputs in any layout (tokens, NHWC, a detector's dict of
pyramid levels, each level its own leaf) are brought to (B,C,h,w) by :mod:`.reshape` — activations
and gradients alike — and returned in float32, whatever the model's dtype, so that CAM arithmetic
never runs in half precision. What is differentiated is each image's explained scalar
(:mod:`.objectives`: a class logit, or an output target's value).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..maps import minmax_normalise
from .layers import get_layer
from .objectives import OutputTargets, targeted_forward
from .outputs import OutputSelector, TargetFunction
from .reshape import Reshape, check_spatial, to_feature_map


@dataclass(frozen=True)
class LayerCapture:
    """One chunk's pass: float32 logits, targets, and per layer (B,C,h,w) float32 activations and
    gradients (None for gradient-free methods), detached, in the order the layers were given."""

    logits: torch.Tensor
    targets: torch.Tensor
    activations: list[torch.Tensor]
    gradients: list[torch.Tensor | None]
    explains_outputs: bool = False  # output targets (camzoo.targets): ``logits`` holds their values as (B, 1)
    outputs: tuple[object, ...] = ()  # each layer's output as the layer returned it, detached (Ablation-CAM)


def layer_tensors(output: object) -> dict[str, torch.Tensor] | None:
    """A layer's output as {key: tensor}: one tensor (key ""), or a dict of tensors (a detector's FPN
    levels); None for anything else."""
    if isinstance(output, torch.Tensor):
        return {"": output}
    if isinstance(output, Mapping) and output and all(isinstance(v, torch.Tensor) for v in output.values()):
        return dict(output)
    return None


def rebuild_output(output: object, tensors: dict[str, torch.Tensor]) -> object:
    """The layer's output with its tensors replaced (same container type)."""
    return tensors[""] if isinstance(output, torch.Tensor) else type(output)(tensors)  # type: ignore[call-arg]


@contextlib.contextmanager
def layer_hooks(model: nn.Module, names: Sequence[str], with_grad: bool) -> Iterator[dict[str, object]]:
    """Record each named module's output; with gradients, the first one reached becomes the leaf
    (each tensor of a dict output becomes one)."""
    captured: dict[str, object] = {}
    graph = {"on": False}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> object:
            tensors = layer_tensors(output)
            if tensors is None:
                raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor or a dict of tensors; "
                                "choose another layer (a module whose output is one tensor)")
            if not with_grad:
                captured[name] = rebuild_output(output, {k: v.detach() for k, v in tensors.items()})
                return None
            if graph["on"] and all(t.requires_grad for t in tensors.values()):  # below another explained layer
                captured[name] = output
                return None
            torch.set_grad_enabled(True)
            graph["on"] = True
            leaves = {k: v.detach().requires_grad_(True) for k, v in tensors.items()}
            captured[name] = rebuild_output(output, leaves)
            # non-leaves, so in-place ops after the layer stay legal
            return rebuild_output(output, {k: v.clone() for k, v in leaves.items()})

        return hook

    handles = [get_layer(model, name).register_forward_hook(make_hook(name)) for name in dict.fromkeys(names)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _gradients(value: torch.Tensor, outputs: list[object], names: Sequence[str]) -> list[object]:
    """d value / d each layer's output, in the output's own form (a dict for a dict output); a level
    of a dict the value does not depend on gets zeros (a detector's RPN-only ``pool`` level)."""
    flat = [(index, key, tensor) for index, out in enumerate(outputs) for key, tensor in layer_tensors(out).items()]
    grads = torch.autograd.grad(value, [t for _, _, t in flat], allow_unused=True)
    per_layer: list[dict[str, torch.Tensor | None]] = [{} for _ in outputs]
    for (index, key, _), grad in zip(flat, grads):
        per_layer[index][key] = grad
    result = []
    for name, out, found in zip(names, outputs, per_layer):
        if all(g is None for g in found.values()):
            raise RuntimeError(f"the explained scores do not depend on layer {name!r}; choose a layer the output uses")
        tensors = layer_tensors(out)
        result.append(rebuild_output(out, {k: g if g is not None else torch.zeros_like(tensors[k]) for k, g in found.items()}))
    return result


def capture_layers(
    model: nn.Module,
    images: torch.Tensor,
    names: Sequence[str],
    targets: torch.Tensor | TargetFunction | OutputTargets | None,
    *,
    with_grad: bool,
    output: OutputSelector = None,
    reshape: Reshape | None = None,
) -> LayerCapture:
    """Run ``model`` once on ``images``, capturing the layers ``names`` (see the module docstring)."""
    if with_grad and torch.is_inference_mode_enabled():
        raise RuntimeError("gradient-based CAM methods cannot run inside torch.inference_mode(), which forbids "
                           "autograd everywhere; call explain outside it (inside torch.no_grad() is fine)")
    with layer_hooks(model, names, with_grad) as captured:
        grad_was_enabled = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(False)  # the first hook switches autograd on at its layer
            result = targeted_forward(model, images, targets, output)
        finally:
            torch.set_grad_enabled(grad_was_enabled)
    missing = [name for name in names if name not in captured]
    if missing:
        raise RuntimeError(f"layer {missing[0]!r} was not called during the forward pass; choose another layer")
    outputs = [captured[name] for name in names]
    gradients: list[object] = [None] * len(names)
    if with_grad:
        if not result.values.requires_grad:
            raise RuntimeError(f"the explained scores do not depend on layer {names[0]!r}; choose a layer the "
                               "output uses")
        with torch.enable_grad():  # also inside the caller's torch.no_grad()
            gradients = _gradients(result.values.sum(), outputs, names)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    activations: list[torch.Tensor] = []
    maps: list[torch.Tensor | None] = []
    for index, name in enumerate(names):
        module = get_layer(model, name)
        pair = [to_feature_map(_detached(t), model, name, module, size, reshape).float()
                if t is not None else None for t in (outputs[index], gradients[index])]
        check_spatial(pair[0], name, size)
        for what, tensor in zip(("activations", "gradients"), pair):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise FloatingPointError(f"the {what} of layer {name!r} contain NaN or infinite values; check the "
                                         "model's weights and the input for NaN/inf")
        activations.append(pair[0])
        maps.append(pair[1])
    return LayerCapture(result.logits.detach(), result.chosen, activations, maps, result.explains_outputs,
                        tuple(_detached(out) for out in outputs))


def _detached(output: object) -> object:
    return rebuild_output(output, {k: v.detach() for k, v in layer_tensors(output).items()})


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
