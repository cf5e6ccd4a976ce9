"""The built-in "digits" dataset: scikit-learn's bundled handwritten digits (real data, no download).

Why: ``shapes`` is generated; ``digits`` is the smallest *real* image set that ships inside a wheel
(scikit-learn's ``load_digits``: 1,797 scanned 8x8 digits, grey levels 0..16, 174-183 per class, the
UCI "Optical Recognition of Handwritten Digits" test set). Nothing is downloaded or cached.

Preparation, all batched: grey levels scaled to [0,1], upsampled bilinearly (align_corners=False)
to ``image_size`` (default 32), copied to three channels so that every 3-channel model works,
stored as uint8 and served normalised with ``MEAN``/``STD`` by :class:`ArrayDataset`.

Splits: one seeded, *stratified* permutation (every class split in the same proportions) into
train / val / test = 70 / 10 / 20 %; the same ``seed`` always gives the same split, and the splits
are disjoint and cover the 1,797 images.

No ground truth (``annotations == ()``): an "ink > 0" mask was considered and rejected. The class
evidence of a digit lies as much where ink is absent (the hollow centre of a 0 against an 8's
crossing, the open side of a 5 against a 6) as where it is, and the digits are cropped to fill the
frame, so such a mask would cover most of the image and reward a centre prior, not a faithful map.
Use the grid games (``camzoo.metrics.grids``) for localisation on digits: there the evidence's
place is known by construction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import ArrayDataset

DEFAULT_IMAGE_SIZE = 32
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
CLASSES = [str(d) for d in range(10)]
# Channel statistics of the train split (seed 0) at 32 px after the uint8 round trip (a test keeps
# them honest). Grey images: the three channels are equal. Upsampling smooths the strokes, so the std
# is lower than at 8 px (0.376); it moves by < 0.002 between 16 and 64 px.
MEAN = (0.305, 0.305, 0.305)
STD = (0.324, 0.324, 0.324)


def _raw_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(1797,8,8) float32 grey levels in [0,1] and (1797,) labels from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is in install_requires
        raise ImportError("the digits dataset needs scikit-learn (pip install 'scikit-learn>=1.3')") from err
    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0)
    return images, torch.from_numpy(bunch.target).long()


def split_indices(labels: torch.Tensor, split: str, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``split`` in a seeded stratified 70/10/20 split of ``labels`` (no Python loop).

    Each class is shuffled with the seed; its first 70 % go to train, the next 10 % to val, the rest
    to test (boundaries rounded per class), so class balance is the same in every split.
    """
    if split not in SPLITS:
        raise ValueError(f"digits: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    n = labels.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    by_class = order[labels[order].argsort(stable=True)]          # shuffled within each class
    sorted_labels = labels[by_class]
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[sorted_labels]                # position within its class
    fraction = rank.double() / counts[sorted_labels].double()
    train_end, val_end = SPLIT_FRACTIONS["train"], SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["val"]
    code = (fraction >= train_end).long() + (fraction >= val_end).long()  # 0 train, 1 val, 2 test
    return by_class[code == SPLITS.index(split)].sort().values


def load_digits(split: str, root: Any = None, image_size: int | None = None, seed: int = 0,
                augment: bool = False, num_images: int | None = None, cache: bool = False,
                **options: Any) -> ArrayDataset:
    """The digits split as an in-memory :class:`ArrayDataset` of ``(image, label, {})`` items.

    split: "train", "val" or "test". root: ignored (the data ships with scikit-learn; accepted so the
    loader has the registry's signature). image_size: side of the returned square images (>= 8,
    default 32). seed: the split's seed. num_images: keep only the first n images of the split (tiny
    tests and previews). augment: the ArrayDataset's train-time augmentation; note that it includes
    horizontal flips, which do not preserve every digit's identity, so prefer ``augment=False``.
    cache: ignored (nothing is cached; accepted like the generated datasets' option, which the
    benchmark's config check passes).
    """
    if options:
        raise ValueError(f"digits: unexpected keyword option(s) {', '.join(sorted(options))}; "
                         "accepted: seed, num_images, augment")
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"digits: image_size must be an int >= 8, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"digits: seed must be a non-negative int, got {seed!r}")
    grey, labels = _raw_digits()
    index = split_indices(labels, split, seed)
    if num_images is not None:
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"digits: num_images must be a positive int, got {num_images!r}")
        index = index[:num_images]
    pixels = grey[index][:, None]
    if size != pixels.shape[-1]:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    images = pixels.clamp_(0, 1).mul_(255).round_().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ArrayDataset(images, labels[index], CLASSES, MEAN, STD, augment=augment, name="digits", split=split)


__all__ = ["CLASSES", "DEFAULT_IMAGE_SIZE", "MEAN", "STD", "load_digits", "split_indices"]
