"""The one base class every CAM method derives from.

It owns what all methods share, so each method is a single function: input checks, eval mode and
hook lifetime (nothing survives a call, even one that raised), batching, target selection,
upsampling and per-image normalisation. Gradient methods backpropagate only from the logits to the
explained layer: the layers below it run without autograd, and no parameter ``.grad`` is touched.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..explanation import Explanation
from ..inputs import model_normalisation
from ..maps import minmax_normalise
from ..modelutil import eval_mode
from .layers import get_layer, resolve_layer

TargetSpec = int | Sequence[int] | torch.Tensor | None


def upsample_and_normalise(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (B,h,w) -> (B,H,W), then min-max per image to [0,1]; a constant map becomes zeros."""
    upsampled = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax_normalise(upsampled)


def expand_targets(target: TargetSpec, batch: int) -> torch.Tensor | None:
    """Long (B,) targets from an int, a sequence or a tensor (None stays None: predicted class)."""
    if target is None:
        return None
    targets = torch.as_tensor(target)
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"target must be an int or a sequence of ints; got {targets.dtype}")
    targets = targets.long().reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise ValueError(f"got {targets.numel()} targets for a batch of {batch} images; give one per image")
    return targets.contiguous()


def select_targets(targets: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The predicted class where ``targets`` is None; else the given classes, range-checked."""
    num_classes = logits.shape[1]
    if targets is None:
        return logits.argmax(dim=1)
    targets = targets.to(logits.device)
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"target {bad} is out of range for a model with {num_classes} classes (valid: 0..{num_classes - 1})"
        )
    return targets


class CAMMethod:
    """Base class: subclasses set ``name`` and implement :meth:`raw_maps` (or :meth:`compute`)."""

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = False

    def __init__(self, model: nn.Module, layer: nn.Module | str | None = None, batch_size: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None; got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self._layer_spec = layer
        self.layer: str | None = resolve_layer(model, layer) if layer is not None else None

    # --- what subclasses provide -------------------------------------------------------------
    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """(B,C,h,w) activations (and gradients of the target logits) -> (B,h,w) raw map."""
        raise NotImplementedError

    def raw_maps(
        self, images: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk: return (logits, targets, raw maps (B,h,w)). Default: hook the layer."""
        layer = self._layer_name(images)
        with self._capture(get_layer(self.model, layer)) as captured:
            grad_was_enabled = torch.is_grad_enabled()
            try:
                torch.set_grad_enabled(False)  # the hook switches autograd on at the layer
                logits = self.model(images)
            finally:
                torch.set_grad_enabled(grad_was_enabled)
        if "activations" not in captured:
            raise RuntimeError(f"layer {layer!r} was not called during the forward pass; choose another layer")
        activations = captured["activations"]
        if activations.ndim != 4:
            raise ValueError(
                f"layer {layer!r} outputs shape {tuple(activations.shape)}; CAM methods need a (B,C,h,w) "
                "feature map — choose a convolutional layer"
            )
        targets = select_targets(targets, logits.detach())
        gradients = None
        if self.uses_gradients:
            if not logits.requires_grad:
                raise RuntimeError(f"the logits do not depend on layer {layer!r}; choose a layer the output uses")
            selected = logits.gather(1, targets[:, None]).sum()
            (gradients,) = torch.autograd.grad(selected, activations)
        for name, tensor in (("activations", activations), ("gradients", gradients)):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise FloatingPointError(
                    f"the {name} of layer {layer!r} contain NaN or infinite values; check the model's "
                    "weights and the input for NaN/inf"
                )
        with torch.no_grad():
            raw = self.compute(activations.detach(), gradients)
        return logits.detach(), targets, raw

    # --- shared machinery ------------------------------------------------------------------
    def _layer_name(self, images: torch.Tensor) -> str:
        if self.layer is None:
            self.layer = resolve_layer(self.model, self._layer_spec, probe=images[:1])
        return self.layer

    @contextlib.contextmanager
    def _capture(self, module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """Record the module's output for the block; the hook is removed even if the block raises."""
        captured: dict[str, torch.Tensor] = {}
        with_grad = self.uses_gradients

        def hook(mod: nn.Module, inputs: object, output: object) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"layer {self.layer!r} returns {type(output).__name__}, not a tensor; choose another layer"
                )
            if not with_grad:
                captured["activations"] = output.detach()
                return None
            torch.set_grad_enabled(True)
            activations = output.detach().requires_grad_(True)
            captured["activations"] = activations
            return activations.clone()  # a non-leaf, so in-place ops after the layer stay legal

        handle = module.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def __call__(self, images: torch.Tensor, target: TargetSpec = None) -> Explanation:
        """Explain a normalised (B,3,H,W) batch for the given target(s) (None: predicted class)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B,3,H,W); got {tuple(images.shape)}")
        batch = images.shape[0]
        chunk = self.batch_size or batch
        targets = expand_targets(target, batch)
        with eval_mode(self.model):
            results = [
                self.raw_maps(images[start : start + chunk], None if targets is None else targets[start : start + chunk])
                for start in range(0, batch, chunk)
            ]
        logits = torch.cat([r[0] for r in results])
        targets = torch.cat([r[1] for r in results])
        raw = torch.cat([r[2] for r in results]).float()
        if not torch.isfinite(raw).all():
            raise FloatingPointError(
                f"{self.name} produced NaN or infinite values (layer {self.layer!r}); check the model's "
                "weights and the input for NaN/inf"
            )
        maps = upsample_and_normalise(raw, tuple(images.shape[-2:]))
        scores = logits.float().softmax(dim=1).gather(1, targets[:, None])[:, 0]
        mean, std = model_normalisation(self.model)
        names = getattr(self.model, "class_names", None)
        return Explanation(
            maps=maps,
            raw=raw,
            targets=targets,
            scores=scores,
            method=self.name,
            layer=self.layer,
            inputs=images,
            mean=mean,
            std=std,
            class_names=tuple(names) if names else None,
        )
