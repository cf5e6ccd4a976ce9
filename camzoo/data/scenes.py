"""The built-in "scenes" dataset: 2-4 objects of distinct classes per image, each with its exact mask
and box, for explaining segmenters and detectors one target object at a time.

Generated once, cached as .npz, served from memory. :class:`SceneDataset` is an
:class:`~camzoo.data.base.ArrayDataset` whose label, mask and box are those of object 0 (the largest
object), so every classification code path runs on it; the per-object ground truth sits beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import scenes_gen as gen
from . import shapes_gen
from . import transforms as T
from .base import ArrayDataset
from .shapes import DEFAULT_SPLIT_SIZES, cached_arrays, default_cache_dir

DEFAULT_IMAGE_SIZE = 64
DEFAULT_NUM_CLASSES = 6
MAX_OBJECTS = gen.MAX_OBJECTS
# Channel statistics of generated images (measured on seed 0, 10k train images at 64 px; a test keeps
# them honest). Generated images change only with GENERATOR_VERSION, so these need no per-run pass.
MEAN = (0.33, 0.32, 0.32)
STD = (0.21, 0.19, 0.20)
ARRAYS = ("images", "instances", "object_labels", "object_boxes")
SEGMENTATION_CHUNK = 1024  # images per gather when the whole set's class map is built


def class_map(instances: torch.Tensor, object_labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel classes (B,H,W) uint8 from instance ids (B,H,W) and object classes (B,M): 0 =
    background, c+1 = class c (torchvision's convention: a segmenter has num_classes + 1 outputs)."""
    table = torch.cat([torch.zeros_like(object_labels[:, :1]), object_labels + 1], dim=1)
    flat = instances.reshape(len(instances), -1).long()
    return table.gather(1, flat).reshape(instances.shape).to(torch.uint8)


class SceneDataset(ArrayDataset):
    """Images with several objects: ``labels``/``masks``/``boxes`` describe object 0 (the data
    contract's single object), and per-object attributes describe them all.

    Attributes beyond :class:`ArrayDataset`'s:
        object_labels: (N,M) long, the class of object j, -1 where image i has fewer than M objects.
        object_boxes: (N,M,4) float32 tight boxes x0,y0,x1,y1 in pixel-edge coordinates, NaN padding.
        instances: (N,S,S) uint8, 0 = background, j+1 = a pixel of object j.
        segmentation: (N,S,S) uint8 class map, 0 = background, c+1 = class c (built on access).

    ``augment=True`` flips whole images with every annotation: ``get_batch(..., objects=True)``
    returns the per-object annotations flipped with the pixels.
    """

    def __init__(
        self, images: torch.Tensor, object_labels: torch.Tensor, object_boxes: torch.Tensor,
        instances: torch.Tensor, classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
        augment: bool = False, name: str = "scenes", split: str = "",
    ) -> None:
        n, size = images.shape[0], images.shape[-1]
        if object_labels.ndim != 2 or object_labels.shape[0] != n:
            raise ValueError(f"object_labels must have shape ({n},M), got {tuple(object_labels.shape)}")
        m = object_labels.shape[1]
        if object_boxes.shape != (n, m, 4):
            raise ValueError(f"object_boxes must have shape {(n, m, 4)}, got {tuple(object_boxes.shape)}")
        if instances.dtype != torch.uint8 or instances.shape != (n, size, size):
            raise ValueError(f"instances must be uint8 of shape {(n, size, size)}, got {tuple(instances.shape)} "
                             f"{instances.dtype}")
        if n and int(object_labels[:, 0].min()) < 0:
            raise ValueError("every image needs an object 0 (object_labels[:, 0] >= 0)")
        super().__init__(images, object_labels[:, 0], classes, mean, std, masks=instances == 1,
                         boxes=object_boxes[:, :1], augment=augment, name=name, split=split)
        self.object_labels = object_labels.long()
        self.object_boxes = object_boxes.float()
        self.instances = instances

    @property
    def segmentation(self) -> torch.Tensor:
        """(N,S,S) uint8 class map of the whole set (0 = background, c+1 = class c), built in chunks."""
        return torch.cat([class_map(self.instances[i:i + SEGMENTATION_CHUNK],
                                    self.object_labels[i:i + SEGMENTATION_CHUNK])
                          for i in range(0, len(self), SEGMENTATION_CHUNK)])

    def get_objects(self, indices: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """Per-object ground truth of the given images, as stored (never augmented): one gather.

        Returns ``object_labels`` (B,M) long, ``object_boxes`` (B,M,4) float32, ``instances`` (B,S,S)
        uint8 and ``segmentation`` (B,S,S) uint8 (see the class docstring).
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels, instances = self.object_labels[idx], self.instances[idx]
        return {"object_labels": labels, "object_boxes": self.object_boxes[idx].clone(), "instances": instances,
                "segmentation": class_map(instances, labels)}

    def get_batch(
        self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None, objects: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """As :meth:`ArrayDataset.get_batch`; with ``objects`` the targets also hold :meth:`get_objects`'
        keys, flipped with the images when the dataset augments (the same flips either way)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        targets = self._targets(idx)
        if objects:
            targets.update(self.get_objects(idx))
        return self._batch(idx, targets, generator)

    def _augment(
        self, images: torch.Tensor, targets: dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flip = torch.rand(images.shape[0], generator=generator) < 0.5  # the same draw as ArrayDataset's
        boxes = targets.get("object_boxes", targets["boxes"])
        images, targets["mask"], boxes = T.hflip_where(flip, images, targets["mask"], boxes)
        if "object_boxes" in targets:
            targets["object_boxes"], targets["boxes"] = boxes, boxes[:, :1].clone()
        else:
            targets["boxes"] = boxes
        for key in ("instances", "segmentation"):
            if key in targets:
                targets[key] = torch.where(flip.view(-1, 1, 1), targets[key].flip(-1), targets[key])
        return images, targets


def cache_path(cache_dir: Path, split: str, n: int, image_size: int, num_classes: int, seed: int) -> Path:
    return cache_dir / "scenes" / (
        f"scenes-v{gen.GENERATOR_VERSION}-{split}-n{n}-s{image_size}-c{num_classes}-seed{seed}.npz"
    )


def generate(split: str, n: int, image_size: int, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    shapes_gen.check_split_counts("scenes", n, seed)
    return gen.render(gen.draw_layouts(n, num_classes, seed, split), image_size)


def load_scenes(
    split: str, root: str | Path | None = None, image_size: int | None = None,
    num_classes: int = DEFAULT_NUM_CLASSES, seed: int = 0, num_images: int | None = None,
    augment: bool = False, cache: bool = True,
) -> SceneDataset:
    """The built-in multi-object dataset (see docs/datasets.md).

    Args:
        split: "train", "val" or "test" (disjoint random streams).
        root: the cache directory (default $CAMZOO_CACHE or ~/.cache/camzoo).
        image_size: image side, 32..224 px (default 64).
        num_classes: 4..30 (at least 4, so that 4 objects of distinct classes fit in an image).
        seed: the same seed gives bit-identical data.
        num_images: images in the split (default 10,000 train, 2,000 val or test).
        augment: random horizontal flips that move every annotation with the pixels.
        cache: read and write the .npz cache.

    Returns:
        A :class:`SceneDataset`.
    """
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if split not in shapes_gen.SPLIT_CODES:
        raise ValueError(f"scenes: unknown split {split!r}; choose one of {sorted(shapes_gen.SPLIT_CODES)}")
    n = DEFAULT_SPLIT_SIZES[split] if num_images is None else num_images
    gen.check_num_classes(num_classes)  # validates before any work
    path = cache_path(Path(root) if root is not None else default_cache_dir(), split, n, image_size, num_classes,
                      seed) if cache else None
    arrays = cached_arrays(path, ARRAYS, lambda: generate(split, n, image_size, num_classes, seed), "scenes")
    return SceneDataset(
        torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["object_labels"]),
        torch.from_numpy(arrays["object_boxes"]), torch.from_numpy(arrays["instances"]),
        shapes_gen.class_names(num_classes), MEAN, STD, augment=augment, name="scenes", split=split,
    )
