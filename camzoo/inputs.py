"""Turn what a user hands to ``explain`` into a normalised (B,C,H,W) batch on the model's device
(C: the channels the model's first convolution takes, 3 for colour models, 1 for grayscale ones).

Why here and not in each method: every method must see exactly the same pixels, and every input
form (tensor, PIL image, uint8 array, path, or a list of those) must fail with the same clear errors.
Why the care in :func:`load_image`: a file must mean what it shows — EXIF orientation applied, a
16-bit file scaled by its bit depth (not clipped to white) — and no single file may exhaust memory
(the longest side is capped at ``max_size``; PIL's decompression-bomb limit stays on).
Why the bounded walk in :func:`collect_image_files`: a folder or ``**`` glob may hold symlink loops,
hidden folders, dangling links and pipes; each real folder is listed once, and what cannot be read is
reported instead of hanging or being dropped without a word.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from .io import Problems, display_path, glob_files, special_file_problem, walk_files
from .modelutil import model_device, model_in_channels, model_input_size, model_normalisation

ImageInput = Any  # torch.Tensor | Image.Image | np.ndarray | str | os.PathLike | Sequence of these
Size = int | tuple[int, int]


class FrameWarning(UserWarning):
    """An animated or multi-page file: only its first frame is explained (the CLI prints it as a note)."""


# Longest side (px) an input may have when it runs at its own size; larger inputs are downscaled
# (aspect kept) with a warning. 1024 px keeps one image's forward pass within a few hundred MB on a
# ResNet-50; a 10000 x 10000 image at its own size needs more than 8 GiB.
DEFAULT_MAX_SIZE = 1024
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".avif")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TIFF_BITS_PER_SAMPLE = 258
_EXIF_ORIENTATION = 0x0112


def channel_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std for ``channels`` channels. A grayscale model whose config still lists RGB statistics
    (timm keeps them with ``in_chans=1``) gets their averages: the statistics of the gray image."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) == channels and len(std) == channels:
        return mean, std
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    if len(mean) == 1 and len(std) == 1:
        return mean * channels, std * channels
    raise ValueError(f"the model takes {channels}-channel images but its normalisation has {len(mean)} values; "
                     "pass a normalised tensor (B,C,H,W) instead of pixels")


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, PIL's "L": how a grayscale model sees a colour picture


def pixels_for_model(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """(B,3,H,W) RGB pixels in [0, 1] -> the ``channels`` a model takes: as they are for 3, their luma
    for 1. One function, so that ``camzoo.explain`` and the benchmark give a model the same pixels."""
    if channels not in (1, 3):
        raise ValueError(f"the model takes {channels}-channel images; camzoo converts pixels to 1 or 3 channels "
                         f"only: pass a normalised tensor (B,{channels},H,W)")
    luma = torch.tensor(LUMA, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return pixels if channels == 3 else (pixels * luma).sum(1, keepdim=True)


def to_display_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo normalisation of (B,C,H,W) images; return (B,H,W,3) uint8 for pictures (one channel as gray)."""
    channels = images.shape[1]
    mean, std = channel_stats(mean, std, channels)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, channels, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, channels, 1, 1)
    pixels = (images.detach().float() * std_t + mean_t).clamp(0, 1) * 255.0
    if channels == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    elif channels != 3:
        pixels = pixels[:, :3] if channels > 3 else pixels[:, :1].expand(-1, 3, -1, -1)
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def check_model_device(model: nn.Module) -> torch.device:
    """The model's device; a clear error for the ``meta`` device, whose tensors hold no values."""
    device = model_device(model)
    if device.type == "meta":
        raise ValueError("the model's weights are on the 'meta' device (shapes only, no values: built under "
                         "torch.device('meta') or with empty weights); load real weights first, e.g. "
                         "model.to_empty(device='cpu') then model.load_state_dict(...)")
    return device


def check_size(value: Any, name: str, allow_pair: bool = True) -> tuple[int, int] | None:
    """None, a positive int, or (with ``allow_pair``) a pair of positive ints -> (H, W) or None."""
    if value is None:
        return None
    pair = value if allow_pair and isinstance(value, (tuple, list)) and len(value) == 2 else (value, value)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in pair):
        shape = "a positive int or a pair (H, W) of positive ints" if allow_pair else "a positive int"
        raise ValueError(f"{name} must be {shape} (or None); got {value!r}")
    return int(pair[0]), int(pair[1])


def _bit_depth(image: Image.Image) -> int:
    """Bits per sample of a single-channel integer image, from the file itself (never from its values)."""
    if image.mode.startswith("I;16"):
        return 16
    if image.format == "PNG":  # PNG's integer grayscale is at most 16 bits
        return 16
    if image.format == "TIFF":
        bits = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE)  # type: ignore[attr-defined]
        bits = bits[0] if isinstance(bits, tuple) else bits
        if isinstance(bits, int) and 1 <= bits <= 32:
            return bits
    raise ValueError(f"cannot tell the bit depth of this {image.format or 'in-memory'} {image.mode!r} image; "
                     "save it as an 8- or 16-bit PNG")


def to_rgb8(image: Image.Image) -> Image.Image:
    """RGB, 8 bits per channel. High-bit-depth grayscale is scaled by its bit depth (PIL's own
    ``convert("RGB")`` clips a 16-bit image to white); float images must hold values in [0, 1]."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image)
        if image.mode == "F":
            if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 1):
                raise ValueError("a floating-point image must hold values in [0, 1]; save it as an 8- or 16-bit PNG")
            scaled = np.round(values * 255.0)
        else:
            top = 2 ** _bit_depth(image) - 1  # integer arithmetic: 8 bytes a pixel, not 16, for huge files
            scaled = (np.clip(values, 0, top).astype(np.uint64) * 255 + top // 2) // top
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_within(image: Image.Image, max_size: int | None) -> Image.Image:
    """Downscale (aspect kept, antialiased) so the longest side is at most ``max_size``; else unchanged."""
    if max_size is None or max(image.size) <= max_size:
        return image
    scale = max_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def open_image(path: str | os.PathLike, max_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_image`, plus the file's own upright (H, W) before any ``max_size`` cap."""
    text = os.fspath(path)
    if isinstance(text, str) and _URL.match(text):
        raise ValueError(f"{text!r} is a URL; camzoo reads local files only and never downloads: save the image "
                         "and pass its path")
    path = Path(path)
    if not path.is_file():
        problem = special_file_problem(path)
        raise FileNotFoundError(f"image {display_path(path)!r} {problem or 'does not exist'}")
    try:
        with Image.open(path) as image:
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                warnings.warn(f"{display_path(path)} has {frames} frames (an animation or a multi-page file); only "
                              "the first is explained", FrameWarning, stacklevel=3)
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
            if max_size is not None and max(width, height) > max_size and image.format == "JPEG":
                scale = max_size / max(width, height)
                image.draft("RGB", (round(image.width * scale), round(image.height * scale)))
            upright = ImageOps.exif_transpose(image)
            return fit_within(to_rgb8(upright), max_size), (height, width)
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image {display_path(path)!r}: {err} (PIL's decompression-bomb limit)") from err
    except PermissionError as err:
        raise ValueError(f"cannot read image {display_path(path)!r}: permission denied; make it readable "
                         "(chmod) or leave it out") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {display_path(path)!r}: not a readable image file ({err})") from err
    except ValueError as err:
        raise ValueError(f"cannot read image {display_path(path)!r}: {err}") from err
    except Exception as err:  # PIL raises several other types for truncated or hostile files
        raise ValueError(f"cannot read image {display_path(path)!r} ({type(err).__name__}: {err})") from err


def load_image(path: str | os.PathLike, max_size: int | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB, upright (EXIF orientation applied), errors naming the file.

    ``max_size``: cap the longest side (aspect kept); JPEGs are then decoded at reduced scale, so a
    huge file never holds its full resolution in memory.
    """
    return open_image(path, max_size)[0]


def collect_image_files(specs: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = (),
                        skipped: Problems | None = None) -> list[Path]:
    """Files named, folders (searched recursively for image extensions) and glob patterns -> one
    list: the specs in the order given, each folder's or pattern's files sorted, a file named twice
    kept once. Hidden files and folders are skipped; each real folder is walked once (symlink loops
    end); folders in ``exclude`` (e.g. the output folder) are not entered. Image-named entries that
    are not regular files (dangling links, pipes) and folders that cannot be listed are appended to
    ``skipped`` as (path, reason). Raises FileNotFoundError naming the first spec that is neither an
    existing file nor a folder or pattern holding an image file."""
    found: list[Path] = []
    for spec in specs:
        path, text = Path(spec), os.fspath(spec)
        if path.is_file():
            found.append(path)
            continue
        problems: Problems = []
        if path.is_dir():
            candidates = [path.joinpath(*names) for names, _ in walk_files(path, problems, exclude=exclude)]
            what = "folder"
        elif glob.has_magic(text):
            candidates, what = glob_files(text, problems, exclude=exclude), "pattern"
        else:
            problem = special_file_problem(path)
            raise FileNotFoundError(f"{display_path(text)!r} {problem}" if problem else
                                    f"{display_path(text)!r} does not exist (not a file, a folder or a glob pattern)")
        images = []
        for candidate in sorted(candidates):
            if candidate.suffix.lower() not in IMAGE_EXTENSIONS or candidate.name.startswith("."):
                continue
            problem = None if candidate.is_file() else special_file_problem(candidate)
            if problem:
                problems.append((candidate, problem))
            elif candidate.is_file():
                images.append(candidate)
        if skipped is not None:
            skipped.extend(problems)
        if not images:
            unreadable = f"; {len(problems)} entries could not be read, e.g. {display_path(problems[0][0])!r} " \
                         f"{problems[0][1]}" if problems else ""
            raise FileNotFoundError(f"{what} {display_path(text)!r} holds no image files "
                                    f"({', '.join(IMAGE_EXTENSIONS)}){unreadable}")
        found.extend(images)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_names(files: Sequence[Path]) -> list[Path]:
    """Unique, stable relative output stems: the input tree mirrored below the files' common folder.

    ``a.png`` and ``sub/a.png`` -> ``a`` and ``sub/a``; two files of one folder with the same stem
    (``a.png``, ``a.jpg``) keep their extension (``a.png``, ``a.jpg``) so neither overwrites the other.
    """
    resolved = [p.resolve() for p in files]
    if not resolved:
        return []
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    stems = [p.parent.relative_to(root) / p.stem for p in resolved]
    counts: dict[Path, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return [stem if counts[stem] == 1 else p.parent.relative_to(root) / p.name for stem, p in zip(stems, resolved)]


def _to_uint8_array(item: Any, max_size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(HxWx3 uint8 array capped at ``max_size``, the input's own (H, W) before the cap)."""
    if isinstance(item, (str, os.PathLike)):
        image, own = open_image(item, max_size)
        return np.asarray(image), own
    if isinstance(item, Image.Image):
        upright = ImageOps.exif_transpose(item)
        return np.asarray(fit_within(to_rgb8(upright), max_size)), (upright.height, upright.width)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ValueError(
                f"a numpy image must be uint8 HxWx3 (RGB, 0-255); got dtype {item.dtype}. "
                "Pass a float image as a normalised torch tensor (3,H,W) instead."
            )
        if item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 1):  # grayscale
            item = np.repeat(item.reshape(item.shape[0], item.shape[1], 1), 3, axis=2)
        if item.ndim != 3 or item.shape[2] not in (3, 4):
            raise ValueError(f"a numpy image must have shape HxWx3 (or HxW grayscale); got {tuple(item.shape)}")
        if item.shape[0] == 0 or item.shape[1] == 0:
            raise ValueError(f"a numpy image must be at least 1x1 pixel; got shape {tuple(item.shape)}")
        own = (item.shape[0], item.shape[1])
        if max_size is not None and max(own) > max_size:
            return np.asarray(fit_within(Image.fromarray(np.ascontiguousarray(item[..., :3])), max_size)), own
        return item[..., :3], own
    if isinstance(item, torch.Tensor):
        raise TypeError("a list of inputs must hold only tensors or only pixel inputs (PIL images, uint8 arrays, paths)")
    raise TypeError(
        f"cannot explain an input of type {type(item).__name__}; pass a normalised tensor (3,H,W) or "
        "(B,3,H,W), a PIL image, an HxWx3 uint8 array, a path, or a list of these"
    )


def _check_tensor(images: torch.Tensor, channels: int = 3) -> torch.Tensor:
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(
            f"image tensor must have shape ({channels},H,W) or (B,{channels},H,W) with {channels} colour "
            f"channel{'s' if channels != 1 else ''} (what the model's first convolution takes); got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"image tensor must be float and already normalised; got dtype {images.dtype}. "
            "Pass raw pixels as a PIL image or an HxWx3 uint8 array to have camzoo normalise them."
        )
    if images.shape[0] == 0:
        raise ValueError("image tensor holds no images (batch size 0)")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"image tensor must be at least 1x1 pixel; got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("image tensor contains NaN or infinite values")
    return images


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _cap(images: torch.Tensor, max_size: int | None) -> torch.Tensor:
    """Downscale a (B,C,H,W) batch whose longest side exceeds ``max_size`` (aspect kept), with a warning."""
    height, width = images.shape[-2:]
    if max_size is None or max(height, width) <= max_size:
        return images
    scale = max_size / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    warnings.warn(f"input of {height}x{width} px exceeds max_size={max_size}: explained at {size[0]}x{size[1]} "
                  "(pass max_size=None, or --max-size, to change this)", stacklevel=3)
    return _resize(images, size)


def prepare_images(
    images: ImageInput, model: nn.Module, image_size: Size | None = None, max_size: int | None = DEFAULT_MAX_SIZE
) -> torch.Tensor:
    """Return a normalised float (B,C,H,W) batch on the model's device (C: :func:`model_in_channels`).

    Tensors are taken as already normalised; with ``image_size`` they are resized to it (bilinear,
    antialiased), else used at their own size (a list of tensors must then share one size).
    Pixel inputs (PIL images, uint8 arrays, paths) are resized to ``image_size``, else to the
    model's input size (``modelutil.model_input_size``: its ``pretrained_cfg``, or a torchvision
    classifier's 224 px), else kept at their own size (a list must then share one size), and
    normalised with the model's mean/std. Whatever runs at its own size is first capped
    at ``max_size`` px on its longest side (aspect kept, with a warning; None: no cap), so no single
    input can exhaust memory. Pixel inputs larger than ``max_size`` are also pre-shrunk before a
    resize, so a huge file never becomes a full-resolution float tensor. For a grayscale model
    (C = 1) pixels become their luma (ITU-R 601, PIL's "L"), normalised with the averaged mean/std.
    """
    size = check_size(image_size, "image_size")
    check_size(max_size, "max_size", allow_pair=False)
    device = check_model_device(model)
    channels = model_in_channels(model)
    if isinstance(images, torch.Tensor):
        batch = _check_tensor(images, channels).float()
        return (_resize(batch, size) if size else _cap(batch, max_size)).to(device)
    items: Sequence[Any] = images if isinstance(images, (list, tuple)) else [images]
    if len(items) == 0:
        raise ValueError("no images given")
    if all(isinstance(item, torch.Tensor) for item in items):
        tensors = [_check_tensor(t, channels).float() for t in items]
        if size:
            tensors = [_resize(t, size) for t in tensors]
        shapes = sorted({tuple(t.shape[-2:]) for t in tensors})
        if len(shapes) > 1:
            raise ValueError(f"the tensors have different sizes {shapes}; pass image_size=... to resize them "
                             "to one size, or explain each size separately")
        return prepare_images(torch.cat(tensors), model, max_size=max_size)
    loaded = [_to_uint8_array(item, max_size) for item in items]
    arrays = [array for array, _ in loaded]
    size = size or model_input_size(model)
    capped = [(own, array.shape[:2]) for array, own in loaded if tuple(array.shape[:2]) != tuple(own)]
    if capped and not size:
        (own, now), more = capped[0], f" (and {len(capped) - 1} more)" if len(capped) > 1 else ""
        warnings.warn(f"image of {own[0]}x{own[1]} px{more} exceeds max_size={max_size}: explained at "
                      f"{now[0]}x{now[1]} (pass max_size=None, or --max-size, to change this)", stacklevel=2)
    batch = [torch.tensor(a).permute(2, 0, 1).float().div(255.0)[None] for a in arrays]
    batch = [_resize(t, size) for t in batch] if size else batch
    shapes = sorted({tuple(t.shape[-2:]) for t in batch})
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {shapes}; pass image_size=... to resize them to one size")
    stacked = pixels_for_model(torch.cat(batch).to(device), channels)
    mean, std = (torch.tensor(v, device=device).view(1, channels, 1, 1)
                 for v in channel_stats(*model_normalisation(model), channels))
    return (stacked - mean) / std
