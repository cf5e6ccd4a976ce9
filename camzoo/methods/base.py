"""The one base class every CAM method derives from.

It owns what all methods share, so each method is a single function: input checks, eval mode and
hook lifetime (nothing survives a call, even one that raised), batching, target selection,
upsampling and per-image normalisation. Gradient methods backpropagate only from the logits to the
explained layer: the layers below it run without autograd, and no parameter ``.grad`` is touched.

Ground truth (a mask and/or boxes per image) travels through the same path: the base validates it
against the images once, moves it to their device and cuts it into the same chunks, so that a
method that declares ``needs_ground_truth`` (the ``oracle`` control) sees exactly its own images'
regions, and every other method ignores it.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import ClassVar, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..explanation import Explanation
from ..modelutil import model_normalisation
from ..maps import minmax_normalise
from ..groundtruth import check_boxes, check_masks
from ..modelutil import eval_mode
from .layers import get_layer, resolve_layer

TargetSpec = int | str | Sequence[int | str] | torch.Tensor | None
# {"mask": (B,H,W) bool, "boxes": (B,K,4) float x0,y0,x1,y1 pixel edges, rows of NaN as padding};
# either key may be absent or None.
GroundTruth = Mapping[str, torch.Tensor | None]
GROUND_TRUTH_KEYS = ("mask", "boxes")
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: cuda only


def upsample_and_normalise(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (B,h,w) -> (B,H,W), then min-max per image to [0,1]; a constant map becomes zeros."""
    upsampled = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax_normalise(upsampled)


def _class_index(name: str, class_names: Sequence[str] | None) -> int:
    """A target given as a class name -> its index, with an error that says what names exist."""
    if not class_names:
        raise ValueError(f"target {name!r} is a class name, but this model has no class names; pass a class "
                         "index (int) instead")
    names = [str(n) for n in class_names]
    if name in names:
        return names.index(name)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise ValueError(f"target {name!r} is not one of the model's class names.{hint} Classes: {shown}")


def expand_targets(target: TargetSpec, batch: int, class_names: Sequence[str] | None = None) -> torch.Tensor | None:
    """Long (B,) targets from an int, a class name, a sequence of those, or a tensor (None stays None:
    predicted class). One target applies to every image; otherwise give exactly one per image."""
    if target is None:
        return None
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(t, str) for t in target)):
        items = [target] if isinstance(target, str) else list(target)
        target = [_class_index(t, class_names) if isinstance(t, str) else t for t in items]
    try:
        targets = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"target must be an int, a class name, or one of those per image; got {target!r}") from err
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"target must be an int, a class name, or one of those per image; got {targets.dtype}")
    targets = targets.long().reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise ValueError(f"got {targets.numel()} targets for a batch of {batch} images; give one target for all "
                         "images, or one per image in the order of the images")
    return targets.contiguous()


def check_logits(logits: object, model: nn.Module | None = None) -> torch.Tensor:
    """The model's output must be (B, num_classes) logits with at least one class.

    Why: a headless model (timm ``num_classes=0``) returns pooled features, and explaining their
    argmax would report a feature index as a "class".
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(logits).__name__}, not a logits tensor (B, num_classes)")
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"the model returned shape {tuple(logits.shape)}; CAM methods need (B, num_classes) logits")
    if model is not None and getattr(model, "num_classes", None) == 0:
        raise ValueError("the model has no classifier head (num_classes=0): its outputs are features, not class "
                         "logits; build it with num_classes >= 1")
    return logits


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Probability of each target: softmax over the classes; for a one-logit model, its sigmoid
    (softmax over a single class would always give 1.0)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return logits.softmax(dim=1).gather(1, targets[:, None].to(logits.device))[:, 0]


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


def run_model(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)`` with torch's failures as one clear line (see :func:`model_errors`)."""
    with model_errors(images):
        return model(images)


def select_targets(targets: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The predicted class where ``targets`` is None; else the given classes, range-checked."""
    num_classes = check_logits(logits).shape[1]
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


def check_ground_truth(ground_truth: GroundTruth | None, images: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Validate ground truth against a (B,3,H,W) batch; return it on the images' device (None if empty).

    Why here: every method is called with the same ground truth by the benchmark, so a mask for the
    wrong batch or the wrong image size must fail at the call, not as a plausible oracle row. A
    ``None`` value counts as absent, so ``{"mask": dataset.masks, "boxes": dataset.boxes}`` works for
    datasets that have only one of them.
    """
    if ground_truth is None:
        return None
    if not isinstance(ground_truth, Mapping):
        raise TypeError(
            "ground_truth must be a dict with 'mask' ((B,H,W) bool) and/or 'boxes' ((B,K,4) x0,y0,x1,y1, "
            f"NaN-padded); got {type(ground_truth).__name__}"
        )
    unknown = sorted(str(key) for key in ground_truth if key not in GROUND_TRUTH_KEYS)
    if unknown:
        raise ValueError(
            f"unknown ground_truth key(s) {unknown}; use 'mask' ((B,H,W) bool) and/or 'boxes' ((B,K,4) "
            "x0,y0,x1,y1 in pixel-edge coordinates, NaN-padded)"
        )
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    truth: dict[str, torch.Tensor] = {}
    mask = ground_truth.get("mask")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"ground_truth['mask'] must be a bool torch.Tensor (B,H,W); got {type(mask).__name__}")
        if tuple(mask.shape) != (batch, height, width):
            raise ValueError(
                f"ground_truth['mask'] must be (B,H,W) = ({batch}, {height}, {width}), one mask per image at "
                f"the images' resolution; got {tuple(mask.shape)}"
            )
        truth["mask"] = check_masks(mask, mask.shape).to(images.device)
    boxes = ground_truth.get("boxes")
    if boxes is not None:
        if not isinstance(boxes, torch.Tensor):
            raise TypeError(f"ground_truth['boxes'] must be a float torch.Tensor (B,K,4); got {type(boxes).__name__}")
        if boxes.ndim not in (2, 3) or boxes.shape[0] != batch:
            raise ValueError(
                f"ground_truth['boxes'] must be (B,K,4) with B = {batch}, one row of boxes per image; got "
                f"{tuple(boxes.shape)}"
            )
        truth["boxes"] = check_boxes(boxes, batch, height, width).to(images.device)
    return truth or None


class CAMMethod:
    """Base class: subclasses set ``name`` and implement :meth:`raw_maps` (or :meth:`compute`).

    Class flags the CLI and the benchmark read without building a method:
    ``reference``: a control row (random, centre, edges, oracle), not an explanation method; tables
    list it apart and never call it "best". ``needs_ground_truth``: :meth:`raw_maps` takes a
    ``ground_truth`` keyword and the call fails without one.
    """

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = False
    reference: ClassVar[bool] = False
    needs_ground_truth: ClassVar[bool] = False

    @classmethod
    def applies_to(cls, model_class: type) -> bool:
        """Whether this method can explain models of ``model_class`` (a camzoo model kind's class);
        the benchmark asks before it schedules a (kind, method) cell. Post-hoc methods: always."""
        return True

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
        """One chunk: return (logits, targets, raw maps (B,h,w)). Default: hook the layer, then compute.

        A method with ``needs_ground_truth`` also receives ``ground_truth=`` (this chunk's, validated).
        """
        logits, targets, activations, gradients = self.layer_outputs(images, targets)
        with torch.no_grad():
            raw = self.compute(activations, gradients)
        return logits, targets, raw

    def layer_outputs(
        self, images: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One chunk's (logits, targets, activations (B,C,h,w), gradients or None), all detached.

        Separate from :meth:`raw_maps` for methods that need the layer's output together with
        something :meth:`compute` does not see (the ``random`` control keys its noise on the images).
        """
        with model_errors(images[:1]):
            layer = self._layer_name(images)  # may probe the model with one image
        with self._capture(get_layer(self.model, layer)) as captured:
            grad_was_enabled = torch.is_grad_enabled()
            try:
                torch.set_grad_enabled(False)  # the hook switches autograd on at the layer
                logits = check_logits(run_model(self.model, images), self.model)
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
        return logits.detach(), targets, activations.detach(), gradients

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

    def __call__(
        self, images: torch.Tensor, target: TargetSpec = None, ground_truth: GroundTruth | None = None
    ) -> Explanation:
        """Explain a normalised (B,3,H,W) batch for the given target(s) (None: predicted class).

        ground_truth: optional ``{"mask": (B,H,W) bool, "boxes": (B,K,4)}`` at the images' resolution
        (boxes as x0,y0,x1,y1 pixel edges, NaN-padded). Always validated against the batch; passed
        on, chunk by chunk, only to methods with ``needs_ground_truth``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B,3,H,W); got {tuple(images.shape)}")
        batch = images.shape[0]
        chunk = self.batch_size or batch
        names = getattr(self.model, "class_names", None)
        targets = expand_targets(target, batch, names)
        truth = check_ground_truth(ground_truth, images)
        if self.needs_ground_truth and truth is None:
            raise ValueError(
                f"method {self.name!r} needs ground truth: pass ground_truth={{'mask': masks}} with masks a "
                "(B,H,W) bool tensor at the images' resolution, and/or {'boxes': boxes} with boxes (B,K,4) "
                "x0,y0,x1,y1 in pixel-edge coordinates, NaN-padded (camzoo.explain(..., ground_truth=...))"
            )

        def chunk_of(start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            stop = start + chunk
            chunk_targets = None if targets is None else targets[start:stop]
            if not self.needs_ground_truth:
                return self.raw_maps(images[start:stop], chunk_targets)
            assert truth is not None
            chunk_truth = {key: value[start:stop] for key, value in truth.items()}
            return self.raw_maps(images[start:stop], chunk_targets, ground_truth=chunk_truth)  # type: ignore[call-arg]

        with eval_mode(self.model):
            results = [chunk_of(start) for start in range(0, batch, chunk)]
        logits = torch.cat([r[0] for r in results])
        targets = torch.cat([r[1] for r in results])
        raw = torch.cat([r[2] for r in results]).float()
        if not torch.isfinite(raw).all():
            raise FloatingPointError(
                f"{self.name} produced NaN or infinite values (layer {self.layer!r}); check the model's "
                "weights and the input for NaN/inf"
            )
        maps = upsample_and_normalise(raw, tuple(images.shape[-2:]))
        scores = target_scores(logits, targets)
        mean, std = model_normalisation(self.model)
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
