"""ShapleyCAM: Grad-CAM's channel weights with a second-order (Hessian-vector) correction.

Why its own pass: the weights need H A, the Hessian of the explained score with respect to the
layer's activations times those activations. That is a double backward: the first-order gradient
G = dy/dA is taken with ``create_graph=True`` and differentiated again, d(G . A)/dA with A held
fixed. camzoo's shared capture (methods/capture.py) detaches its gradients, so this module runs
its own forward under the same hooks: autograd still starts at the explained layer (nothing below
it is differentiated, twice or once), and no parameter ``.grad`` is touched. The two backward
passes reach only from the score down to the layer.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .base import CAMMethod, OutputTargets
from .capture import layer_hooks, fuse_layer_maps, layer_tensors, rebuild_output
from .layers import LayerSpec, get_layer, resolve_layers
from .objectives import Targeted, targeted_forward
from .outputs import model_errors
from .registry import register
from .reshape import check_spatial, to_feature_map

OBJECTIVES = ("logit", "rest")


def twice_differentiable() -> contextlib.AbstractContextManager:
    """Scaled dot-product attention through its plain-ops ("math") kernel: the fused kernels (flash,
    memory-efficient) have no second derivative, so a ViT's H A would fail. Same arithmetic."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no kernel choice to make here
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def rest_scores(targeted: Targeted) -> torch.Tensor:
    """The Residual Softmax Target-class score (Cai 2025) of each image's target class:
    y_c - CE(y, c) = y_c + log softmax(y)_c, pytorch-grad-cam's ``ClassifierOutputReST``."""
    return targeted.values + targeted.logits.float().log_softmax(dim=1).gather(1, targeted.chosen[:, None])[:, 0]


def _second_order(tensors: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """H v with v = the tensors' own values: d(sum G . v)/d tensors, v held fixed. None where the
    gradients do not depend on the tensors (a piecewise-linear head above the layer: H = 0)."""
    attached = [(t, g) for t, g in zip(tensors, grads) if g.requires_grad]
    if not attached:
        return [None] * len(tensors)
    found = torch.autograd.grad([g for _, g in attached], [t for t, _ in attached],
                                grad_outputs=[t.detach() for t, _ in attached], retain_graph=True, allow_unused=True)
    by_id = {id(t): h for (t, _), h in zip(attached, found)}
    return [by_id.get(id(t)) for t in tensors]


@register
class ShapleyCAM(CAMMethod):
    """ShapleyCAM (Cai 2025): w_c = mean_hw(G - 0.5 * H A)_c, map = ReLU(sum_c w_c A_c).

    The second-order Taylor expansion of the explained score's Shapley values over the channels
    ("CAMs as Shapley Value-based Explainers", arXiv 2501.06261), with H A the Hessian-vector
    product of the score at the layer, as pytorch-grad-cam's ``ShapleyCAM``. Where the part of the
    model above the layer is piecewise linear (ReLU, max-pool, a linear head) and the score is a
    logit, H A = 0 and the map is Grad-CAM's; the paper's ReST score (``objective="rest"``:
    y_c + log softmax(y)_c) has curvature everywhere. Two backward passes from the score to the layer.
    """

    name = "shapleycam"
    family = "gradient"
    cost = "backward"
    uses_gradients = True
    eigen_smoothable = True  # the map is self.combine(weights, activations)

    def __init__(self, model: nn.Module, layer: LayerSpec = None, batch_size: int | None = None, *,
                 objective: str = "logit", **base_options: Any) -> None:
        super().__init__(model, layer, batch_size, **base_options)
        if objective not in OBJECTIVES:
            raise ValueError(f"method 'shapleycam': objective must be one of {', '.join(OBJECTIVES)} (the target logit, "
                             f"or the paper's residual softmax score); got {objective!r}")
        self.objective = objective

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if isinstance(targets, OutputTargets) and self.objective == "rest":
            raise ValueError("method 'shapleycam': objective='rest' is a score of class logits; explain output "
                             "targets with the default objective='logit'")
        if torch.is_inference_mode_enabled():
            raise RuntimeError("shapleycam needs autograd, which torch.inference_mode() forbids; call explain outside it")
        with model_errors(images[:1]):
            self.layers = resolve_layers(self.model, self._layer_spec, probe=images[:1])
        self.layer = "+".join(self.layers)
        names = self.layers
        with layer_hooks(self.model, names, with_grad=True) as captured, twice_differentiable():
            grad_was_enabled = torch.is_grad_enabled()
            try:
                torch.set_grad_enabled(False)  # the first explained layer's hook switches autograd on
                result = targeted_forward(self.model, images, targets, self.output)
            finally:
                torch.set_grad_enabled(grad_was_enabled)
        self.explains_outputs = result.explains_outputs
        missing = [name for name in names if name not in captured]
        if missing:
            raise RuntimeError(f"layer {missing[0]!r} was not called during the forward pass; choose another layer")
        if not result.values.requires_grad:
            raise RuntimeError(f"the explained scores do not depend on layer {names[0]!r}; choose a layer the output uses")
        with torch.enable_grad():  # also inside the caller's torch.no_grad()
            scores = rest_scores(result) if self.objective == "rest" else result.values
            maps = self._layer_maps(scores.sum(), [captured[name] for name in names], tuple(images.shape[-2:]))
        return result.logits.detach(), result.chosen, fuse_layer_maps(maps)

    def _layer_maps(self, score: torch.Tensor, outputs: list[object], size: tuple[int, ...]) -> list[torch.Tensor]:
        """One (B,h,w) map per explained layer: G and H A of the layer's own output (each layer's
        Hessian-vector product on its own, as the reference computes it, with no cross-layer terms)."""
        flat = [list(layer_tensors(out).items()) for out in outputs]
        tensors = [t for items in flat for _, t in items]
        first = torch.autograd.grad(score, tensors, create_graph=True, allow_unused=True)
        maps, start = [], 0
        for name, out, items in zip(self.layers, outputs, flat):
            grads = list(first[start:start + len(items)])
            start += len(items)
            if all(g is None for g in grads):
                raise RuntimeError(f"the explained scores do not depend on layer {name!r}; choose a layer the output uses")
            grads = [g if g is not None else torch.zeros_like(t) for (_, t), g in zip(items, grads)]
            hvps = _second_order([t for _, t in items], grads)
            hvps = [h if h is not None else torch.zeros_like(t) for (_, t), h in zip(items, hvps)]
            module = get_layer(self.model, name)
            a, g, h = (to_feature_map(rebuild_output(out, {k: v.detach() for (k, _), v in zip(items, values)}),
                                      self.model, name, module, size, self.reshape).float()
                       for values in ([t for _, t in items], grads, hvps))
            check_spatial(a, name, size)
            if not all(torch.isfinite(x).all() for x in (a, g, h)):
                raise FloatingPointError(f"the activations, gradients or Hessian-vector products of layer {name!r} "
                                         "contain NaN or infinite values; check the model's weights and the input")
            weights = (g - 0.5 * h).mean(dim=(2, 3))
            maps.append(self.combine(weights, a))  # ReLU(sum_c w_c A_c), or its eigen-smoothed form
        return maps
