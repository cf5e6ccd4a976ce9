"""Find the layer a CAM method explains: given by the user, declared by the model, or detected.

Detection rule (one rule for torchvision, timm and camzoo models): run one probe forward and take
the *final spatial feature map* — the last 4-D output with more than one spatial position, not
counting adaptive pooling in the head — then name a module that produced exactly that tensor:
timm's own stage name where it declares one (``stages.3``), else the outermost module containing a
convolution (so ``layer4`` rather than its last ReLU or a following Identity).
"""

from __future__ import annotations

import difflib
import weakref

import torch
from torch import nn

from ..modelutil import model_input_size
from ..modelutil import eval_mode, model_device

_CONV_TYPES = (nn.Conv2d,)
_HEAD_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_detected: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, _CONV_TYPES) for m in module.modules())


def _timm_stage_names(model: nn.Module) -> set[str]:
    """Stage names timm declares (``feature_info``), used to name the final map as users know it."""
    info = getattr(model, "feature_info", None)
    try:
        return {entry["module"] for entry in info} if info else set()
    except (TypeError, KeyError):
        return set()


def module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(
        f"the layer {type(module).__name__} passed as a module is not part of the model; pass one of "
        "model's own sub-modules (or its dotted name)"
    )


def get_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"layer {name!r} not found in {type(model).__name__}.{hint} Layer names are dotted paths as "
        "listed by model.named_modules(), e.g. 'layer4'."
    )


def detect_layer(model: nn.Module, probe: torch.Tensor | None = None) -> str:
    """Name of the module producing the model's final spatial feature map (cached per model)."""
    if model in _detected:
        return _detected[model]
    if not has_conv(model):
        raise ValueError(
            f"{type(model).__name__} has no convolutional layer, so there is no spatial feature map to "
            "explain; CAM methods need a CNN (or pass layer=... naming a module with a (B,C,h,w) output)"
        )
    if probe is None:
        height, width = model_input_size(model) or (224, 224)
        probe = torch.zeros(1, 3, height, width, device=model_device(model))
    outputs: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(
                module.register_forward_hook(
                    lambda mod, inp, out, name=name: outputs.append((name, mod, out))
                    if isinstance(out, torch.Tensor)
                    else None
                )
            )
    try:
        with eval_mode(model), torch.no_grad():
            model(probe[:1])
    finally:
        for handle in handles:
            handle.remove()
    spatial = [
        (n, m, o)
        for n, m, o in outputs
        if o.ndim == 4 and o.shape[-1] * o.shape[-2] > 1 and not isinstance(m, _HEAD_POOLING)
    ]
    if not spatial:
        raise ValueError(
            f"{type(model).__name__} produced no (B,C,h,w) feature map with h*w > 1 for a "
            f"{tuple(probe.shape[-2:])} input; pass layer=... or a larger image"
        )
    final = spatial[-1][2]
    same = [(n, m) for n, m, o in spatial if o.data_ptr() == final.data_ptr() and o.shape == final.shape]
    with_conv = [(n, m) for n, m in same if has_conv(m)] or same
    stage_names = _timm_stage_names(model)
    named_stages = [n for n, _ in with_conv if n in stage_names]
    name = named_stages[0] if named_stages else min(with_conv, key=lambda item: item[0].count("."))[0]
    _detected[model] = name
    return name


def resolve_layer(model: nn.Module, layer: nn.Module | str | None, probe: torch.Tensor | None = None) -> str:
    """Dotted name of the layer to explain: the given one, the model's declared default, or detected."""
    if isinstance(layer, nn.Module):
        return module_name(model, layer)
    if isinstance(layer, str):
        get_layer(model, layer)
        return layer
    if layer is not None:
        raise TypeError(f"layer must be a module, a dotted name or None; got {type(layer).__name__}")
    declared = getattr(model, "default_cam_layer", None)
    if isinstance(declared, str):
        get_layer(model, declared)
        return declared
    return detect_layer(model, probe)
