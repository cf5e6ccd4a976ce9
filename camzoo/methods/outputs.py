"""From what a model returns to the (B, num_classes) logits and the classes a CAM explains.

Why one place: every method (and the CLI's probe) runs the model through :func:`run_model`, so a
model that returns ``(logits, aux)``, ``{"logits": ...}`` or a dataclass, or that runs in half
precision, is explained the same way by all of them.

``output=`` selector (``camzoo.explain(..., output=...)``): None picks the logits by a fixed rule —
a tensor is itself; a tuple or list gives its first item; a mapping its ``"logits"`` key; any other
object its ``logits`` attribute (dataclasses, Hugging Face outputs). An int indexes a tuple/list, a
str names a key or attribute, a callable gets the raw output and returns the logits. The rule itself
(``select_output``) lives in ``camzoo.modelutil``, so that the model loader reads outputs by it too.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..modelutil import OutputSelector, select_output  # (re-exported: the methods read them here)
from ..modelutil import describe_output as _describe

_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: cuda only


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if it has none)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def check_logits(logits: object, model: nn.Module | None = None, batch: int | None = None) -> torch.Tensor:
    """The (selected) output must be (B, num_classes) logits with at least one class.

    Why: a headless model (timm ``num_classes=0``) returns pooled features, and explaining their
    argmax would report a feature index as a "class"; a (B,) or (B,1,C) output has no class axis
    where the methods look for one.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {_describe(logits)}, not a logits tensor (B, num_classes); pass "
                        "output= (an index, a key or a callable) to select the logits")
    shape = tuple(logits.shape)
    if logits.ndim == 1 and batch is not None and shape[0] != batch:
        raise ValueError(f"the model returned shape {shape} for a batch of {batch} images: it drops the batch axis "
                         "(e.g. a .squeeze() in forward); CAM methods need (B, num_classes) logits: remove the squeeze, "
                         "or pass output=lambda out: out.reshape(B, -1)")
    if logits.ndim == 1:
        raise ValueError(f"the model returned shape {shape}: one value per image, no class axis; CAM methods need "
                         "(B, num_classes) logits (a one-logit model returns (B, 1))")
    if logits.ndim == 3 and shape[1] == 1:
        raise ValueError(f"the model returned shape {shape}; CAM methods need (B, num_classes) logits: pass "
                         "output=lambda out: out[:, 0] to drop the middle axis")
    if logits.ndim != 2 or shape[1] == 0:
        raise ValueError(f"the model returned shape {shape}; CAM methods need (B, num_classes) logits")
    if model is not None and getattr(model, "num_classes", None) == 0:
        raise ValueError("the model has no classifier head (num_classes=0): its outputs are features, not class "
                         "logits; build it with num_classes >= 1")
    return logits


@contextlib.contextmanager
def model_errors(images: torch.Tensor) -> Iterator[None]:
    """Turn torch's failures while running the model on ``images`` into one line that says what to
    change (torch's own messages run to many lines of C++ context)."""
    try:
        yield
    except _OUT_OF_MEMORY as err:
        raise MemoryError(f"out of memory running the model on a batch of shape {tuple(images.shape)}; lower the "
                          "batch size, image_size or max_size") from err
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = first if len(first) <= 200 else first[:197] + "..."
        raise ValueError(f"the model failed on a batch of shape {tuple(images.shape)} (is the image large enough "
                         f"for this model?): {first}") from err


def forward_raw(model: nn.Module, images: torch.Tensor) -> object:
    """``model(images)`` in the model's dtype, as the model returns it (a tensor, a dict, a list of
    detections...), with torch's failures turned into one line (:func:`model_errors`)."""
    if images.device.type == "meta" or any(t.device.type == "meta" for t in model.parameters()):
        raise ValueError("the model's weights are on the 'meta' device (shapes only, no values); load real weights "
                         "first, e.g. model.to_empty(device='cpu') then model.load_state_dict(...)")
    with model_errors(images):
        return model(images.to(model_dtype(model)))


def logits_of(raw: object, model: nn.Module, images: torch.Tensor, output: OutputSelector = None) -> torch.Tensor:
    """A model's raw output -> its (B, K) logits (``output=`` selects them), checked, as float32.

    Why float32: a half or bfloat16 model's logits feed softmax scores and CAM weights, whose
    arithmetic is done in float32; the cast is differentiable, so gradients still reach the layer.
    """
    with model_errors(images):
        selected = select_output(raw, output)
        if isinstance(selected, torch.Tensor) and images.shape[0] == 1 and (selected.ndim == 0 or (
                selected.ndim == 1 and selected.shape[0] > 1)):
            selected = selected.reshape(1, -1)  # (C,) or () for one image: the model squeezed its batch axis away
        logits = check_logits(selected, model, batch=images.shape[0])
    return logits.float() if logits.is_floating_point() else logits


def run_model(model: nn.Module, images: torch.Tensor, output: OutputSelector = None) -> torch.Tensor:
    """``model(images)``'s (B, K) logits: :func:`forward_raw`, then :func:`logits_of`."""
    return logits_of(forward_raw(model, images), model, images, output)


def read_logits(model: nn.Module, output: OutputSelector = None) -> nn.Module:
    """``model`` itself, its ``forward`` now returning the (B, K) float logits that :func:`logits_of`
    reads from what the model returns (``output``: the selector, as ``camzoo.explain(output=...)``).

    Why: the benchmark's accuracy, metrics and games call ``model(x)`` and need logits; a model that
    returns a tuple, a dict, a dataclass or a Hugging Face ``ModelOutput`` is read for them exactly as
    ``camzoo.explain`` reads it for its maps. No wrapper module: layer names, hooks and weights stay
    the model's own. Calling it again only replaces the selector."""
    if "_camzoo_raw_forward" not in vars(model):
        model._camzoo_raw_forward = model.forward
        model.forward = types.MethodType(_logits_forward, model)
    model._camzoo_output = output
    return model


def _logits_forward(self: nn.Module, images: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """:func:`read_logits`'s forward: the model's own, then :func:`logits_of`."""
    return logits_of(self._camzoo_raw_forward(images, *args, **kwargs), self, images, self._camzoo_output)


TargetFunction = Callable[[torch.Tensor], torch.Tensor]


def select_targets(targets: torch.Tensor | TargetFunction | None, logits: torch.Tensor) -> torch.Tensor:
    """The predicted class where ``targets`` is None; a callable's classes (it gets the (B,K) logits
    and returns (B,) class indices); else the given classes. Always range-checked."""
    num_classes = check_logits(logits).shape[1]
    if targets is None:
        return logits.argmax(dim=1)
    if callable(targets):
        chosen = targets(logits.detach())
        if not isinstance(chosen, torch.Tensor) or chosen.is_floating_point() or chosen.dtype == torch.bool \
                or tuple(chosen.shape) != (logits.shape[0],):
            got = f"{chosen.dtype} {tuple(chosen.shape)}" if isinstance(chosen, torch.Tensor) else type(chosen).__name__
            raise ValueError(f"a target function gets the (B, num_classes) logits and must return (B,) integer class "
                             f"indices; it returned {got}")
        targets = chosen.long()
    targets = targets.to(logits.device)
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"target {bad} is out of range for a model with {num_classes} classes (valid: 0..{num_classes - 1})"
        )
    return targets


def model_class_names(model: nn.Module) -> Sequence[str] | None:
    """The model's class names: ``model.class_names`` (camzoo models, or set by the user), timm's
    ``pretrained_cfg["label_names"]``, or a Hugging Face ``config.id2label``; None otherwise.

    Not guessed from the class count (a 1000-class head is not always ImageNet's): for timm's
    ImageNet names set ``model.class_names`` yourself (``timm.data.ImageNetInfo``).
    """
    names = getattr(model, "class_names", None)
    if names:
        return [str(n) for n in names]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("label_names"):
        return [str(n) for n in cfg["label_names"]]
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(id2label, Mapping) and id2label:
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None
