"""Any Captum attribution as a camzoo method: ``method="captum:IntegratedGradients"``.

Why: the benchmark scores maps, whatever made them; with this adapter pixel attributions
(Integrated Gradients, Saliency, Guided Backprop, Occlusion, ...) are scored next to the CAMs by
the same metrics, through the same :class:`~camzoo.explanation.Explanation`.

The map rule: Captum returns an attribution shaped like what it attributes to, (B,3,H,W) for the
input, (B,C,h,w) or (B,1,h,w) for a layer. One channel is already a map and is kept as it is
(signed); several channels are reduced by ``reduce`` (default ``"abs_sum"``: the absolute value
summed over channels). The (B,h,w) result then goes through the shared pipeline: bilinear
upsampling to the input (the identity for input attributions) and per-image min-max.
Options are split by name between the attribution's constructor (``multiply_by_inputs``, ...) and
its ``attribute`` call (``n_steps``, ``baselines``, ``sliding_window_shapes``, ...).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, ClassVar
from collections.abc import Callable

import torch
from torch import nn

from .base import CAMMethod, run_model
from .objectives import OutputTargets
from .outputs import forward_raw
from .layers import get_layer, resolve_layers

PREFIX = "captum:"
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs_sum": lambda a: a.abs().sum(1),
    "abs_max": lambda a: a.abs().amax(1),
    "sum": lambda a: a.sum(1),
    "positive_sum": lambda a: a.clamp_min(0).sum(1),
    "l2": lambda a: a.norm(dim=1),
}
_SET_BY_CAMZOO = {"self", "inputs", "target", "forward_func", "model", "layer", "attribution_method",
                  "return_convergence_delta", "additional_forward_args"}
_CLASSES: dict[str, type[CaptumMethod]] = {}


def _parameters(function: Callable) -> set[str]:
    return {name for name, p in inspect.signature(function).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - _SET_BY_CAMZOO


class CaptumMethod(CAMMethod):
    """Base of the generated ``captum:<Attribution>`` classes (see the module docstring)."""

    attribution_class: ClassVar[type]
    summary: ClassVar[str] = ""
    family = "captum"

    @classmethod
    def option_parameters(cls) -> dict[str, inspect.Parameter]:
        """camzoo's ``reduce`` and the Captum class's own constructor and ``attribute`` keywords."""
        found = {name: parameter for name, parameter in inspect.signature(CaptumMethod.__init__).parameters.items()
                 if name == "reduce"}
        for function in (cls.attribution_class.__init__, cls.attribution_class.attribute):
            for name, parameter in inspect.signature(function).parameters.items():
                if name not in _SET_BY_CAMZOO and parameter.kind not in (parameter.VAR_POSITIONAL,
                                                                         parameter.VAR_KEYWORD):
                    found.setdefault(name, parameter.replace(annotation=inspect.Parameter.empty))
        return found

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None,
                 *, reduce: str = "abs_sum", **options: Any) -> None:
        cls = self.attribution_class
        self.is_layer_method = "layer" in inspect.signature(cls.__init__).parameters
        if layer is not None and not self.is_layer_method:
            raise ValueError(f"{self.name} attributes to the input pixels; layer= applies only to Captum's layer "
                             "methods (LayerGradCam, GuidedGradCam, LayerConductance, ...)")
        base_names = set(inspect.signature(CAMMethod.__init__).parameters) - {"self", "model", "layer", "batch_size"}
        base_options = {k: options.pop(k) for k in list(options) if k in base_names}
        super().__init__(model, layer=layer, batch_size=batch_size, **base_options)
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}; got {reduce!r}")
        self.reduce = reduce
        init_names, call_names = _parameters(cls.__init__), _parameters(cls.attribute)
        unknown = sorted(set(options) - init_names - call_names)
        if unknown:
            raise ValueError(f"{self.name} does not take option(s) {unknown}; its options: "
                             f"{', '.join(sorted(init_names | call_names)) or 'none'}, and camzoo's reduce=")
        self.init_options = {k: v for k, v in options.items() if k in init_names}
        self.call_options = {k: v for k, v in options.items() if k in call_names and k not in init_names}

    def _forward(self, objective: Callable[..., torch.Tensor] | None = None) -> Any:
        """What Captum calls: the model itself where the attribution needs a module (GuidedBackprop),
        else camzoo's run_model, so output= and a model that squeezes its batch axis work as for CAMs;
        with an output target, the (n,) values of that one target on each of the n inputs."""
        first = next(iter(list(inspect.signature(self.attribution_class.__init__).parameters)[1:2]), "")
        if first != "forward_func":
            if objective is not None:
                raise ValueError(f"{self.name} attributes the model module's own output, so it cannot serve an "
                                 f"output target ({objective!r}); use captum:IntegratedGradients or captum:Saliency")
            return self.model
        if objective is not None:
            return lambda inputs, *args: OutputTargets([objective] * inputs.shape[0]).values(
                forward_raw(self.model, inputs), self.output)
        return lambda inputs, *args: run_model(self.model, inputs, self.output)

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None,
                   objective: Callable[..., torch.Tensor] | None) -> torch.Tensor:
        """One Captum ``attribute`` call on ``images``: for ``target`` classes, or one output target."""
        forward = self._forward(objective)
        if self.is_layer_method:
            self.layers = resolve_layers(self.model, self._layer_spec, probe=images[:1])
            if len(self.layers) != 1:
                raise ValueError(f"{self.name} explains one layer; got layer={self.layers}")
            self.layer = self.layers[0]
            attribution = self.attribution_class(forward, get_layer(self.model, self.layer), **self.init_options)
        else:
            attribution = self.attribution_class(forward, **self.init_options)
        with torch.enable_grad():  # a leaf that requires grad: Captum would otherwise warn and set it
            inputs = images.detach().clone().requires_grad_(True)
            try:
                result = attribution.attribute(inputs, target=target, **self.call_options)
            except AssertionError as err:  # Captum checks its inputs with asserts (e.g. logits without a batch axis)
                raise ValueError(f"{self.name}: Captum refused this model or these options: {err}") from err
        result = result[0] if isinstance(result, tuple) else result
        return result.detach().float()

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        forward = self.forward_targets(images, targets)
        logits, chosen = forward.logits, forward.chosen
        if not forward.explains_outputs:
            result = self._attribute(images, chosen, None)
        else:  # Captum expands inputs (steps, samples) in its own order: one attribute call per distinct target
            objective = targets if isinstance(targets, OutputTargets) else OutputTargets([targets] * len(images))
            groups: dict[int, list[int]] = {}
            for index, target in enumerate(objective.targets):
                groups.setdefault(id(target), []).append(index)
            parts = {tuple(rows): self._attribute(images[rows], None, objective.targets[rows[0]])
                     for rows in groups.values()}
            first = next(iter(parts.values()))
            result = first.new_empty((len(images), *first.shape[1:]))
            for rows, part in parts.items():
                result[list(rows)] = part
        if result.ndim == 4:
            raw = result[:, 0] if result.shape[1] == 1 else REDUCTIONS[self.reduce](result)
        elif result.ndim == 3:
            raw = result
        else:
            raise ValueError(f"{self.name} returned attributions of shape {tuple(result.shape)}; camzoo maps need "
                             "(B,C,H,W), (B,1,h,w) or (B,h,w)")
        return logits.detach(), chosen, raw


def captum_method(attribution: str) -> type[CaptumMethod]:
    """The camzoo method class for ``captum.attr.<attribution>`` (made once, then reused)."""
    if attribution in _CLASSES:
        return _CLASSES[attribution]
    try:
        import captum.attr
    except ImportError as err:
        raise ImportError("captum: methods need Captum; pip install captum") from err
    available = sorted(name for name, value in vars(captum.attr).items()
                       if isinstance(value, type) and issubclass(value, captum.attr.Attribution)
                       and hasattr(value, "attribute") and not inspect.isabstract(value))
    if attribution not in available:
        close = difflib.get_close_matches(attribution, available, n=3)
        hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise ValueError(f"unknown Captum attribution {attribution!r}.{hint} Available: {', '.join(available)}")
    target = getattr(captum.attr, attribution)
    cls = type(f"Captum{attribution}", (CaptumMethod,), {
        "name": PREFIX + attribution,
        "attribution_class": target,
        "summary": f"Captum's {attribution}, reduced to one map per image",
        "__doc__": f"``captum.attr.{attribution}`` through camzoo's pipeline (see camzoo.methods.captum_adapter).",
        "__module__": __name__,
    })
    _CLASSES[attribution] = cls
    return cls
