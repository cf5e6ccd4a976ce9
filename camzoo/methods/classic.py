"""CAM, the original (Zhou et al. 2016): the classifier's own weights on the map that feeds its pooling.

CAM is exact only for a model whose logits are ``Linear(global_average_pool(A))`` with A the
explained layer's output: then logit_k = sum_c W_kc mean_hw(A_c) + b_k, and the map
sum_c W_kc A_c is that logit spread over the positions. So the head is not guessed from names
(``fc``, timm's ``get_classifier()``, ``classifier``...): the one forward that captures A also
records the input and output of every Linear (and 1x1 convolution on a 1x1 input), and CAM takes
the module whose output *is* the logits and whose input *is* the spatial mean of A. Anything else
(an MLP head, max pooling, a normalisation before the classifier, a transformer's token head, a
layer that is not the one feeding the pooling) is refused in one line that says what was found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .base import CAMMethod
from .registry import register

# how close the classifier's input must be to mean_hw(A), and its output to the logits, relative
# to their largest magnitude: float32 rounding of the same mean is ~1e-7; half precision ~1e-3
_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 2e-2}
_FLOAT32_TOLERANCE = 1e-4
_ADVICE = "use gradcam, which needs no such head (on one, it is CAM after a ReLU)"


def _is_head_candidate(module: nn.Module) -> bool:
    """A Linear, or a 1x1 convolution without groups (a classifier kept as a conv: (K, C, 1, 1) weights)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


@contextlib.contextmanager
def _head_calls(model: nn.Module) -> Iterator[dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]]:
    """Record ``name -> (module, input (B,C), output (B,K))`` of every head candidate called on one
    vector per image (a Linear on (B,C), a 1x1 conv on (B,C,1,1)); the hooks are removed on exit."""
    calls: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is None or not isinstance(output, torch.Tensor) or x.ndim not in (2, 4):
                return
            if x.ndim == 4 and tuple(x.shape[2:]) != (1, 1):  # a conv inside the network, not a head
                return
            calls[name] = (module, x.detach().flatten(1), output.detach().flatten(1))

        return hook

    handles = [module.register_forward_hook(make_hook(name))
               for name, module in model.named_modules() if _is_head_candidate(module)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _close(found: torch.Tensor, expected: torch.Tensor) -> bool:
    if found.shape != expected.shape:
        return False
    tolerance = _TOLERANCE.get(found.dtype, _FLOAT32_TOLERANCE)
    scale = float(expected.float().abs().max()) + 1e-12
    return float((found.float() - expected.float()).abs().max()) <= tolerance * scale


def classifier_weights(model: nn.Module, layer: str, calls: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]],
                       logits: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """The (K, C) weights of the Linear that turns ``mean_hw(activations)`` into ``logits``.

    Raises:
        ValueError: no recorded Linear gives the logits, or the one that does reads something else
            than the spatial mean of the layer (the message names what it reads).
    """
    model_name = type(model).__name__
    giving = [(name, module, x) for name, (module, x, y) in calls.items() if _close(y, logits)]
    if not giving:
        raise ValueError(f"cam needs logits = Linear(global average pooling of layer {layer!r}); no Linear of "
                         f"{model_name} outputs its logits (a head that post-processes them?): {_ADVICE}")
    pooled = activations.mean(dim=(2, 3))
    for _, module, x in giving:
        if _close(x, pooled.to(x.dtype)):
            return module.weight.detach().flatten(1)
    name, _, x = giving[0]
    channels = activations.shape[1]
    reads = (f"{x.shape[1]} features, but layer {layer!r} has {channels} channels" if x.shape[1] != channels else
             f"{channels} features that are not the spatial mean of layer {layer!r} (max pooling, a normalisation "
             "or another layer in between)")
    raise ValueError(f"cam needs layer {layer!r} to feed global average pooling + one Linear giving the logits; the "
                     f"Linear {name!r} of {model_name} that gives them reads {reads}: pass layer= the module whose "
                     f"output is pooled into it, or {_ADVICE}")


@register
class CAM(CAMMethod):
    """CAM (Zhou et al. 2016): map = sum_c W_{k,c} A_c, with W the weights of the Linear over global
    average pooling that gives the logits, k the target class.

    The paper's and TorchCAM's map has no ReLU: the signed sum is min-max normalised. The bias is left
    out, as TorchCAM does (it is one constant per class, spread evenly over the positions, which the
    normalisation removes anyway). Only the class weights are read, so there is no backward pass;
    for the same reason output targets (a region, a box) cannot be served.
    """

    name = "cam"
    family = "activation"
    cost = "forward"
    uses_gradients = False
    serves_output_targets = False  # the weights are a class's row of the classifier
    eigen_smoothable = True  # eigen_smooth projects the terms W_kc A_c instead of summing them

    @classmethod
    def applies_to(cls, model_class: type) -> bool:
        """Classifiers whose logits pool the whole map: not a segmenter or detector (camzoo's ``task``),
        nor a grid wrapper whose cells' logits each pool their own block (DiFull / DiPart, which
        declare a ``disconnection``); their heads are not one Linear over global average pooling."""
        return getattr(model_class, "task", "classification") == "classification" and \
            not hasattr(model_class, "disconnection")

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with _head_calls(self.model) as calls:
            captured = self.capture(images, targets)
        if len(captured.activations) != 1:
            raise ValueError(f"method {self.name!r} explains one layer at a time; got layer={self.layers}")
        activations = captured.activations[0]
        weights = classifier_weights(self.model, str(self.layer), calls, captured.logits, activations)
        chosen = weights[captured.targets.to(weights.device)].to(activations)
        with torch.no_grad():
            if self.eigen_smooth:  # the base's option: ReLU(first component of W_kc A_c)
                raw = self.combine(chosen, activations)
            else:  # the signed sum, no ReLU (the paper's and TorchCAM's map)
                raw = torch.einsum("bc,bchw->bhw", chosen, activations)
        return captured.logits, captured.targets, raw
