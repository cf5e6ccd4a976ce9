"""The built-in "parts" dataset: procedural birds made of five part slots whose variants define the
class, with exact part maps and exact re-rendered interventions (a 2-D analogue of FunnyBirds).

Generated once, cached as .npz (pixels, part maps and the scene parameters, so :meth:`PartsDataset.render`
works after a cache load), served from memory. See docs/datasets.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import parts_gen as gen
from . import parts_world as world
from . import shapes_gen
from .base import ArrayDataset
from .shapes import DEFAULT_SPLIT_SIZES, cached_arrays, default_cache_dir

DEFAULT_IMAGE_SIZE = 64
# Channel statistics of generated images (measured on seed 0, 10k train images at 64 px; a test keeps
# them honest). Generated images change only with GENERATOR_VERSION, so these need no per-run pass.
MEAN = (0.26, 0.26, 0.25)
STD = (0.20, 0.18, 0.18)
ARRAYS = ("images", "part_maps") + gen.SCENE_KEYS


def _as_numpy(value: torch.Tensor | np.ndarray | Sequence, dtype: type) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


class PartsDataset(ArrayDataset):
    """Birds whose five part variants define the class; ``labels``, ``masks`` (the bird: body and
    present parts) and ``boxes`` (N,1,4, the bird's box) follow the data contract.

    Attributes beyond :class:`ArrayDataset`'s:
        part_maps: (N,S,S) uint8 part ids (0 background, 1 body, 2+s slot s, 7+k distractor k),
            from the same draw calls as the pixels (last drawn wins).
        present: (N,5) bool, the slots drawn in the stored image (all True outside "train").
        background_counts: (N,) long, the distractors drawn in image i.
        class_table: (C,5) long, the variant of each slot of each class (``parts_world.class_parts``).
        max_background: distractor slots per image (the width of ``render``'s ``removed_background``).
        scenes: the scene parameters :meth:`render` draws from.
    """

    def __init__(self, images: torch.Tensor, part_maps: torch.Tensor, scenes: gen.PartsScenes, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], augment: bool = False, split: str = "") -> None:
        n, size = images.shape[0], images.shape[-1]
        if part_maps.dtype != torch.uint8 or part_maps.shape != (n, size, size):
            raise ValueError(f"part_maps must be uint8 of shape {(n, size, size)}, got {tuple(part_maps.shape)} "
                             f"{part_maps.dtype}")
        bird = (part_maps >= world.BODY_ID) & (part_maps < world.FIRST_OBJECT_ID)
        boxes = torch.from_numpy(shapes_gen.boxes_from_masks(bird.numpy()))[:, None, :]
        super().__init__(images, torch.from_numpy(scenes.label), world.class_names(num_classes), mean, std,
                         masks=bird, boxes=boxes, augment=augment, name="parts", split=split)
        self.part_maps, self.scenes = part_maps, scenes
        self.present = torch.from_numpy(scenes.present.copy())
        self.background_counts = torch.from_numpy(scenes.obj_active.sum(axis=1)).long()
        self.class_table = world.class_parts(num_classes)
        self.max_background = int(scenes.obj_kind.shape[1])

    def render(self, indices: torch.Tensor | np.ndarray | Sequence[int],
               removed_parts: torch.Tensor | np.ndarray | None = None,
               removed_background: torch.Tensor | np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-render images ``indices`` from their scene parameters with, in addition to the slots the
        stored image lacks, the slots where ``removed_parts`` (B,5) is True and the distractors where
        ``removed_background`` (B, max_background) is True left out.

        No inpainting: everything else is drawn exactly as before (the same texture crop and noise),
        so the result differs from the stored image only on the removed items' pixels, and with
        nothing removed it equals ``images[indices]`` bit for bit. Batched, no per-image loop.

        Returns:
            images (B,3,S,S) uint8 and part_maps (B,S,S) uint8, on the CPU.
        """
        idx = _as_numpy(indices, np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"parts: render indices must lie in 0..{len(self) - 1}")
        removed = []
        for name, value, width in (("removed_parts", removed_parts, len(world.SLOTS)),
                                   ("removed_background", removed_background, self.max_background)):
            if value is not None:
                value = _as_numpy(value, bool)
                if value.shape != (len(idx), width):
                    raise ValueError(f"parts: {name} must have shape ({len(idx)}, {width}), got {value.shape}")
            removed.append(value)
        out = gen.render(gen.take(self.scenes, idx), self.image_size, *removed)
        return torch.from_numpy(out["images"]), torch.from_numpy(out["part_maps"])

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B,3,S,S) as ``get_batch`` returns them: float, scaled to [0, 1], normalised."""
        mean, std = self._mean.to(images.device), self._std.to(images.device)
        return (images.float() / 255.0 - mean) / std


def cache_path(cache_dir: Path, split: str, n: int, image_size: int, num_classes: int, max_background: int,
               seed: int) -> Path:
    return cache_dir / "parts" / (f"parts-v{gen.GENERATOR_VERSION}-{split}-n{n}-s{image_size}-c{num_classes}"
                                  f"-b{max_background}-seed{seed}.npz")


def generate(split: str, n: int, image_size: int, num_classes: int, max_background: int,
             seed: int) -> dict[str, np.ndarray]:
    scenes = gen.draw_scenes(n, num_classes, seed, split, max_background)
    return {**gen.render(scenes, image_size), **gen.to_arrays(scenes)}


def load_parts(
    split: str, root: str | Path | None = None, image_size: int | None = None, num_classes: int = world.NUM_CLASSES,
    max_background: int = world.MAX_BACKGROUND, seed: int = 0, num_images: int | None = None,
    augment: bool = False, cache: bool = True,
) -> PartsDataset:
    """The built-in part world (see docs/datasets.md).

    Args:
        split: "train" (half its images miss a random non-empty set of parts), "val" or "test" (full
            birds); disjoint random streams.
        root: the cache directory (default $CAMZOO_CACHE or ~/.cache/camzoo).
        image_size: image side, 32..224 px (default 64).
        num_classes: 25..100 (default 50, as FunnyBirds).
        max_background: 0..16 distractor objects at most per image (default 8).
        seed: the same seed gives bit-identical data.
        num_images: images in the split (default 10,000 train, 2,000 val or test).
        augment: random horizontal flips (the masks and boxes move with the pixels; ``render`` and
            ``part_maps`` stay unflipped).
        cache: read and write the .npz cache.

    Returns:
        A :class:`PartsDataset`.
    """
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if split not in shapes_gen.SPLIT_CODES:
        raise ValueError(f"parts: unknown split {split!r}; choose one of {sorted(shapes_gen.SPLIT_CODES)}")
    n = DEFAULT_SPLIT_SIZES[split] if num_images is None else num_images
    shapes_gen.check_split_counts("parts", n, seed)
    shapes_gen.check_image_size("parts", image_size)
    world.check_num_classes(num_classes)
    gen.check_max_background(max_background)
    path = cache_path(Path(root) if root is not None else default_cache_dir(), split, n, image_size, num_classes,
                      max_background, seed) if cache else None
    arrays = cached_arrays(path, ARRAYS, lambda: generate(split, n, image_size, num_classes, max_background, seed),
                           "parts")
    return PartsDataset(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["part_maps"]),
                        gen.from_arrays(arrays), num_classes, MEAN, STD, augment=augment, split=split)
