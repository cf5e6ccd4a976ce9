"""Focus (Arias-Duart et al., 2022): 2x2 mosaics of two target-class cells and two other-class cells.

Why beside the grid games: the same confident cells and the same per-cell shares of positive
relevance (:mod:`camzoo.metrics.grids`), a different question — does the map put its mass on the
cells of the explained class (chance 0.5), when two of the four cells show it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .grids import DEFAULT_THRESHOLD, _check_images_labels, _sample_cells, _tile, cell_shares, confident_cells


def make_focus_mosaics(images: torch.Tensor, labels: torch.Tensor | Sequence[int], num_mosaics: int = 500,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """Focus mosaics: 2x2, two cells of a target class, two of two other (distinct) classes.

    Per mosaic (seeded, batched): a target class drawn uniformly among classes with >= 2 images, two
    distinct images of it, two other classes drawn uniformly among the rest, one image each, and the
    four placed in a random arrangement. Returns ``images`` (G,C,2H,2W), ``targets`` (G,) the target
    class, ``target_cells`` (G,4) bool (row-major), ``labels`` (G,4) and ``sources`` (G,4).

    Args:
        images: the pool, normalised (M,C,H,W) float images.
        labels: (M,) non-negative integer class of each pool image.
        num_mosaics: G, how many mosaics (a positive int).
        seed: seeds the draws (a local generator: the global RNG is untouched).

    Returns:
        ``images``: (G,C,2H,2W) the mosaics; ``targets``: (G,) the target class; ``target_cells``:
        (G,4) bool, True on the two target-class cells (row-major); ``labels``: (G,4) class of each
        cell; ``sources``: (G,4) index into ``images`` of each cell's image.

    Raises:
        ValueError: ``images`` not a float (M,C,H,W) tensor; ``labels`` not (M,) non-negative
            integers; ``num_mosaics`` not a positive int; no class with >= 2 images, or fewer than 3
            classes in all.
    """
    images, labels = _check_images_labels(images, labels)
    if isinstance(num_mosaics, bool) or not isinstance(num_mosaics, int) or num_mosaics < 1:
        raise ValueError(f"num_mosaics must be a positive int; got {num_mosaics!r}")
    device = labels.device
    present, counts = torch.unique(labels, return_counts=True)
    eligible = present[counts >= 2]
    if eligible.numel() < 1 or present.numel() < 3:
        raise ValueError(
            f"Focus mosaics need a class with >= 2 images and 3 classes in all; the {labels.numel()} images "
            f"cover {present.numel()} classes, {eligible.numel()} of them with >= 2 images. Pass more images "
            "or lower the confidence threshold"
        )
    generator = torch.Generator().manual_seed(int(seed))
    target = eligible[torch.randint(eligible.numel(), (num_mosaics,), generator=generator).to(device)]
    # two other classes: rank the present classes randomly, pushing the target to the end
    scores = torch.rand(num_mosaics, present.numel(), generator=generator).to(device)
    scores = scores.masked_fill(present[None] == target[:, None], 2.0)
    others = present[scores.argsort(1)[:, :2]]
    # two distinct images of the target class: a random pair of positions within the class
    order = labels.argsort(stable=True)
    per_class = torch.bincount(labels)
    starts = torch.cumsum(per_class, 0) - per_class
    k = per_class[target]
    first = (torch.rand(num_mosaics, generator=generator).to(device) * k).long().clamp_max(k - 1)
    step = 1 + (torch.rand(num_mosaics, generator=generator).to(device) * (k - 1)).long().clamp_max(k - 2)
    second = (first + step) % k
    target_sources = order[starts[target][:, None] + torch.stack([first, second], 1)]
    _, other_sources = _sample_cells(labels, num_mosaics, 2, generator, classes=others)
    sources = torch.cat([target_sources, other_sources], 1)          # (G,4): target, target, other, other
    classes = torch.cat([target[:, None].expand(-1, 2), others], 1)
    is_target = torch.tensor([True, True, False, False], device=device).expand(num_mosaics, 4)
    arrangement = torch.rand(num_mosaics, 4, generator=generator).to(device).argsort(1)
    sources, classes, is_target = (t.gather(1, arrangement) for t in (sources, classes, is_target))
    return {"images": _tile(images, sources, 2), "targets": target, "target_cells": is_target,
            "labels": classes, "sources": sources}


def build_focus_mosaics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                        num_mosaics: int = 500, threshold: float | None = DEFAULT_THRESHOLD, seed: int = 0,
                        batch_size: int = 256) -> dict[str, torch.Tensor | int | float | None]:
    """:func:`make_focus_mosaics` from the images the model classifies correctly with confidence >=
    ``threshold`` (the grid games' rule, so both games see the same kind of cell; None: every image).
    Adds ``sources`` as indices into ``images``, ``qualified`` and ``threshold``.

    Args:
        model: the classifier, returning (B,K) logits; on the images' device (unused when ``threshold``
            is None).
        images: normalised (B,C,H,W) float images.
        labels: (B,) integer true classes.
        num_mosaics: G, how many mosaics (a positive int).
        threshold: the least softmax confidence of a correctly classified image, in [0,1]; None uses
            every image, whatever the model predicts.
        seed: seeds the draws (see :func:`make_focus_mosaics`).
        batch_size: images per forward pass when selecting the cells.

    Returns:
        :func:`make_focus_mosaics`' ``images``, ``targets``, ``target_cells`` and ``labels``;
        ``sources``: (G,4) index into the given ``images``; ``qualified``: int, how many images
        qualified; ``threshold``: as given.

    Raises:
        ValueError: invalid arguments (as :func:`confident_cells` and :func:`make_focus_mosaics` check
            them); too few qualifying images for a mosaic (the message says how many qualified).
    """
    images, labels_t = _check_images_labels(images, labels)
    if threshold is None:
        indices = torch.arange(images.shape[0], device=images.device)
    else:
        indices = confident_cells(model, images, labels_t, threshold, batch_size)["indices"]  # type: ignore[assignment]
    try:
        mosaics = make_focus_mosaics(images[indices], labels_t[indices], num_mosaics, seed)
    except ValueError as err:
        raise ValueError(f"{indices.numel()} of {images.shape[0]} images qualified (confidence >= {threshold}): "
                         f"{err}") from None
    return {**mosaics, "sources": indices[mosaics["sources"]], "qualified": int(indices.numel()),
            "threshold": threshold}


def focus(maps: torch.Tensor, target_cells: torch.Tensor, size: tuple[int, int] | None = None
          ) -> dict[str, torch.Tensor | float]:
    """Focus (Arias-Duart et al. 2022): share of positive relevance on the target-class cells.

    maps (B,h,w) for 2x2 mosaics, explaining each mosaic's target class; ``target_cells`` (B,4) bool,
    row-major; ``size`` as in :func:`grid_pointing_game`. Returns ``focus`` (mean), ``per_image`` and
    ``chance`` (the target cells' share of the mosaic, 0.5 with two of four). Higher is better, [0,1];
    an all-zero map scores 0.

    Args:
        maps: (B,h,w) one map per mosaic, of its target class; any finite values (the positive part
            counts).
        target_cells: (B,4) bool tensor, ``make_focus_mosaics(...)['target_cells']``.
        size: upsample the maps bilinearly to this (H,W) first (the mosaics' size); None scores them at
            their own resolution (sides must then be even).

    Returns:
        ``focus``: the mean, 0-d tensor; ``per_image``: (B,) float32; ``chance``: float, the target
        cells' share of all cells (0.5 for two of four).

    Raises:
        TypeError: ``maps`` is not a float tensor.
        ValueError: ``maps`` not (B,h,w), empty or not finite; the (upsampled) maps' sides not even;
            ``target_cells`` not a (B,4) bool tensor.
    """
    shares = cell_shares(maps, 2, size)
    if not isinstance(target_cells, torch.Tensor) or target_cells.shape != shares.shape or \
            target_cells.dtype != torch.bool:
        raise ValueError(f"target_cells must be a (B,4) bool tensor with B={shares.shape[0]} "
                         "(make_focus_mosaics(...)['target_cells'])")
    target_cells = target_cells.to(shares.device)
    per_image = (shares * target_cells).sum(1).float()
    chance = float(target_cells.float().mean()) if target_cells.numel() else 0.5
    return {"focus": per_image.mean(), "per_image": per_image, "chance": chance}


__all__ = ["build_focus_mosaics", "focus", "make_focus_mosaics"]
