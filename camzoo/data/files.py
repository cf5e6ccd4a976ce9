"""Datasets read image by image from disk (ImageFolder, CUB, ImageNet-style, Oxford-IIIT Pet).

Every record knows its file and an id to name in error messages; annotations are checked against
the real image size when the image is read, so a bad box or mask is reported with its file and
record instead of silently shifting a localisation score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..inputs import load_image
from . import transforms as T
from ..modelutil import IMAGENET_MEAN, IMAGENET_STD
from .base import CamzooDataset
from .errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
BOX_TOLERANCE = 1.0  # pixels a box may overhang its image (annotation round-off); clipped, not refused


@dataclass(frozen=True)
class Record:
    path: Path
    label: int
    record: str                              # how error messages name it, e.g. "images.txt line 12"
    boxes: np.ndarray | None = None          # (K,4) x0,y0,x1,y1 in original pixel-edge coordinates
    mask_path: Path | None = None


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: directory {str(path)!r} does not exist")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what}: file {str(path)!r} does not exist")
    return path


def open_image(path: Path, record: str) -> Image.Image:
    """``camzoo.inputs.load_image``, with errors that also name the dataset record."""
    try:
        return load_image(path)
    except (FileNotFoundError, ValueError) as err:
        raise DatasetError(f"{record}: {err}") from err


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted, so the order never depends on the filesystem."""
    found = []
    for dirpath, _, filenames in os.walk(folder):
        found.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


class FileDataset(CamzooDataset):
    """Records read lazily: PIL decode, resize to image_size x image_size, optional flip, normalise."""

    def __init__(
        self, records: Sequence[Record], classes: Sequence[str], image_size: int, name: str, split: str,
        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
        mask_from_array: Callable[[np.ndarray], np.ndarray] | None = None, augment: bool = False,
        annotations: tuple[str, ...] = (),
    ) -> None:
        if not records:
            raise DatasetError(f"{name}: split {split!r} holds no images")
        self.records = list(records)
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.name, self.split, self.augment = name, split, augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.mask_from_array = mask_from_array
        self.annotations = annotations
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        rec = self.records[index]
        image = open_image(rec.path, rec.record)
        width, height = image.size
        mask = None
        if rec.mask_path is not None:
            mask = self._read_mask(rec, (width, height))
        boxes = None
        if rec.boxes is not None:
            check_boxes(rec.boxes, width, height, f"{rec.record} ({rec.path.name})", BOX_TOLERANCE)
            boxes = np.clip(rec.boxes, 0, [width, height, width, height]).astype(np.float32)
        elif mask is not None:
            boxes = _box_of_mask(mask)
        img, mask_t, boxes_t = T.resize_record(image, self.image_size, mask, boxes)
        if self.augment:
            flip = torch.rand(1) < 0.5
            img4, m, b = T.hflip_where(flip, img[None], None if mask_t is None else mask_t[None],
                                       None if boxes_t is None else boxes_t[None])
            img = img4[0]
            mask_t = None if m is None else m[0]
            boxes_t = None if b is None else b[0]
        target: dict[str, torch.Tensor] = {}
        if mask_t is not None:
            target["mask"] = mask_t
        if boxes_t is not None:
            target["boxes"] = boxes_t
        return (img - self._mean) / self._std, rec.label, target

    def _read_mask(self, rec: Record, size: tuple[int, int]) -> np.ndarray:
        assert rec.mask_path is not None
        try:
            with Image.open(rec.mask_path) as m:
                array = np.asarray(m)
        except FileNotFoundError:
            raise DatasetError(f"{rec.record}: mask {str(rec.mask_path)!r} does not exist") from None
        except Exception as err:
            raise DatasetError(f"{rec.record}: cannot read mask {str(rec.mask_path)!r} ({err})") from err
        if array.shape[1::-1] != size:
            raise DatasetError(
                f"{rec.record}: mask {str(rec.mask_path)!r} is {array.shape[1]}x{array.shape[0]} but its image "
                f"{str(rec.path)!r} is {size[0]}x{size[1]}; the mask must have the image's size"
            )
        if array.ndim == 3:
            array = array[..., 0]
        assert self.mask_from_array is not None
        return self.mask_from_array(array)


def _box_of_mask(mask: np.ndarray) -> np.ndarray:
    """The tight box of a mask, (1,4) in pixel-edge coordinates; (0,4) for an empty mask."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return np.full((0, 4), np.nan, dtype=np.float32)
    return np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=np.float32)


def check_boxes(boxes: np.ndarray, width: float, height: float, where: str, tolerance: float = 0.0) -> None:
    """Raise a clear error when a box is malformed or overhangs its image by more than ``tolerance`` px."""
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        if not np.isfinite([x0, y0, x1, y1]).all() or x1 <= x0 or y1 <= y0:
            raise DatasetError(f"{where}: box {k} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or not finite")
        if min(x0, y0) < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
            raise DatasetError(
                f"{where}: box {k} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image"
            )
