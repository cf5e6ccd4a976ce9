"""``camzoo.explain`` and ``camzoo.methods``: the one-call entry points."""

from __future__ import annotations

from torch import nn

from .explanation import Explanation
from .inputs import ImageInput, prepare_images
from .methods import get_method, method_names
from .methods.base import TargetSpec


def methods() -> list[str]:
    """Names of every available CAM method, sorted."""
    return method_names()


def explain(
    model: nn.Module,
    img: ImageInput,
    method: str = "gradcam",
    target: TargetSpec = None,
    layer: nn.Module | str | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
) -> Explanation:
    """Explain ``model``'s decision on ``img`` with a CAM method.

    img: a normalised tensor (3,H,W) or (B,3,H,W); a PIL image, an HxWx3 uint8 array or a path
    (resized to ``image_size`` or the model's input size and normalised with its mean/std); or a
    list of those. target: None explains the predicted class; an int or one int per image.
    layer: a module or dotted name; None picks the model's final convolutional feature map.
    """
    method_class = get_method(method)
    explainer = method_class(model, layer=layer, batch_size=batch_size)
    images = prepare_images(img, model, image_size=image_size)
    return explainer(images, target)
