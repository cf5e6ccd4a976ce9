"""Methods that run another method: ``WRAPPER(INNER)`` names, and RefineCAM.

A wrapper (``sess``, ``refinecam``) builds its map from the maps of an *inner* method, any other
registered method (``captum:<Name>`` included). Users name the pair as one method,
``"sess(gradcam)"``, everywhere a method name goes (``camzoo.explain``, ``camzoo explain --method``,
a benchmark's ``methods`` list); the bare name runs the wrapper's default inner method (pytorch-grad-cam's:
Grad-CAM for SESS, Grad-CAM++ for RefineCAM). ``registry.get_method`` parses the name and asks the
wrapper for :meth:`WrapperCAM.with_inner`, which builds (once, then reuses) a subclass whose ``inner``
is that method and whose ``name`` is the canonical ``"sess(gradcam)"``.

Options: a wrapper takes its own and every option of its inner method, by name; an option both take
(``memory_mb``) goes to both, and so does a keyword of the base class (``output=``, ``reshape=``)
where the inner method takes it. The layer (``layer=``, or ``sess(gradcam)@layer3``) is the inner
method's. Wrappers do not nest, and an inner method that needs ground truth (``oracle``) is refused.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from ..maps import minmax_normalise
from ..modelutil import eval_mode
from .base import CAMMethod
from .layers import LayerSpec, family_candidates, has_conv, resolve_layer, resolve_layers
from .outputs import OutputSelector, run_model
from .registry import METHODS, register, shares_one_pass

_WRAPPED: dict[tuple[type, type], type] = {}
_NOT_OPTIONS = {"self", "model", "layer", "batch_size"}
REFINE_STAGES = 3  # refinecam's default: the outputs of the model's last three stages
_HEAD_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _init_options(klass: type) -> set[str]:
    """The keyword options a class's own ``__init__`` names (not the model, layer or batch size)."""
    init = klass.__dict__.get("__init__")
    if init is None:
        return set()
    return {name for name, p in inspect.signature(init).parameters.items()
            if name not in _NOT_OPTIONS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _takes(klass: type, name: str) -> bool:
    """Whether ``klass(...)`` accepts the keyword ``name`` (by name, or through ``**kwargs``)."""
    parameters = inspect.signature(klass.__init__).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class WrapperCAM(CAMMethod):
    """Base of the wrappers (not registered itself): the inner method, and the options split between
    the wrapper (the classes after this one in the MRO) and the inner method."""

    family = "wrapper"
    inner: ClassVar[type[CAMMethod] | None] = None  # set on the classes ``with_inner`` builds
    default_inner: ClassVar[str] = ""  # the inner method of the bare name
    label: ClassVar[str] = ""  # what ``camzoo methods`` says the wrapper does

    @classmethod
    def inner_class(cls) -> type[CAMMethod]:
        """The method this class wraps: its ``inner``, else the bare name's default."""
        return cls.inner or METHODS.lookup(cls.default_inner)

    @classmethod
    def with_inner(cls, inner: type[CAMMethod]) -> type[WrapperCAM]:
        """The class of ``"<wrapper>(<inner>)"`` (built once per pair, then the same class).

        Raises:
            ValueError: ``inner`` is itself a wrapper (wrappers do not nest) or needs ground truth.
        """
        if issubclass(inner, WrapperCAM):
            raise ValueError(f"method '{cls.name}({inner.name})': wrappers do not nest; wrap a plain method, "
                             f"e.g. '{cls.name}({cls.default_inner})'")
        if inner.needs_ground_truth:
            raise ValueError(f"method '{cls.name}({inner.name})': {inner.name!r} draws the ground truth, which "
                             f"{cls.name} cannot pass to its inner runs; wrap an explanation method")
        key = (cls, inner)
        if key not in _WRAPPED:
            name = f"{cls.name}({inner.name})"
            _WRAPPED[key] = type(f"{cls.__name__}Of{inner.__name__}", (cls,), {
                "name": name,
                "aliases": (),
                "inner": inner,
                "summary": f"{cls.label}, around {inner.name}",
                "__doc__": f"``{name}``: {cls.__name__} of ``{inner.name}`` (see {cls.__module__}.{cls.__name__}).",
                "__module__": cls.__module__,
                **cls.facts_of(inner),
            })
        return _WRAPPED[key]

    @classmethod
    def facts_of(cls, inner: type[CAMMethod]) -> dict[str, Any]:
        """Class attributes of the wrapped class that follow from its inner method."""
        return {"uses_gradients": inner.uses_gradients, "reference": inner.reference}

    @classmethod
    def option_parameters(cls) -> dict[str, inspect.Parameter]:
        """The wrapper's own options, then the inner method's (which the wrapper passes on)."""
        found = super().option_parameters()
        for name, parameter in cls.inner_class().option_parameters().items():
            found.setdefault(name, parameter)
        return found

    @classmethod
    def applies_to(cls, model_class: type) -> bool:
        return cls.inner_class().applies_to(model_class)

    def __init__(self, model: nn.Module, layer: LayerSpec = None, batch_size: int | None = None,
                 **options: Any) -> None:
        inner = self.inner_class()
        mro = type(self).__mro__
        parents = set().union(*(_init_options(k) for k in mro[mro.index(WrapperCAM) + 1:]))
        passed = set(inner.option_parameters()) | {k for k in _init_options(CAMMethod) if _takes(inner, k)}
        # eigen_smooth shapes the inner method's maps (as pytorch-grad-cam passes it to the base method);
        # aug_smooth averages the wrapper's whole map over the augmentations, once
        parents.discard("eigen_smooth")
        passed.discard("aug_smooth")
        unknown = sorted(set(options) - parents - passed)
        if unknown:
            listed = ", ".join(sorted(set(self.option_parameters())))
            raise TypeError(f"method {self.name!r} does not take option(s) {', '.join(unknown)}; its options: {listed}")
        super().__init__(model, layer=layer, batch_size=batch_size,
                         **{k: v for k, v in options.items() if k in parents})
        self.inner_options = {k: v for k, v in options.items() if k in passed}
        self.inner_method = inner(model, layer=layer, **self.inner_options)  # checks the inner's options now

    def make_inner(self, layer: LayerSpec) -> CAMMethod:
        """A fresh inner method on ``layer``, with the options given to the wrapper."""
        return self.inner_class()(self.model, layer=layer, **self.inner_options)


def resize_matrix(source: int, target: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(target, source) matrix of bilinear resizing along one axis (pixel centres, no antialiasing)
    with OpenCV's coefficients, so that resizing X is ``R_rows @ X @ R_cols.T``: positions
    (d + 0.5) * source / target - 0.5 and their fractions f in double, weights (1 - f, f) in float;
    beyond the edge pixels' centres, the edge pixel alone.

    Why not ``F.interpolate``: its positions are float, so where one falls (nearly) on a source pixel
    (scale 9/7, odd factors) a neighbour's weight is 0 in one and ~1e-15 or ~1e-7 in the other. The
    values agree within 3e-6 either way, but SESS's fusion asks whether a pasted value is above 0,
    which on maps with exact zeros needs the same zeros as pytorch-grad-cam's ``cv2.resize``.
    """
    position = (torch.arange(target, dtype=torch.float64) + 0.5) * (source / target) - 0.5
    low = position.floor()
    fraction = (position - low).float()
    low = low.long()
    clamped = (low < 0) | (low >= source - 1)
    fraction = torch.where(clamped, torch.zeros_like(fraction), fraction)
    low = low.clamp(0, source - 1)
    matrix = torch.zeros(target, source)
    rows = torch.arange(target)
    matrix[rows, low] = 1 - fraction
    matrix[rows[~clamped], low[~clamped] + 1] = fraction[~clamped]
    return matrix.to(device)


def resized_inner_maps(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n,h,w) inner raw maps -> (n,H,W) in [0,1] as pytorch-grad-cam hands a map on: min-max at the
    layer's resolution, bilinear resize (:func:`resize_matrix`), min-max again. The same map as
    resizing first, except that its zeros are exact (see :func:`resize_matrix`)."""
    raw = minmax_normalise(raw.float())
    rows = resize_matrix(raw.shape[-2], size[0], raw.device)
    cols = resize_matrix(raw.shape[-1], size[1], raw.device)
    return minmax_normalise(rows @ raw @ cols.T)


def _probe_with_grad(model: nn.Module, probe: torch.Tensor, output: OutputSelector
                     ) -> tuple[list[tuple[str, nn.Module, torch.Tensor]], torch.Tensor]:
    """Every module's tensor output on one probe forward, in call order, and the logits, with autograd on."""
    outputs: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = [module.register_forward_hook(
        lambda mod, inp, out, name=name: outputs.append((name, mod, out)) if isinstance(out, torch.Tensor) else None)
        for name, module in model.named_modules() if name]
    try:
        with eval_mode(model), torch.enable_grad():
            logits = run_model(model, probe[:1].detach().clone().requires_grad_(True), output)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, logits


def _stage_name(maps: list[tuple[str, nn.Module, torch.Tensor]], tensor: torch.Tensor) -> str:
    """The name of a stage whose output is ``tensor``: of the modules that returned it, the outermost
    one holding a convolution whose inner outputs all share its resolution (``layer2``, not the
    block ``layer2.1``, nor the ``trunk`` that also holds ``layer1``)."""
    size = tuple(tensor.shape[-2:])
    same = [(n, m) for n, m, o in maps if o.data_ptr() == tensor.data_ptr() and o.shape == tensor.shape]
    one_size = [(n, m) for n, m in same
                if all(tuple(o.shape[-2:]) == size for k, _, o in maps if k.startswith(n + "."))] or same
    with_conv = [(n, m) for n, m in one_size if has_conv(m)] or one_size
    return min(with_conv, key=lambda item: item[0].count("."))[0]


def stage_layers(model: nn.Module, probe: torch.Tensor, output: OutputSelector = None,
                 count: int = REFINE_STAGES) -> list[str]:
    """A CNN's last ``count`` stages at the probe's size: the automatic layer (every method's
    default), preceded by, for each of the ``count - 1`` previous resolutions, the last feature map
    (more than one channel and position) the logits depend on, named by :func:`_stage_name`.
    For a timm ResNet-18 at 64 px: layer2, layer3, layer4 (TorchCAM's RefineCAM example)."""
    if family_candidates(model):
        raise ValueError(f"refinecam picks a CNN's last stages by default; for {type(model).__name__} pass "
                         "layer=[...] naming the layers whose maps to multiply")
    final = resolve_layer(model, None, probe)
    outputs, logits = _probe_with_grad(model, probe, output)
    maps = [(n, m, o) for n, m, o in outputs if o.ndim == 4 and not isinstance(m, _HEAD_POOLING)]
    spatial = [(n, m, o) for n, m, o in maps if o.shape[1] > 1 and o.shape[-2] * o.shape[-1] > 1]
    if logits.requires_grad:  # not inside torch.inference_mode(): keep what the logits depend on
        tracked = [item for item in spatial if item[2].requires_grad]
        with torch.enable_grad():
            used = torch.autograd.grad(logits.sum(), [o for _, _, o in tracked], allow_unused=True) if tracked else []
        spatial = [item for item, grad in zip(tracked, used) if grad is not None]
    end = next((i for i, (n, _, _) in enumerate(spatial) if n == final), len(spatial))
    final_size = tuple(spatial[end][2].shape[-2:]) if end < len(spatial) else None
    last_at = {tuple(o.shape[-2:]): i for i, (_, _, o) in enumerate(spatial[:end]) if tuple(o.shape[-2:]) != final_size}
    earlier = sorted(last_at.values())[max(0, len(last_at) - (count - 1)):]
    names = [_stage_name(maps, spatial[i][2]) for i in earlier] + [final]
    if len(names) < 2:
        raise ValueError(f"refinecam found one feature-map resolution in {type(model).__name__} at "
                         f"{tuple(probe.shape[-2:])}; pass layer=[...] naming at least two layers (or a larger image)")
    return list(dict.fromkeys(names))


@register
class RefineCAM(WrapperCAM):
    """RefineCAM (Domeniconi et al. 2026): the product of the inner method's maps at several layers,
    each upsampled to the input and min-max normalised.

    pytorch-grad-cam's ``RefineCAM`` (default inner: Grad-CAM++), whose per-layer maps are at the
    input's size; TorchCAM multiplies them at the finest layer's resolution instead. Layers:
    ``layer=[...]``, else the last three stages of a CNN (:func:`stage_layers`). A one-pass inner
    method (``layer_map`` only) reads every layer from one forward and backward.
    """

    name = "refinecam"
    cost = "backward"  # Grad-CAM++'s; a wrapped class takes its inner method's
    default_inner = "gradcampp"
    label = "RefineCAM: the product of the inner method's maps at several layers"
    summary = f"{label} (refinecam(INNER); bare: gradcampp)"
    paper = "Domeniconi et al. 2026"
    uses_gradients = True

    def __init__(self, model: nn.Module, layer: LayerSpec = None, batch_size: int | None = None,
                 **options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **options)
        self._stages: dict[tuple[int, ...], list[str]] = {}

    @classmethod
    def facts_of(cls, inner: type[CAMMethod]) -> dict[str, Any]:
        return {**super().facts_of(inner), "cost": inner.cost, "serves_output_targets": inner.serves_output_targets}

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, targets, product of the per-layer maps at the input's size)."""
        if self._layer_spec is None:  # one probe per input size
            size = tuple(images.shape[-2:])
            if size not in self._stages:
                self._stages[size] = stage_layers(self.model, images[:1], self.output)
            self.layers = self._stages[size]
        else:
            self.layers = resolve_layers(self.model, self._layer_spec, probe=images[:1])
        self.layer = "+".join(self.layers)
        inner = self.make_inner(self.layers)
        if shares_one_pass(type(inner)):
            captured = inner.capture(images, targets)
            logits, chosen = captured.logits, captured.targets
            with torch.no_grad():
                raws = [inner.layer_map(a, g) for a, g in zip(captured.activations, captured.gradients)]
        else:  # a method with its own passes: one run per layer
            raws = []
            for layer in self.layers:
                inner = self.make_inner(layer)
                logits, chosen, raw = inner.raw_maps(images, targets)
                raws.append(raw)
        self.explains_outputs = inner.explains_outputs
        size = (int(images.shape[-2]), int(images.shape[-1]))
        with torch.no_grad():
            raw = torch.stack([resized_inner_maps(r, size) for r in raws]).prod(dim=0)
        return logits, chosen, raw
