"""The result of explaining a batch: maps at input size, raw maps, targets, scores, and views of them.

Why a class: every method and every caller (API, CLI, benchmark) gets one immutable object with the
same fields, so a map produced by Grad-CAM and one read from an LFI-CAM model are handled alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ._version import __version__
from .inputs import to_display_images
from .io import atomic_path, atomic_write, atomic_write_text

MANIFEST_VERSION = 1
OUTLINE_COLOR = (255, 255, 255)  # white: apart from every colour of the jet ramp
BoxLike = Sequence[float] | np.ndarray | torch.Tensor  # x0, y0, x1, y1
MaskLike = np.ndarray | torch.Tensor  # (H, W), nonzero = inside


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with the classic 'jet' ramp (blue -> cyan -> yellow -> red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def colormap_function(name: str):
    """``values in [0,1] -> RGB uint8`` for a colormap name: "jet" (built in) or any matplotlib one."""
    if name == "jet":
        return jet_colormap
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; use jet or a matplotlib colormap such as viridis, "
                         "inferno, magma, turbo or gray") from None
    return lambda values: cmap(np.clip(values, 0.0, 1.0), bytes=True)[..., :3]


def _check_box(box: BoxLike) -> tuple[float, float, float, float]:
    """``box`` as four floats x0 < x1, y0 < y1; a ValueError that shows it otherwise."""
    try:
        values = np.asarray(box.detach().cpu() if isinstance(box, torch.Tensor) else box, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.empty(0)
    if len(values) != 4 or not all(np.isfinite(v) for v in values) or values[0] >= values[2] or values[1] >= values[3]:
        raise ValueError(f"a box must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1; got {box!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _boundary(mask: MaskLike, size: tuple[int, int], width: int) -> np.ndarray:
    """The inner band, ``width`` pixels wide, of ``mask`` resized (nearest) to ``size`` = (H, W):
    where an outline is drawn. Outside the picture counts as outside, so a region that touches
    the border is closed there."""
    inside = torch.as_tensor(np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask) != 0)
    if inside.ndim != 2:
        raise ValueError(f"an outline mask must be (H, W); got shape {tuple(inside.shape)}")
    inside = F.interpolate(inside[None, None].float(), size=size, mode="nearest")
    outside = F.pad(1.0 - inside, (width,) * 4, value=1.0)
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1) > 0
    return ((inside > 0) & near_outside)[0, 0].numpy()


@dataclass(frozen=True)
class Explanation:
    """Saliency maps for a batch of B images.

    maps:    float32 (B,H,W) in [0,1] at input resolution (bilinear upsampling + per-image min-max).
    raw:     float32 (B,h,w) at the explained layer's resolution, before upsampling/normalisation.
    targets: long (B,) class explained for each image; scores: softmax probability of that class
             (for a model with one logit: its sigmoid, the probability of the positive class).
    """

    maps: torch.Tensor
    raw: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    method: str
    layer: str | None
    inputs: torch.Tensor = field(repr=False)
    mean: tuple[float, float, float] = field(default=(0.485, 0.456, 0.406), repr=False)
    std: tuple[float, float, float] = field(default=(0.229, 0.224, 0.225), repr=False)
    class_names: tuple[str, ...] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.maps.shape[0]

    def label(self, i: int) -> str:
        """Human-readable name of the i-th target (class name where known, else its index)."""
        k = int(self.targets[self._index(i)])
        return self.class_names[k] if self.class_names and 0 <= k < len(self.class_names) else str(k)

    def _index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"image index must be an int; got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} is out of range for an explanation of {len(self)} images")
        return int(i) % len(self)

    def map_at(self, i: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The i-th map (H,W) in [0,1] on the CPU, bilinearly resized to ``size`` = (height, width).

        Why: the model sees a resized (often squashed) copy of a photo; resizing the map back to the
        photo's own size and aspect puts every value over the pixel it describes.
        """
        heat = self.maps[self._index(i)].detach().float().cpu()
        if size is None or tuple(size) == tuple(heat.shape):
            return heat
        return F.interpolate(heat[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)

    def overlay(self, i: int = 0, alpha: float = 0.5, colormap: str = "jet",
                image: Image.Image | np.ndarray | None = None, box: BoxLike | None = None,
                outline: MaskLike | None = None, color: tuple[int, int, int] = OUTLINE_COLOR) -> Image.Image:
        """The i-th image with its map blended on top as a heat-map (``colormap``: jet or matplotlib's).

        image: the picture to draw on, e.g. the original file at its own size and aspect (the map is
        resized to it); default: the model's input, un-normalised.
        box: (x0, y0, x1, y1) in the maps' pixels (the model's input), drawn as a rectangle in
        ``color``: the detected or given box a detection map explains. Scaled with the map to ``image``.
        outline: a (H, W) mask (bool, or nonzero = inside) over the same picture at any resolution
        (resized nearest); its boundary is drawn in ``color``: the region a segmentation map explains.
        """
        i = self._index(i)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        paint = colormap_function(colormap)
        if image is None:
            picture = to_display_images(self.inputs[i : i + 1], self.mean, self.std)[0]
        else:
            picture = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
            if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
                raise ValueError(f"overlay image must be RGB uint8 (H,W,3); got {picture.dtype} {picture.shape}")
        heat = paint(self.map_at(i, picture.shape[:2]).numpy())
        blended = ((1.0 - alpha) * picture.astype(np.float32) + alpha * heat.astype(np.float32)).round().astype(np.uint8)
        width = max(1, round(max(blended.shape[:2]) / 200))  # visible on a thumbnail and on a photo
        if outline is not None:
            blended[_boundary(outline, blended.shape[:2], width)] = color
        result = Image.fromarray(blended)
        if box is not None:
            scale_y, scale_x = (blended.shape[0] / self.maps.shape[1], blended.shape[1] / self.maps.shape[2])
            x0, y0, x1, y1 = _check_box(box)
            ImageDraw.Draw(result).rectangle((x0 * scale_x, y0 * scale_y, x1 * scale_x - 1, y1 * scale_y - 1),
                                             outline=tuple(color), width=width)
        return result

    def save(self, directory: str | Path, overlays: bool = True, boxes: Sequence[BoxLike | None] | None = None,
             outlines: Sequence[MaskLike | None] | MaskLike | None = None) -> Path:
        """Write maps.npy, raw.npy, one overlay PNG per image and a versioned manifest.json.

        boxes / outlines: what each overlay draws (see :meth:`overlay`): one box (or None) per image,
        e.g. a (B, 4) tensor, and one mask (or None) per image, e.g. a (B, H, W) bool tensor. The
        boxes are also listed in the manifest. Each file is written atomically; the manifest is
        written last, so a directory with a manifest always holds a complete explanation.
        """
        for name, given in (("boxes", boxes), ("outlines", outlines)):
            if given is not None and len(given) != len(self):
                raise ValueError(f"{name} must hold one entry (or None) per image: got {len(given)} for {len(self)} images")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, tensor in (("maps.npy", self.maps), ("raw.npy", self.raw)):
            array = tensor.detach().float().cpu().numpy()
            with atomic_path(directory / name) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, array)
        overlay_files = []
        if overlays:
            for i in range(len(self)):
                name = f"overlay_{i:04d}.png"
                drawn = {"box": None if boxes is None else boxes[i], "outline": None if outlines is None else outlines[i]}
                atomic_write(directory / name, lambda tmp, i=i, d=drawn: self.overlay(i, **d).save(tmp, format="PNG"))
                overlay_files.append(name)
        manifest = {
            "format": "camzoo-explanation",
            "manifest_version": MANIFEST_VERSION,
            "camzoo_version": __version__,
            "method": self.method,
            "layer": self.layer,
            "num_images": len(self),
            "map_size": list(self.maps.shape[1:]),
            "raw_size": list(self.raw.shape[1:]),
            "targets": [int(t) for t in self.targets.cpu()],
            "target_names": [self.label(i) for i in range(len(self))],
            "scores": [float(s) for s in self.scores.float().cpu()],
            "files": {"maps": "maps.npy", "raw": "raw.npy", "overlays": overlay_files},
        }
        if boxes is not None:
            manifest["boxes"] = [None if b is None else list(_check_box(b)) for b in boxes]
        atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        return directory
