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

import difflib
import inspect
from typing import ClassVar
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..explanation import Explanation
from ..modelutil import model_normalisation
from ..maps import upsample_and_normalise
from ..groundtruth import GroundTruth, check_ground_truth
from ..modelutil import eval_mode
from .capture import LayerCapture, capture_layers, fuse_layer_maps
from .layers import LayerSpec, resolve_layers
from .outputs import (  # noqa: F401  (re-exported: methods and the CLI import them from here)
    _OUT_OF_MEMORY,
    OutputSelector,
    check_logits,
    model_class_names,
    model_errors,
    run_model,
    select_targets,
)
from .objectives import OutputTargets, Targeted, output_targets, targeted_forward
from .options import describe_option, is_option_instance, simple_type, type_hints
from .reshape import Reshape
from .smoothing import aug_smoothed_run, combine, eigen_smoothed
from ..targets import Target

# None: the predicted class; an int or class name, or one per image; or a function of the (B,K) logits
# returning (B,) class indices (e.g. ``lambda logits: logits.topk(2).indices[:, 1]``, the runner-up);
# or output targets (methods/objectives.py): a camzoo.targets.Target, or a list of callables of one
# image's output (one per image, or one for all).
TargetSpec = int | str | Sequence[int | str] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | \
    Target | Sequence[Callable[..., torch.Tensor]] | None


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


def expand_targets(target: TargetSpec, batch: int, class_names: Sequence[str] | None = None
                   ) -> torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | OutputTargets | None:
    """Long (B,) targets from an int, a class name, a sequence of those, or a tensor (None stays None:
    predicted class); :class:`OutputTargets` from output targets. One target applies to every image;
    otherwise give exactly one per image."""
    outputs = output_targets(target, batch)
    if outputs is not None:
        return outputs
    if target is None or callable(target):
        return target  # a function of the logits is applied chunk by chunk (outputs.select_targets)
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


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Probability of each target: softmax over the classes; for a one-logit model, its sigmoid
    (softmax over a single class would always give 1.0)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return logits.softmax(dim=1).gather(1, targets[:, None].to(logits.device))[:, 0]


# what the base class's constructor takes (not a method option) and the cost classes, cheapest first
_BASE_PARAMETERS = {"self", "model", "layer", "batch_size", "output", "reshape"}
COST_CLASSES = ("free", "forward", "backward", "per-channel", "iterative")


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
    # Facts presets select by (``camzoo.methods.select_methods``), so no list of names is kept by hand:
    # ``family``: "gradient", "activation", "perturbation", "optimisation", "attention", "control", ...;
    # ``cost``: one of ``COST_CLASSES``, what one map costs in model passes.
    family: ClassVar[str] = "other"
    cost: ClassVar[str] = "backward"
    # names this method was registered under before (a results store may hold them)
    aliases: ClassVar[tuple[str, ...]] = ()
    # False for a method that explains classes only (it reads a model's own class map): output targets
    # (camzoo.targets) are refused with one line
    serves_output_targets: ClassVar[bool] = True
    # True for a method with its own raw_maps whose map is still a sum of per-channel terms that it
    # builds eigen_smooth-aware (through :meth:`combine`, as Score-CAM and Ablation-CAM, or another
    # method's :meth:`layer_map`): eigen_smooth applies to it. Methods with channel_terms need not set it.
    eigen_smoothable: ClassVar[bool] = False
    explains_outputs: bool = False  # whether the last run explained output targets (set by each forward)

    @classmethod
    def option_parameters(cls) -> dict[str, inspect.Parameter]:
        """The method's own keyword options (its constructors' parameters beyond the base class's), by
        name: the typed signature that ``explain(method_options=...)`` is checked against."""
        found: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if klass is CAMMethod:
                break
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            hints = type_hints(init)
            for name, parameter in inspect.signature(init).parameters.items():
                if name in _BASE_PARAMETERS or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                    continue
                found.setdefault(name, parameter.replace(annotation=hints.get(name, parameter.annotation)))
        base = inspect.signature(CAMMethod.__init__).parameters
        for name in cls.smoothing_options():
            found.setdefault(name, base[name].replace(annotation=bool))
        return found

    @classmethod
    def smoothing_options(cls) -> tuple[str, ...]:
        """Which of ``eigen_smooth`` and ``aug_smooth`` (methods/smoothing.py) apply to this method:
        eigen_smooth where the map is a sum of per-channel terms (:meth:`channel_terms`, or channel
        weights through :meth:`combine`), aug_smooth for every explanation method; neither for a control
        or a method whose constructor does not pass them on to the base."""
        passed = cls.base_options()
        eigen = cls.channel_terms is not CAMMethod.channel_terms or cls.eigen_smoothable
        return tuple(name for name, applies in (("eigen_smooth", eigen), ("aug_smooth", True))
                     if applies and name in passed and not cls.reference)

    @classmethod
    def base_options(cls) -> frozenset[str]:
        """The base class's options this method's constructor passes on, of ``output``, ``reshape``,
        ``eigen_smooth`` and ``aug_smooth`` (the base takes all; a method that reads its model's own map,
        like ``attention``, takes none). Callers (``check_options``, the benchmark's ``[[models]]``
        reshape) ask this, once."""
        parameters = inspect.signature(cls.__init__).parameters
        keywords = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        return frozenset(name for name in ("output", "reshape", "eigen_smooth", "aug_smooth")
                         if name in parameters or keywords)

    @classmethod
    def check_options(cls, options: Mapping[str, object] | None) -> dict[str, object]:
        """``options`` checked against :meth:`option_parameters`: unknown names and values of the wrong
        simple type (int, float, bool, str) fail with a message that lists what the method takes."""
        options = dict(options or {})
        refused = [key for key in ("output", "reshape") if key in options and key not in cls.base_options()]
        if refused:
            raise TypeError(f"method {cls.name!r} does not accept {' or '.join(f'{k}=' for k in refused)}; "
                            "drop it for this method")
        accepted = cls.option_parameters()
        unknown = sorted(set(options) - set(accepted) - _BASE_PARAMETERS)
        if unknown:
            listed = ", ".join(describe_option(p) for p in accepted.values()) or "none"
            raise ValueError(f"method {cls.name!r} does not take option(s) {', '.join(unknown)}; its options: {listed}")
        for name, value in options.items():
            expected = simple_type(accepted[name].annotation) if name in accepted else None
            if expected is not None and not is_option_instance(value, expected):
                raise TypeError(f"method {cls.name!r}: option {name} must be {' or '.join(t.__name__ for t in expected)}; "
                                f"got {value!r}")
        return options

    @classmethod
    def applies_to(cls, model_class: type) -> bool:
        """Whether this method can explain models of ``model_class`` (a camzoo model kind's class);
        the benchmark asks before it schedules a (kind, method) cell. Post-hoc methods: always."""
        return True

    def __init__(self, model: nn.Module, layer: LayerSpec = None, batch_size: int | None = None, *,
                 output: OutputSelector = None, reshape: Reshape | None = None, eigen_smooth: bool = False,
                 aug_smooth: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None; got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        if reshape is not None and not callable(reshape):
            raise TypeError(f"reshape must be a callable (layer output -> (B,C,h,w)) or None; got {type(reshape).__name__}")
        self.output = output  # which part of the model's output holds the logits (outputs.select_output)
        self.reshape = reshape  # the user's layout rule for the layer's output (reshape.to_feature_map)
        for flag, value in (("eigen_smooth", eigen_smooth), ("aug_smooth", aug_smooth)):
            if value and flag not in self.smoothing_options():
                applies = "methods whose map is a sum over channels" if flag == "eigen_smooth" else "explanation methods"
                raise ValueError(f"method {self.name!r} does not take {flag}=True (it applies to {applies}); drop it")
        self.eigen_smooth, self.aug_smooth = bool(eigen_smooth), bool(aug_smooth)
        self._layer_spec = layer
        self.layers: list[str] | None = resolve_layers(model, layer) if layer is not None else None
        self.layer: str | None = "+".join(self.layers) if self.layers else None

    # --- what subclasses provide -------------------------------------------------------------
    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """(B,C,h,w) activations (and gradients of the target logits) -> (B,h,w) raw map."""
        raise NotImplementedError

    def channel_terms(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """The (B,C,h,w) per-channel terms whose channel sum (then ReLU) is :meth:`compute`'s map, for a
        method that has them: what ``eigen_smooth`` projects instead of summing."""
        raise NotImplementedError

    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """One layer's (B,h,w) map: :meth:`compute`, or with ``eigen_smooth`` the first principal
        component of :meth:`channel_terms` (methods/smoothing.py)."""
        if self.eigen_smooth:
            return eigen_smoothed(self.channel_terms(activations, gradients))
        return self.compute(activations, gradients)

    def combine(self, weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        """ReLU(sum_c w_c A_c) from (B,C) channel weights (eigen-smoothed when asked): the map of a
        method with its own raw_maps (``eigen_smoothable``)."""
        return combine(weights, activations, self.eigen_smooth)

    def raw_maps(
        self, images: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk: return (logits, targets, raw maps (B,h,w)). Default: hook the layer, then compute.

        A method with ``needs_ground_truth`` also receives ``ground_truth=`` (this chunk's, validated).
        """
        captured = self.capture(images, targets)
        with torch.no_grad():  # several layers: one map each, fused by capture.fuse_layer_maps
            raw = fuse_layer_maps([self.layer_map(a, g) for a, g in zip(captured.activations, captured.gradients)])
        return captured.logits, captured.targets, raw

    def layer_outputs(
        self, images: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One chunk's (logits, targets, activations (B,C,h,w), gradients or None), detached, float32.

        Separate from :meth:`raw_maps` for methods that need the layer's output together with
        something :meth:`compute` does not see (the ``random`` control keys its noise on the images).
        Such methods explain one layer; several (``layer=[...]``) go through :meth:`capture`.
        """
        captured = self.capture(images, targets)
        if len(captured.activations) != 1:
            raise ValueError(f"method {self.name!r} explains one layer at a time; got layer={self.layers}")
        return captured.logits, captured.targets, captured.activations[0], captured.gradients[0]

    def capture(self, images: torch.Tensor, targets: torch.Tensor | None) -> LayerCapture:
        """One forward (and backward, for gradient methods) capturing every explained layer."""
        with model_errors(images[:1]):  # the automatic choice may probe the model with one image
            self.layers = resolve_layers(self.model, self._layer_spec, probe=images[:1])
        self.layer = "+".join(self.layers)
        captured = capture_layers(self.model, images, self.layers, targets, with_grad=self.uses_gradients,
                                  output=self.output, reshape=self.reshape)
        self.explains_outputs = captured.explains_outputs
        return captured

    def forward_targets(self, images: torch.Tensor, targets: torch.Tensor | OutputTargets | None) -> Targeted:
        """One plain forward (no hooks, no autograd) and the targets it explains, for methods that do
        not go through :meth:`capture` (controls, Captum)."""
        with torch.no_grad():
            result = targeted_forward(self.model, images, targets, self.output)
        self.explains_outputs = result.explains_outputs
        return result

    def __call__(
        self, images: torch.Tensor, target: TargetSpec = None, ground_truth: GroundTruth | None = None
    ) -> Explanation:
        """Explain a normalised (B,3,H,W) batch for the given target(s) (None: predicted class).

        ground_truth: optional ``{"mask": (B,H,W) bool, "boxes": (B,K,4)}`` at the images' resolution
        (boxes as x0,y0,x1,y1 pixel edges, NaN-padded). Always validated against the batch; passed
        on, chunk by chunk, only to methods with ``needs_ground_truth``.
        """
        logits, targets, raw = self.run(images, target, ground_truth)
        return self.explanation(images, logits, targets, raw)

    def run(
        self, images: torch.Tensor, target: TargetSpec = None, ground_truth: GroundTruth | None = None,
        augment: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The checked, chunked pass behind :meth:`__call__`: (logits, targets, raw maps) of the batch
        (with ``aug_smooth``, unless ``augment`` is False, the mean over the augmentations)."""
        if self.aug_smooth and augment:
            return aug_smoothed_run(self, images, target, ground_truth)
        if images.ndim != 4:  # any channel count: grayscale models (in_chans=1) take (B,1,H,W)
            raise ValueError(f"images must have shape (B,C,H,W); got {tuple(images.shape)}")
        batch = images.shape[0]
        chunk = self.batch_size or batch
        targets = expand_targets(target, batch, model_class_names(self.model))
        if isinstance(targets, OutputTargets):
            if not self.serves_output_targets:
                raise ValueError(f"method {self.name!r} explains classes only; it cannot serve "
                                 f"{type(targets.targets[0]).__name__} targets: use gradcam, eigencam or scorecam")
            with eval_mode(self.model):
                targets = targets.bound(self.model, images, self.output, chunk)
        truth = check_ground_truth(ground_truth, images)
        if self.needs_ground_truth and truth is None:
            raise ValueError(
                f"method {self.name!r} needs ground truth: pass ground_truth={{'mask': masks}} with masks a "
                "(B,H,W) bool tensor at the images' resolution, and/or {'boxes': boxes} with boxes (B,K,4) "
                "x0,y0,x1,y1 in pixel-edge coordinates, NaN-padded (camzoo.explain(..., ground_truth=...))"
            )

        def chunk_of(start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            stop = start + chunk
            chunk_targets = targets if targets is None or callable(targets) else targets[start:stop]
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
        return logits, targets, raw

    def explanation(
        self, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, raw: torch.Tensor,
        method: str | None = None,
    ) -> Explanation:
        """Raw maps (B,h,w) of a whole batch -> the :class:`Explanation` (upsampled, normalised, scored).

        Separate from :meth:`__call__` so the one-pass multi-method run (``methods/multi.py``) builds
        each method's result exactly as a single-method call does. ``method``: the name to record.
        """
        name = method or self.name
        names = model_class_names(self.model)
        if not torch.isfinite(raw).all():
            raise FloatingPointError(
                f"{name} produced NaN or infinite values (layer {self.layer!r}); check the model's "
                "weights and the input for NaN/inf"
            )
        maps = upsample_and_normalise(raw, tuple(images.shape[-2:]))
        # output targets: the score is the target's own value (a box's IoU + score, a region's summed logits)
        scores = logits[:, 0].float() if self.explains_outputs else target_scores(logits, targets)
        mean, std = model_normalisation(self.model)
        return Explanation(
            maps=maps,
            raw=raw,
            targets=targets,
            scores=scores,
            method=name,
            layer=self.layer,
            inputs=images,
            mean=mean,
            std=std,
            class_names=tuple(names) if names else None,
        )
