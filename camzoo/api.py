"""``camzoo.explain`` and ``camzoo.list_methods``: the one-call entry points."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

from torch import nn

from .explanation import Explanation
from .inputs import DEFAULT_MAX_SIZE, ImageInput, Size, prepare_images
from .methods import get_method, method_names, split_layer
from .methods.base import GroundTruth, TargetSpec
from .methods.layers import LayerSpec
from .methods.multi import explain_many
from .methods.outputs import OutputSelector
from .methods.reshape import Reshape


def list_methods() -> list[str]:
    """Names of every available CAM method, sorted.

    Not called ``methods``: that name is the :mod:`camzoo.methods` subpackage (``camzoo.methods.CAMMethod``).

    Returns:
        The registered method names (controls included), sorted; ``"captum:<Attribution>"`` names are
        accepted by :func:`explain` but not listed.
    """
    return method_names()


def explain(
    model: nn.Module,
    img: ImageInput,
    method: str | Sequence[str] = "gradcam",
    target: TargetSpec = None,
    layer: LayerSpec = None,
    *,
    output: OutputSelector = None,
    reshape: Reshape | None = None,
    image_size: Size | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
    batch_size: int | None = None,
    ground_truth: GroundTruth | None = None,
    method_options: Mapping[str, Any] | None = None,
) -> Explanation | dict[str, Explanation]:
    """Explain ``model``'s decision on ``img`` with a CAM method, or with several at once.

    Args:
        model: the classifier, segmenter or detector (a ``torch.nn.Module``); the images are moved to
            its device.
        img: a normalised tensor (3,H,W) or (B,3,H,W) (resized to ``image_size`` when given); a PIL
            image, an HxWx3 uint8 array or a path (resized to ``image_size`` or the model's input size
            and normalised with its mean/std; EXIF orientation applied, 16-bit files scaled by bit
            depth); or a list of those. Whatever runs at its own size is capped at ``max_size`` px on
            its longest side (aspect kept, with a warning; None: no cap), so one huge image cannot
            exhaust memory.
        method: a name (``camzoo.list_methods()``, or ``"captum:<Attribution>"`` for any Captum
            attribution), or a list of names: then the result is a dict {name: Explanation} in the
            order given, and the activation/gradient methods of the same layer (Grad-CAM, Grad-CAM++,
            XGrad-CAM, LayerCAM, HiResCAM, Eigen-CAM, EigenGrad-CAM) share one forward and one backward.
            ``"NAME@LAYER"`` (a benchmark's layer row, e.g. ``"gradcam@layer2"``) is NAME on that layer;
            a list names one layer at most, and its results keep the names as given.
        target: None explains the predicted class; an int or a class name (``model.class_names``,
            timm's ``label_names``, a Hugging Face ``id2label``), one for all images or one per image
            in order; or a function of the (B, num_classes) logits returning (B,) class indices.
            Scores are softmax probabilities (a one-logit model's score is the sigmoid of its logit).
            Segmenters and detectors: a target of one image's output (``camzoo.targets``:
            ``SegmentationTarget``, ``BoxTarget``, ``ClassTarget``, or any callable returning a
            scalar), or a list with one per image; scores are then the targets' values
            (docs/methods.md, "Segmentation and detection").
        layer: a module or dotted name, or a list of them (maps fused: each min-max normalised, resized
            to the finest layer's resolution, averaged); None picks the layer per model family and
            input size (docs/methods.md, "Layer choice per family").
        output: which part of the model's output holds the logits: None (a tensor; a tuple's first
            item; a dict's "logits"; an object's ``.logits``), an index, a key/attribute name, or a
            callable.
        reshape: a callable turning the layer's output into (B,C,h,w), for layouts camzoo does not know
            (tokens and channels-last outputs of timm/torchvision transformers are handled without it).
        image_size: an int or (H, W) that the images are resized to (see ``img``); None: tensors keep
            their size, pixel inputs take the model's input size or their own.
        max_size: the cap in px on the longest side of whatever runs at its own size (see ``img``);
            None: no cap.
        batch_size: images per forward/backward pass (>= 1); None: the whole batch in one pass.
        ground_truth: ``{"mask": (B,H,W) bool, "boxes": (B,K,4) x0,y0,x1,y1 pixel edges, NaN-padded}``
            (either may be absent) at the resolution of the images as the method sees them; required by
            methods with ``needs_ground_truth`` (the ``oracle`` control), validated and ignored by the
            others.
        method_options: keyword options of the method (e.g. ``{"memory_mb": 256}`` for Score-CAM,
            Captum's ``{"n_steps": 16}``); with a list of methods, keyed by method name
            (``{"scorecam": {...}}``). Checked against the method's declared options
            (``CAMMethod.option_parameters``, listed by ``camzoo methods --options``): an unknown name
            raises ValueError, a value of the wrong simple type TypeError, each naming the options the
            method takes.

    Returns:
        an :class:`~camzoo.explanation.Explanation` (maps (B,H,W) in [0,1], raw maps, targets, scores,
        layer), or ``{name: Explanation}`` for a list of methods.

    Raises:
        ValueError / TypeError: an unknown method, layer, option or target, or images of the wrong
        shape, each with a message that says what to change.
    """
    options = {key: value for key, value in (("output", output), ("reshape", reshape)) if value is not None}
    method, layer, given = _layer_rows(method, layer)
    if not isinstance(method, str):
        images = prepare_images(img, model, image_size=image_size, max_size=max_size)
        results = explain_many(model, images, method, target, layer, batch_size, ground_truth, method_options,
                               **options)
        return {given.get(name, name): result for name, result in results.items()}
    method_class = get_method(method)
    options = method_class.check_options({**options, **(method_options or {})})
    explainer = method_class(model, layer=layer, batch_size=batch_size, **options)
    images = prepare_images(img, model, image_size=image_size, max_size=max_size)
    return explainer(images, target, ground_truth=ground_truth)


def _layer_rows(method: str | Sequence[str], layer: LayerSpec) -> tuple[str | list[str], LayerSpec, dict[str, str]]:
    """``"gradcam@layer2"`` (a benchmark's layer row) is Grad-CAM on ``layer2``: the names without their
    suffix, the layer, and {name: the name as given} to key a list's results. One layer per call."""
    names = [method] if isinstance(method, str) else list(method) if isinstance(method, Sequence) else None
    if not names or not all(isinstance(name, str) for name in names):
        return method, layer, {}  # explain_many says what is wrong
    split = [split_layer(name) for name in names]
    suffixes = {suffix for _, suffix in split}
    if suffixes == {None}:
        return method, layer, {}
    if len(suffixes) > 1:
        raise ValueError(f"method={list(names)!r} names several layers ({sorted(map(str, suffixes))}); explain one "
                         "layer per call (or give layer= and plain names)")
    (suffix,) = suffixes
    if layer is not None and layer != suffix:
        raise ValueError(f"method {names[0]!r} names layer {suffix!r} but layer={layer!r} was given; give one of them")
    bases = [base for base, _ in split]
    given = {get_method(base).name: name for base, name in zip(bases, names) if not base.lower().startswith("captum:")}
    return (bases[0] if isinstance(method, str) else bases), suffix, given
