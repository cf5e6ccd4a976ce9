"""The built-in "shapes" dataset: generated once, cached as .npz, served from memory."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from . import shapes_gen as gen
from .base import ArrayDataset

DEFAULT_SPLIT_SIZES = {"train": 10000, "val": 2000, "test": 2000}
DEFAULT_IMAGE_SIZE = 64
# Channel statistics of generated images (measured on seed 0, 10k train images; a test keeps them
# honest). Generated images change only with GENERATOR_VERSION, so these need no per-run pass.
MEAN = (0.35, 0.34, 0.33)
STD = (0.24, 0.21, 0.22)


def default_cache_dir() -> Path:
    """$CAMZOO_CACHE, else ~/.cache/camzoo."""
    env = os.environ.get("CAMZOO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "camzoo"


def cache_path(cache_dir: Path, split: str, n: int, image_size: int, num_classes: int, seed: int,
               content: str) -> Path:
    return cache_dir / "shapes" / (
        f"shapes-v{gen.GENERATOR_VERSION}-{split}-n{n}-s{image_size}-c{num_classes}-seed{seed}-{content}.npz"
    )


def generate(split: str, n: int, image_size: int, num_classes: int, seed: int, content: str) -> dict[str, np.ndarray]:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"shapes: num_images must be a positive int, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"shapes: seed must be a non-negative int, got {seed!r}")
    return gen.render(gen.draw_scenes(n, num_classes, seed, split), image_size, content)


def cached_arrays(path: Path | None, keys: Sequence[str], generate: Callable[[], dict[str, np.ndarray]],
                  dataset: str) -> dict[str, np.ndarray]:
    """A generated dataset's arrays: read from the .npz at ``path``, else ``generate()``d and written there
    atomically (``path`` None: no cache). Why one helper: "shapes" and "scenes" cache the same way, and a
    truncated or foreign cache file must be regenerated (with a warning), never fail a run."""
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in keys}
        except Exception as err:  # a truncated or foreign file: regenerate rather than fail
            warnings.warn(f"{dataset}: ignoring unreadable cache file {str(path)!r} ({err}); regenerating it",
                          stacklevel=3)
    arrays = generate()
    if path is not None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temp name
                np.savez(f, **arrays)
        atomic_write(path, write)
    return arrays


def load_shapes(
    split: str, root: str | Path | None = None, image_size: int | None = None, num_classes: int = 10,
    seed: int = 0, num_images: int | None = None, content: str = "full", augment: bool = False,
    cache: bool = True,
) -> ArrayDataset:
    """The built-in dataset (see docs/datasets.md).

    split: "train", "val" or "test" (disjoint random streams). root: the cache directory (default
    $CAMZOO_CACHE or ~/.cache/camzoo). content: "full"; "background" (the same scenes without the
    class object, its place showing the background that lay under it) for checking that the
    evidence is in the object; "object" (the object alone on flat grey).
    """
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if split not in gen.SPLIT_CODES:
        raise ValueError(f"shapes: unknown split {split!r}; choose one of {sorted(gen.SPLIT_CODES)}")
    n = DEFAULT_SPLIT_SIZES[split] if num_images is None else num_images
    gen.class_layout(num_classes)  # validates before any work
    path = cache_path(Path(root) if root is not None else default_cache_dir(), split, n, image_size, num_classes,
                      seed, content) if cache else None
    arrays = cached_arrays(path, ("images", "masks", "boxes", "labels"),
                           lambda: generate(split, n, image_size, num_classes, seed, content), "shapes")
    return ArrayDataset(
        torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), gen.class_names(num_classes),
        MEAN, STD, masks=torch.from_numpy(arrays["masks"]), boxes=torch.from_numpy(arrays["boxes"])[:, None, :],
        augment=augment, name="shapes", split=split,
    )
