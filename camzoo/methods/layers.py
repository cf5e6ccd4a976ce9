"""Find the layer a CAM method explains: given by the user, declared by the model, or chosen per family.

Automatic choice, per input size (a 1x1 map at a small size moves the choice, so it is never
cached across sizes):

1. **Transformer and MLP families** (docs/methods.md, "Layer choice per family"), the layer the CAM
   literature uses: timm ViT/DeiT/BEiT/EVA-style models (a ``patch_embed`` and ``blocks``): the last
   block's ``norm1``; timm Swin: ``layers[-1].blocks[-1].norm1``; timm MLP-Mixer/ResMLP/gMLP: the
   final ``norm`` (the token map the head averages, so Grad-CAM there is the original CAM);
   torchvision ViT: the last encoder layer's ``ln_1``; torchvision Swin: the last stage's last
   block's ``norm1``. For Swin, a stage whose map is 1x1 at this size gives way to the one before.
2. **Segmenters and detectors** (torchvision's): a segmenter's backbone stage that its head reads
   (``backbone.layer4`` for FCN/DeepLabV3 on a ResNet); a detector's ``backbone``, whose feature
   pyramid is read as one map (``reshape.pyramid_to_feature_map``).
3. **Everything else** (CNNs, ConvNeXt, EfficientNet): one probe forward; take the *final spatial
   feature map* — the last 4-D output with more than one spatial position, not counting adaptive
   pooling in the head — then name a module that produced exactly that tensor: timm's own stage
   name where it declares one (``stages.3``), else the outermost module containing a convolution
   (so ``layer4`` rather than its last ReLU or a following Identity).
"""

from __future__ import annotations

import difflib
import weakref

import torch
from torch import nn

from ..modelutil import eval_mode, model_device, model_input_size
from .outputs import model_dtype
from .reshape import is_channels_last, to_feature_map

_CONV_TYPES = (nn.Conv2d,)
_HEAD_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_detected: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], str]] = weakref.WeakKeyDictionary()
LayerSpec = nn.Module | str | None | list[nn.Module | str] | tuple[nn.Module | str, ...]


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
    ending = [n for n in modules if n.endswith(f".{name}")] if name else []
    if len(ending) == 1:  # a unique last part: "layer2" is camzoo ResNets' "backbone.trunk.layer2"
        return modules[ending[0]]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"layer {name!r} not found in {type(model).__name__}.{hint} Layer names are dotted paths as "
        "listed by model.named_modules(), e.g. 'layer4', or a unique ending of one."
    )


def _is_from(model: nn.Module, package: str, *class_names: str) -> bool:
    """Whether the model is (a subclass of) one of ``class_names`` defined in ``package``."""
    return any(cls.__module__.startswith(package) and cls.__name__ in class_names for cls in type(model).__mro__)


def _last_index(container: object) -> int | None:
    return len(container) - 1 if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) else None


def _dense_family_layer(model: nn.Module) -> str | None:
    """torchvision segmenters: the backbone stage whose output the head reads (``out``, LRASPP's
    ``high``: ``backbone.layer4`` for a ResNet); detectors: the whole ``backbone``, a feature pyramid."""
    if _is_from(model, "torchvision.", "GeneralizedRCNN", "RetinaNet", "FCOS", "SSD"):
        return "backbone"
    if _is_from(model, "torchvision.", "FCN", "DeepLabV3", "LRASPP"):
        returned = getattr(model.backbone, "return_layers", {})
        for module, key in returned.items():
            if key in ("out", "high"):
                return f"backbone.{module}"
    return None


def family_candidates(model: nn.Module) -> list[str]:
    """The family's layer (see the module docstring), or its candidates in order of preference; [] if
    the model is not of a known transformer/MLP/dense-prediction family."""
    dense = _dense_family_layer(model)
    if dense is not None:
        return [dense]
    if _is_from(model, "torchvision.", "VisionTransformer"):
        layers = model.encoder.layers
        return [f"encoder.layers.{list(layers._modules)[-1]}.ln_1"]
    if _is_from(model, "torchvision.", "SwinTransformer"):
        stages = [i for i, stage in enumerate(model.features)
                  if isinstance(stage, nn.Sequential) and len(stage) and hasattr(stage[-1], "norm1")]
        return [f"features.{i}.{len(model.features[i]) - 1}.norm1" for i in reversed(stages)]
    if _is_from(model, "timm.", "MlpMixer") and isinstance(getattr(model, "norm", None), nn.Module):
        return ["norm"]
    if getattr(model, "output_fmt", None) == "NHWC" and isinstance(getattr(model, "layers", None), nn.Sequential):
        found = []
        for i, stage in reversed(list(enumerate(model.layers))):
            last = _last_index(getattr(stage, "blocks", None))
            if last is not None and hasattr(stage.blocks[last], "norm1"):
                found.append(f"layers.{i}.blocks.{last}.norm1")
        return found
    last = _last_index(getattr(model, "blocks", None))
    if last is not None and hasattr(model, "patch_embed") and isinstance(getattr(model.blocks[last], "norm1", None),
                                                                          nn.Module):
        return [f"blocks.{last}.norm1"]
    return []


def _probe_outputs(model: nn.Module, probe: torch.Tensor, names: list[str] | None
                   ) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, output) of the named modules (None: every module) on one probe forward."""
    outputs: list[tuple[str, nn.Module, torch.Tensor]] = []
    wanted = set(names) if names is not None else None
    handles = []
    for name, module in model.named_modules():
        if name and (wanted is None or name in wanted):
            handles.append(module.register_forward_hook(
                lambda mod, inp, out, name=name: outputs.append((name, mod, out)) if isinstance(out, torch.Tensor)
                else None))
    try:
        with eval_mode(model), torch.no_grad():
            model(probe[:1].to(model_dtype(model)))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _spatial_positions(model: nn.Module, name: str, module: nn.Module, output: torch.Tensor) -> int:
    """h*w of a 4-D output, read in the layout its module gives it."""
    height, width = output.shape[1:3] if is_channels_last(model, name, module) else output.shape[2:]
    return int(height * width)


def detect_layer(model: nn.Module, probe: torch.Tensor | None = None) -> str:
    """The automatic layer for this model at the probe's size (cached per model and input size)."""
    if probe is None:
        height, width = model_input_size(model) or (224, 224)
        probe = torch.zeros(1, 3, height, width, device=model_device(model))
    size = (int(probe.shape[-2]), int(probe.shape[-1]))
    cache = _detected.setdefault(model, {})
    if size not in cache:
        cache[size] = _family_layer(model, probe, size) or _final_feature_map(model, probe)
    return cache[size]


def _family_layer(model: nn.Module, probe: torch.Tensor, size: tuple[int, int]) -> str | None:
    """The family's layer: its first candidate whose map has more than one position at this size."""
    candidates = family_candidates(model)
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    produced = {name: (module, out) for name, module, out in _probe_outputs(model, probe, candidates)}
    for name in candidates:
        if name in produced:
            try:
                feature_map = to_feature_map(produced[name][1], model, name, produced[name][0], size)
            except ValueError:
                continue
            if feature_map.shape[-1] * feature_map.shape[-2] > 1:
                return name
    return candidates[-1]


def _final_feature_map(model: nn.Module, probe: torch.Tensor) -> str:
    """The module producing the model's final spatial (B,C,h,w) feature map (rule 3 of the module docstring)."""
    if not has_conv(model):
        raise ValueError(
            f"{type(model).__name__} has no convolutional layer, so there is no spatial feature map to "
            "explain; CAM methods need a CNN (or pass layer=... naming a module with a (B,C,h,w) output)"
        )
    spatial = [
        (n, m, o)
        for n, m, o in _probe_outputs(model, probe, None)
        if o.ndim == 4 and _spatial_positions(model, n, m, o) > 1 and not isinstance(m, _HEAD_POOLING)
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
    return named_stages[0] if named_stages else min(with_conv, key=lambda item: item[0].count("."))[0]


def resolve_layer(model: nn.Module, layer: nn.Module | str | None, probe: torch.Tensor | None = None) -> str:
    """Dotted name of the layer to explain: the given one, the model's declared default, or detected."""
    if isinstance(layer, nn.Module):
        return module_name(model, layer)
    if isinstance(layer, str):
        get_layer(model, layer)
        return layer
    if layer is not None:
        raise TypeError(f"layer must be a module, a dotted name, a list of those, or None; got {type(layer).__name__}")
    declared = getattr(model, "default_cam_layer", None)
    if isinstance(declared, str):
        get_layer(model, declared)
        return declared
    return detect_layer(model, probe)


def resolve_layers(model: nn.Module, layer: LayerSpec, probe: torch.Tensor | None = None) -> list[str]:
    """One or several layers (``layer=[...]``: their maps are fused, see ``capture.fuse_layer_maps``)."""
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise ValueError("layer=[] names no layer; pass a module or dotted name, a list of them, or None")
        if any(item is None for item in layer):
            raise TypeError("layer=[...] must hold modules or dotted names, not None")
        return list(dict.fromkeys(resolve_layer(model, item, probe) for item in layer))
    return [resolve_layer(model, layer, probe)]
