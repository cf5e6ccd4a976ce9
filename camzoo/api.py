"""``camzoo.explain`` and ``camzoo.list_methods``: the one-call entry points."""

from __future__ import annotations

from torch import nn

from .explanation import Explanation
from .inputs import DEFAULT_MAX_SIZE, ImageInput, Size, prepare_images
from .methods import get_method, method_names
from .methods.base import GroundTruth, TargetSpec


def list_methods() -> list[str]:
    """Names of every available CAM method, sorted.

    Not called ``methods``: that name is the :mod:`camzoo.methods` subpackage (``camzoo.methods.CAMMethod``).
    """
    return method_names()


def explain(
    model: nn.Module,
    img: ImageInput,
    method: str = "gradcam",
    target: TargetSpec = None,
    layer: nn.Module | str | None = None,
    *,
    image_size: Size | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
    batch_size: int | None = None,
    ground_truth: GroundTruth | None = None,
) -> Explanation:
    """Explain ``model``'s decision on ``img`` with a CAM method.

    img: a normalised tensor (3,H,W) or (B,3,H,W) (resized to ``image_size`` when given); a PIL
    image, an HxWx3 uint8 array or a path (resized to ``image_size`` or the model's input size and
    normalised with its mean/std; EXIF orientation applied, 16-bit files scaled by bit depth); or a
    list of those. Whatever runs at its own size is capped at ``max_size`` px on its longest side
    (aspect kept, with a warning; None: no cap), so one huge image cannot exhaust memory.
    target: None explains the predicted class; an int or a class name (``model.class_names``), one
    for all images or one per image in order. Scores are softmax probabilities (a one-logit model's
    score is the sigmoid of its logit).
    layer: a module or dotted name; None picks the model's final convolutional feature map.
    ground_truth: ``{"mask": (B,H,W) bool, "boxes": (B,K,4) x0,y0,x1,y1 pixel edges, NaN-padded}``
    (either may be absent) at the resolution of the images as the method sees them; required by
    methods with ``needs_ground_truth`` (the ``oracle`` control), validated and ignored by the others.
    """
    method_class = get_method(method)
    explainer = method_class(model, layer=layer, batch_size=batch_size)
    images = prepare_images(img, model, image_size=image_size, max_size=max_size)
    return explainer(images, target, ground_truth=ground_truth)
