"""Turn what a user hands to ``explain`` into a normalised (B,3,H,W) batch on the model's device.

Why here and not in each method: every method must see exactly the same pixels, and every input
form (tensor, PIL image, uint8 array, path, or a list of those) must fail with the same clear errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from .modelutil import model_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageInput = Any  # torch.Tensor | Image.Image | np.ndarray | str | os.PathLike | Sequence of these


def model_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the model expects, from its timm-style ``pretrained_cfg``; ImageNet's otherwise."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return mean, std


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return (int(size[-2]), int(size[-1])) if size else None


def to_display_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo normalisation of (B,3,H,W) images; return (B,H,W,3) uint8 for pictures."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    pixels = (images.detach().float() * std_t + mean_t).clamp(0, 1) * 255.0
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB, with an error that names the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist (or is not a file)")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {str(path)!r}: not a readable image file ({err})") from err
    except Exception as err:  # PIL raises several other types for truncated or hostile files
        raise ValueError(f"cannot read image {str(path)!r} ({type(err).__name__}: {err})") from err


def _to_uint8_array(item: Any) -> np.ndarray:
    if isinstance(item, (str, os.PathLike)):
        item = load_image(item)
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"))
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ValueError(
                f"a numpy image must be uint8 HxWx3 (RGB, 0-255); got dtype {item.dtype}. "
                "Pass a float image as a normalised torch tensor (3,H,W) instead."
            )
        if item.ndim != 3 or item.shape[2] not in (3, 4):
            raise ValueError(f"a numpy image must have shape HxWx3; got {tuple(item.shape)}")
        return item[..., :3]
    raise TypeError(
        f"cannot explain an input of type {type(item).__name__}; pass a normalised tensor (3,H,W) or "
        "(B,3,H,W), a PIL image, an HxWx3 uint8 array, a path, or a list of these"
    )


def _check_tensor(images: torch.Tensor) -> torch.Tensor:
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"image tensor must have shape (3,H,W) or (B,3,H,W) with 3 colour channels; got "
            f"{tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"image tensor must be float and already normalised; got dtype {images.dtype}. "
            "Pass raw pixels as a PIL image or an HxWx3 uint8 array to have camzoo normalise them."
        )
    if images.shape[0] == 0:
        raise ValueError("image tensor holds no images (batch size 0)")
    if not torch.isfinite(images).all():
        raise ValueError("image tensor contains NaN or infinite values")
    return images


def prepare_images(
    images: ImageInput, model: nn.Module, image_size: int | tuple[int, int] | None = None
) -> torch.Tensor:
    """Return a normalised float (B,3,H,W) batch on the model's device.

    Tensors are taken as already normalised and used at their own size. Pixel inputs (PIL images,
    uint8 arrays, paths) are resized to ``image_size``, else to the model's ``pretrained_cfg``
    input size, else kept at their own size (all images of a list must then share one size), and
    normalised with the model's mean/std.
    """
    device = model_device(model)
    if isinstance(images, torch.Tensor):
        return _check_tensor(images).to(device=device, dtype=torch.float32)
    items: Sequence[Any] = images if isinstance(images, (list, tuple)) else [images]
    if len(items) == 0:
        raise ValueError("no images given")
    if all(isinstance(item, torch.Tensor) for item in items):
        return prepare_images(torch.stack([_check_tensor(t)[0] for t in items]), model)
    arrays = [_to_uint8_array(item) for item in items]
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    size = image_size or model_input_size(model)
    batch = [torch.tensor(a).permute(2, 0, 1).float().div(255.0) for a in arrays]
    if size is not None:
        batch = [
            F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            for t in batch
        ]
    shapes = {tuple(t.shape) for t in batch}
    if len(shapes) > 1:
        raise ValueError(
            f"images have different sizes {sorted(shapes)}; pass image_size=... to resize them to one size"
        )
    mean, std = model_normalisation(model)
    stacked = torch.stack(batch).to(device)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (stacked - mean_t) / std_t
