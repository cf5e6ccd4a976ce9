"""FullGrad: the input-gradient term plus every bias's gradient term, each normalised, summed.

Why no layer: the full-gradient decomposition (Srinivas & Fleuret 2019) writes the score as the
input-gradient term plus one term per bias of the network, so the map reads every layer with a
bias at once and refuses ``layer=`` (as the controls that are computed from the input do) rather
than ignore it silently. One forward and one backward, from the score to the input, with hooks on
every bias layer; batched over images, and over channels inside each layer.

The normalisation is pytorch-grad-cam's (1.5.7) ``scale_accross_batch_and_channels``: each channel
of each image min-max normalised on its own ((t - min) / (max - min + 1e-7)), then resized
bilinearly to the input (OpenCV's ``INTER_LINEAR``, which equals torch's bilinear with
``align_corners=False`` when it upsamples). Resizing is linear, so camzoo sums each layer's
normalised channels at the layer's own resolution and resizes once per resolution: the same
numbers, without a (B, C, H, W) tensor per layer at input size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import CAMMethod
from .layers import LayerSpec
from .objectives import OutputTargets, targeted_forward
from .outputs import TargetFunction
from .registry import register

NORMALISE_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image: (t - min) / (1e-7 + max(t - min))
BIAS_LAYERS = (nn.Conv2d, nn.BatchNorm2d)


def has_2d_bias(module: nn.Module) -> bool:
    """A Conv2d or BatchNorm2d (exactly those types, as the reference) with a bias. Subclasses are
    left out on purpose: timm's ``BatchNormAct2d`` returns its output after the activation, where
    the gradient is not the one its bias multiplies."""
    return type(module) in BIAS_LAYERS and getattr(module, "bias", None) is not None


def effective_bias(module: nn.Module) -> torch.Tensor:
    """The bias a layer adds per channel: a convolution's own; a BatchNorm's (eval mode) is
    b - mean * w / sqrt(var + eps) (the authors' ``tensor_extractor``)."""
    if isinstance(module, nn.BatchNorm2d):
        if module.running_mean is None or module.running_var is None:
            raise ValueError("method 'fullgrad' needs BatchNorm2d running statistics (its bias in eval mode); this "
                             "model has a BatchNorm2d with track_running_stats=False")
        weight = module.weight if module.weight is not None else torch.ones_like(module.running_mean)
        return module.bias - module.running_mean * weight / torch.sqrt(module.running_var + module.eps)
    return module.bias


def channel_minmax(terms: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) -> each (image, channel) map min-max normalised with the reference's epsilon."""
    flat = terms.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    shifted = flat - low
    return (shifted / (NORMALISE_EPS + shifted.amax(dim=2, keepdim=True))).view_as(terms)


@dataclass
class BiasCall:
    """One call of a bias layer: the layer, and d score / d its output (None until the backward
    reaches it; it stays None where the score does not depend on that call)."""

    module: nn.Module
    gradient: torch.Tensor | None = None


@contextlib.contextmanager
def _bias_gradients(model: nn.Module) -> Iterator[list[BiasCall]]:
    """Record the gradient at every call of every bias layer. A tensor hook on the output, not the
    output kept for ``autograd.grad``: an in-place op after the layer (an inplace ReLU after a
    BatchNorm) would change the tensor, while a hook registered before it receives the gradient
    with respect to the layer's own output (torch's rule), and nothing is copied."""
    calls: list[BiasCall] = []

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            call = BiasCall(module)
            calls.append(call)
            output.register_hook(lambda grad: setattr(call, "gradient", grad))

    handles = [m.register_forward_hook(hook) for m in model.modules() if has_2d_bias(m)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@register
class FullGrad(CAMMethod):
    """FullGrad (Srinivas & Fleuret 2019): |dy/dx * x| plus |b * dy/dz| of every bias layer.

    Each term (per input channel, and per channel of every Conv2d / BatchNorm2d with a bias, z its
    output, b its bias, a BatchNorm's folded in eval mode) is min-max normalised per image and
    channel, resized to the input and summed, as pytorch-grad-cam's ``FullGrad``. The map is at the
    input's resolution and reads no single layer: ``layer=`` is refused.
    """

    name = "fullgrad"
    family = "gradient"
    cost = "backward"
    uses_gradients = True

    def __init__(self, model: nn.Module, layer: LayerSpec = None, batch_size: int | None = None, **base_options: Any) -> None:
        if layer is not None:
            raise ValueError("method 'fullgrad' reads every layer with a bias and the input gradient, not one layer; "
                             "drop layer=...")
        super().__init__(model, None, batch_size, **base_options)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | TargetFunction | OutputTargets | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("fullgrad needs autograd, which torch.inference_mode() forbids; call explain outside it")
        size = tuple(images.shape[-2:])
        with torch.enable_grad(), _bias_gradients(self.model) as calls:
            inputs = images.detach().requires_grad_(True)
            result = targeted_forward(self.model, inputs, targets, self.output)
            if not result.values.requires_grad:
                raise RuntimeError("the explained scores do not depend on the input; check the model's output")
            (input_grad,) = torch.autograd.grad(result.values.sum(), inputs)
        self.explains_outputs = result.explains_outputs
        self.layer = None
        with torch.no_grad():
            total = channel_minmax((input_grad * inputs).abs().float()).sum(dim=1)
            at_size: dict[tuple[int, int], torch.Tensor] = {}
            for call in calls:
                if call.gradient is None:  # a call the score does not depend on (a detector's unused head): adds 0
                    continue
                bias = effective_bias(call.module).detach().float()
                term = channel_minmax((bias[None, :, None, None] * call.gradient.float()).abs()).sum(dim=1)
                key = tuple(term.shape[-2:])
                at_size[key] = at_size[key] + term if key in at_size else term
            for term in at_size.values():
                total = total + F.interpolate(term[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return result.logits.detach(), result.chosen, total
