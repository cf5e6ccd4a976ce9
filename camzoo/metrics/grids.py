"""Grid games: localisation where the evidence's place is known by construction.

* **Grid Pointing Game** (Rao, Böhle & Schiele, CVPR 2022, "Towards better understanding attribution
  methods"; re-implemented from the paper). N x N grids (N = 2, 3) whose cells are test images of
  *distinct* classes, each classified correctly with softmax confidence >= 0.99 on its own. The
  class of a cell is explained on the whole grid; the score of (grid, target cell) is the positive
  attribution inside the target cell over the total positive attribution, 0 when the total is
  <= 1e-7, after upsampling the map to the grid's size. Chance: 1/N². On the DiFull / DiPart
  wrappers (:mod:`camzoo.metrics.grid_models`) the same score is the ``difull_NxN`` /
  ``dipart_NxN`` metric.
* **Focus** (Arias-Duart et al., FUZZ-IEEE 2022): 2 x 2 mosaics holding two images of the target
  class and two of other classes; the score is the share of positive relevance on the two
  target-class cells. Chance: 0.5.

Why both: on a single-object image a class-agnostic map (Eigen-CAM) ties with a class-sensitive
one; with several classes in one input it cannot. Cells are laid out row-major (cell 0 top left,
cell N-1 top right); axes are (rows = height, columns = width) throughout (Quantus' Focus once
swapped them, issue 357). Everything is batched tensor code on the inputs' device.

Typical use::

    grids = build_grids(model, test_images, test_labels, grid_size=2, num_grids=500, seed=1)
    jobs = grid_targets(grids["labels"])                     # every cell of every grid
    maps = explain(model, grids["images"][jobs["grid"]], jobs["target"])   # (T,H,W)
    grid_pointing_game(maps, jobs["cell"], grid_size=2)["gridpg"]
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_maps
from ._model import eval_mode

TOTAL_EPSILON = 1e-7  # a map whose positive mass is at most this scores 0 (the paper's rule)
DEFAULT_THRESHOLD = 0.99


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_grid_size(grid_size: object) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, numbers.Integral) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2 (an N x N grid); got {grid_size!r}")
    return int(grid_size)


def _check_images_labels(images: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float (B,C,H,W) tensor (normalised); got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    labels = torch.as_tensor(labels, device=images.device)
    if labels.shape != (images.shape[0],) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices of shape ({images.shape[0]},); got "
                         f"{tuple(labels.shape)} {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("labels must be non-negative class indices")
    return images, labels.long()


# --- which images may become cells -------------------------------------------------------------
@torch.no_grad()
def confident_cells(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                    threshold: float = DEFAULT_THRESHOLD, batch_size: int = 256) -> dict[str, torch.Tensor | int]:
    """Which images the model classifies correctly with softmax confidence >= ``threshold``.

    Returns ``indices`` (M,) of the qualifying images, ``qualified`` (M), ``confidence`` (B,) the
    softmax probability of the predicted class, ``correct`` (B,) bool, ``per_class`` (K,) counts of
    qualifying images. The model runs in eval mode, ``batch_size`` images at a time.

    Args:
        model: the classifier, returning (B,K) logits; on the images' device.
        images: normalised (B,C,H,W) float images.
        labels: (B,) integer true classes (a tensor or a sequence), non-negative and < K.
        threshold: the least softmax probability of the (correct) predicted class, in [0,1].
        batch_size: images per forward pass (a positive int).

    Returns:
        ``indices``: (M,) int64 indices into ``images`` of the qualifying images, in order;
        ``qualified``: int, M; ``confidence``: (B,) float32 softmax probability of the predicted class;
        ``correct``: (B,) bool, the prediction equals the label; ``per_class``: (K,) int64 number of
        qualifying images of each class. Tensors on the images' device.

    Raises:
        ValueError: ``images`` not a float (B,C,H,W) tensor; ``labels`` not (B,) non-negative integers,
            or not below the model's K; ``threshold`` outside [0,1]; ``batch_size`` not a positive int;
            the model's output not (B,K) logits.
    """
    images, labels = _check_images_labels(images, labels)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1]; got {threshold!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    with eval_mode(model):
        logits = torch.cat([model(chunk) for chunk in images.split(batch_size)])
    if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        raise ValueError(f"the model must return (B, K) logits; got {tuple(logits.shape)}")
    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels go up to {int(labels.max())} but the model has {logits.shape[1]} classes")
    confidence, predicted = logits.float().softmax(1).max(1)
    correct = predicted == labels
    keep = correct & (confidence >= threshold)
    indices = keep.nonzero()[:, 0]
    return {"indices": indices, "qualified": int(indices.numel()), "confidence": confidence, "correct": correct,
            "per_class": torch.bincount(labels[indices], minlength=logits.shape[1])}


def _sample_cells(labels: torch.Tensor, count: int, cells: int, generator: torch.Generator,
                  distinct: bool = True, classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, cells) classes and image indices: for each row ``cells`` distinct classes drawn
    uniformly from those present (or the given ``classes`` per row), then one image of each class
    uniformly among that class's images. One sort and two gathers, no loop over grids."""
    device = labels.device
    present = torch.unique(labels)
    if classes is None:
        scores = torch.rand(count, present.numel(), generator=generator).to(device)
        classes = present[scores.argsort(1)[:, :cells]]
    order = labels.argsort(stable=True)
    counts = torch.bincount(labels, minlength=int(present.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    pick = (torch.rand(classes.shape, generator=generator).to(device) * counts[classes]).long()
    pick = torch.minimum(pick, counts[classes] - 1)
    return classes, order[starts[classes] + pick]


def _tile(images: torch.Tensor, sources: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Images (M,C,h,w) and (G, N²) indices into them -> grids (G,C,N*h,N*w), cells row-major."""
    count = sources.shape[0]
    n = grid_size
    _, channels, h, w = images.shape
    cells = images[sources.flatten()].reshape(count, n, n, channels, h, w)
    return cells.permute(0, 3, 1, 4, 2, 5).reshape(count, channels, n * h, n * w)


def make_grids(images: torch.Tensor, labels: torch.Tensor | Sequence[int], grid_size: int = 2,
               num_grids: int = 500, seed: int = 1) -> dict[str, torch.Tensor]:
    """``num_grids`` N x N grids of cells of distinct classes from a pool of (qualifying) images.

    Each grid draws N² distinct classes uniformly from the classes present in ``labels``, and for each
    class one image uniformly among its images (seeded; an image may appear in several grids, never
    twice in one). Returns ``images`` (G,C,N*H,N*W), ``labels`` (G,N²) and ``sources`` (G,N²) indices
    into the pool, cells row-major.

    Args:
        images: the pool, normalised (M,C,H,W) float images (e.g. those :func:`confident_cells` kept).
        labels: (M,) non-negative integer class of each pool image.
        grid_size: N, cells per side (an int >= 2).
        num_grids: G, how many grids (a positive int).
        seed: seeds the draws (a local generator: the global RNG is untouched).

    Returns:
        ``images``: (G,C,N*H,N*W) the grids; ``labels``: (G,N²) int64 class of each cell; ``sources``:
        (G,N²) int64 index into ``images`` of each cell's image. Cells row-major (cell 0 top left).

    Raises:
        ValueError: ``grid_size`` not an int >= 2; ``images`` not a float (M,C,H,W) tensor; ``labels``
            not (M,) non-negative integers; ``num_grids`` not a positive int; fewer than N² distinct
            classes in ``labels``.
    """
    n = _check_grid_size(grid_size)
    images, labels = _check_images_labels(images, labels)
    if isinstance(num_grids, bool) or not isinstance(num_grids, int) or num_grids < 1:
        raise ValueError(f"num_grids must be a positive int; got {num_grids!r}")
    classes_present = int(torch.unique(labels).numel())
    if classes_present < n * n:
        raise ValueError(
            f"a {n}x{n} grid needs {n * n} distinct classes, but the {labels.numel()} qualifying images cover "
            f"only {classes_present}; lower the confidence threshold, pass more images, or use a smaller grid"
        )
    generator = torch.Generator().manual_seed(int(seed))
    classes, sources = _sample_cells(labels, num_grids, n * n, generator)
    return {"images": _tile(images, sources, n), "labels": classes, "sources": sources}


def build_grids(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int], grid_size: int = 2,
                num_grids: int = 500, threshold: float = DEFAULT_THRESHOLD, seed: int = 1,
                batch_size: int = 256) -> dict[str, torch.Tensor | int | float]:
    """The Grid Pointing Game's grids: :func:`confident_cells`, then :func:`make_grids` on the survivors.

    Returns make_grids' ``images``/``labels`` plus ``sources`` as indices into the given ``images``,
    ``qualified`` (how many images qualified), ``per_class`` (qualifying images per class),
    ``num_grids``, ``grid_size`` and ``threshold``. Defaults follow the authors' public setting
    (2x2, 500 grids, seed 1, confidence >= 0.99).

    Args:
        model: the classifier, returning (B,K) logits; on the images' device.
        images: normalised (B,C,H,W) float images, e.g. the test set.
        labels: (B,) integer true classes.
        grid_size: N, cells per side (an int >= 2).
        num_grids: G, how many grids (a positive int).
        threshold: the least softmax confidence of a correctly classified image, in [0,1].
        seed: seeds the grids' draws (see :func:`make_grids`).
        batch_size: images per forward pass when selecting the cells.

    Returns:
        ``images``: (G,C,N*H,N*W) the grids; ``labels``: (G,N²) class of each cell; ``sources``: (G,N²)
        index into the given ``images`` of each cell's image; ``qualified``: int, how many images
        qualified; ``per_class``: (K,) qualifying images per class; ``num_grids``: int G; ``grid_size``:
        int N; ``threshold``: float.

    Raises:
        ValueError: invalid arguments (as :func:`confident_cells` and :func:`make_grids` check them);
            the qualifying images cover fewer than N² classes.
    """
    n = _check_grid_size(grid_size)
    cells = confident_cells(model, images, labels, threshold, batch_size)
    indices = cells["indices"]
    assert isinstance(indices, torch.Tensor)
    classes_ok = int((cells["per_class"] > 0).sum())  # type: ignore[operator]
    if classes_ok < n * n:
        raise ValueError(
            f"only {cells['qualified']} of {images.shape[0]} images qualified (classified correctly with "
            f"confidence >= {threshold}), from {classes_ok} classes; a {n}x{n} grid needs {n * n} classes. "
            "Train the model longer, pass more images, lower threshold=, or use a smaller grid"
        )
    grids = make_grids(images[indices], torch.as_tensor(labels, device=images.device)[indices], n, num_grids, seed)
    return {**grids, "sources": indices[grids["sources"]], "qualified": cells["qualified"],
            "per_class": cells["per_class"], "num_grids": num_grids, "grid_size": n, "threshold": float(threshold)}


def grid_targets(grid_labels: torch.Tensor, cells: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """The explanation jobs of a set of grids: one per (grid, cell), grid-major.

    ``cells``: which cells to explain (default: all; the paper's DiFull/DiPart figures use the top-left
    and bottom-right cells, ``[0, N²-1]``). Returns ``grid`` (T,) indices into the grids, ``cell`` (T,)
    and ``target`` (T,) the class in that cell.

    Args:
        grid_labels: (G,N²) class of each cell, ``build_grids(...)['labels']``.
        cells: row-major cell indices in [0, N²) to explain in every grid; None: all N² cells.

    Returns:
        ``grid``: (T,) int64 index of the grid; ``cell``: (T,) int64 cell index; ``target``: (T,) the
        class in that cell. T = G x len(cells), grid-major (every chosen cell of grid 0, then of grid 1,
        ...); on the labels' device.

    Raises:
        ValueError: ``grid_labels`` is not a 2-D tensor; ``cells`` is empty or has an index outside
            [0, N²).
    """
    if not isinstance(grid_labels, torch.Tensor) or grid_labels.dim() != 2:
        raise ValueError("grid_labels must be a (G, N²) tensor (build_grids(...)['labels'])")
    count, total = grid_labels.shape
    chosen = torch.arange(total, device=grid_labels.device) if cells is None else \
        torch.as_tensor(list(cells), dtype=torch.long, device=grid_labels.device)
    if chosen.numel() == 0 or bool(((chosen < 0) | (chosen >= total)).any()):
        raise ValueError(f"cells must be a non-empty list of cell indices in [0, {total}); got {cells!r}")
    grid = torch.arange(count, device=grid_labels.device).repeat_interleave(chosen.numel())
    cell = chosen.repeat(count)
    return {"grid": grid, "cell": cell, "target": grid_labels[grid, cell]}


def cell_masks(cells: torch.Tensor | Sequence[int], grid_size: int, height: int, width: int,
               device: torch.device | str | None = None) -> torch.Tensor:
    """(B,H,W) bool masks of the given cells (row-major) of an N x N grid of H x W pixels: the ground
    truth to give the ``oracle`` control (``ground_truth={"mask": ...}``) on grid games.

    Args:
        cells: (B,) row-major cell indices in [0, N²), a tensor or a sequence.
        grid_size: N, cells per side (an int >= 2).
        height: H, the grid's height in pixels, a multiple of N.
        width: W, the grid's width in pixels, a multiple of N.
        device: where to build the masks; None: the device of ``cells`` (CPU for a sequence).

    Returns:
        (B,H,W) bool tensor, True on the pixels of each image's cell.

    Raises:
        ValueError: ``grid_size`` not an int >= 2; H or W not a multiple of N; ``cells`` not 1-D or
            with an index outside [0, N²).
    """
    n = _check_grid_size(grid_size)
    if height % n or width % n:
        raise ValueError(f"a {height}x{width} grid cannot be cut into {n}x{n} equal cells")
    cells = torch.as_tensor(cells, device=device).long()
    if cells.dim() != 1 or (cells.numel() and (int(cells.min()) < 0 or int(cells.max()) >= n * n)):
        raise ValueError(f"cells must be (B,) cell indices in [0, {n * n})")
    rows = torch.arange(height, device=cells.device) // (height // n)
    cols = torch.arange(width, device=cells.device) // (width // n)
    owner = rows[:, None] * n + cols[None, :]                     # (H,W) cell index of each pixel
    return owner[None] == cells[:, None, None]


# --- scores --------------------------------------------------------------------------------
def cell_shares(maps: torch.Tensor, grid_size: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, N²) share of each cell in the map's total positive attribution; rows of zeros where the
    total is <= 1e-7. ``maps`` (B,h,w), any finite values (the positive part counts); with ``size``
    they are first upsampled bilinearly (align_corners=False) to it, e.g. the grid's size, as the
    paper does. The (upsampled) map's sides must be multiples of N."""
    n = _check_grid_size(grid_size)
    maps = check_maps(maps, "maps", unit_range=False)
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    batch, height, width = maps.shape
    if height % n or width % n:
        raise ValueError(f"maps of {height}x{width} cannot be cut into {n}x{n} equal cells; pass size= (the "
                         f"grid's size, a multiple of {n}) to upsample them first")
    positive = maps.to(_compute_dtype(maps.device)).clamp_min(0)
    mass = positive.reshape(batch, n, height // n, n, width // n).sum(dim=(2, 4)).reshape(batch, n * n)
    total = mass.sum(1, keepdim=True)
    return torch.where(total > TOTAL_EPSILON, mass / total.clamp_min(TOTAL_EPSILON), torch.zeros_like(mass))


def grid_pointing_game(maps: torch.Tensor, target_cells: torch.Tensor | Sequence[int], grid_size: int,
                       size: tuple[int, int] | None = None) -> dict[str, torch.Tensor | float | int]:
    """Grid Pointing Game score: positive attribution in the target cell / total positive attribution.

    Args:
        maps: (B,h,w) one map per (grid, target cell) job (``grid_targets``), any finite values.
        target_cells: (B,) the explained cell of each map, row-major in [0, N²).
        grid_size: N.
        size: upsample the maps bilinearly to this (H,W) first (the grid's size; the paper's protocol);
            None scores them at their own resolution (e.g. a CAM's raw map whose sides are multiples of N).

    Returns:
        ``gridpg`` (mean, 0-d tensor), ``per_image`` (B,) float32, ``chance`` (1/N², float) and
        ``grid_size`` (int N). Higher is better, range [0,1]; an all-zero map scores 0, a constant
        map 1/N².

    Raises:
        TypeError: ``maps`` is not a float tensor.
        ValueError: ``grid_size`` not an int >= 2; ``maps`` not (B,h,w), empty or not finite; the
            (upsampled) maps' sides not multiples of N; ``target_cells`` not (B,) integers in [0, N²).
    """
    n = _check_grid_size(grid_size)
    shares = cell_shares(maps, n, size)
    cells = torch.as_tensor(target_cells, device=shares.device)
    if cells.shape != (shares.shape[0],) or cells.is_floating_point():
        raise ValueError(f"target_cells must be (B,) integer cell indices with B={shares.shape[0]}; got "
                         f"{tuple(cells.shape)} {cells.dtype}")
    if cells.numel() and (int(cells.min()) < 0 or int(cells.max()) >= n * n):
        raise ValueError(f"target_cells must lie in [0, {n * n}) for a {n}x{n} grid")
    per_image = shares.gather(1, cells.long()[:, None])[:, 0].float()
    return {"gridpg": per_image.mean(), "per_image": per_image, "chance": 1.0 / (n * n), "grid_size": n}


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


GAMES = ("gridpg", "difull", "dipart")


def play_grid_game(model: nn.Module, grids: dict, explain: Any, game: str = "gridpg",
                   cells: Sequence[int] | None = None, *, layer: Any = None, batch_size: int | None = None,
                   method_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Explain every (grid, cell) job of ``grids`` (``build_grids``) and score it: one metric cell.

    game: "gridpg" (the model on the whole grid), "difull" or "dipart" (the model wrapped,
    :mod:`camzoo.metrics.grid_models`; the target is class c *in cell p*). explain: a CAM method
    name, or ``explain(model, images, targets) -> maps (B,H,W)``. With a method name the score follows
    the paper exactly: the raw map (``Explanation.raw``) upsampled bilinearly to the grid's size, its
    positive part; ``score_raw`` is the same at the map's own resolution (None when its sides are
    not multiples of N). A callable's maps are scored as given (``score_raw`` None). The target cell's
    mask goes to ``camzoo.explain`` as ground truth, so the ``oracle`` control runs (others ignore it).

    Returns ``score`` (mean), ``per_image`` (T,), ``score_raw``, ``per_image_raw``, ``jobs``
    (``grid_targets``), ``chance``, ``game``, ``grid_size`` and ``num_grids``. The name of the table
    column is ``f"{game}_{N}x{N}"`` (``gridpg_2x2``, ``difull_2x2``, ...).

    Args:
        model: the trained classifier (wrapped, not modified, for "difull"/"dipart").
        grids: the dict :func:`build_grids` or :func:`make_grids` returns (``images`` and ``labels``).
        explain: a CAM method name, or ``explain(model, images, targets) -> maps (B,H,W)``.
        game: "gridpg", "difull" or "dipart".
        cells: which cells of each grid to explain (see :func:`grid_targets`); None: all of them.
        layer: with a method name, the layer it explains (None: the method's default; the wrappers'
            ``cam_hook`` for "difull"/"dipart").
        batch_size: with a method name, images per pass (None: the method's default).
        method_options: with a method name, its options (checked against the method's signature).

    Returns:
        ``score``: mean Grid Pointing Game score (0-d tensor); ``per_image``: (T,) one score per job;
        ``score_raw`` and ``per_image_raw``: the same at the raw map's resolution, or None;
        ``jobs``: :func:`grid_targets`' dict; ``chance``: 1/N²; ``game``: str; ``grid_size``: int N;
        ``num_grids``: int G.

    Raises:
        ValueError: an unknown ``game``; ``grids`` without ``images``/``labels`` or whose labels are
            not (G,N²) with N >= 2; invalid ``cells``; a model the DiFull/DiPart wrappers cannot split
            (see :func:`~camzoo.metrics.grid_models.grid_wrapper`); maps the score rejects.
        TypeError: ``explain`` is neither a method name nor a callable.
    """
    from .grid_models import grid_wrapper

    if game not in GAMES:
        raise ValueError(f"game must be one of {GAMES}; got {game!r}")
    if not isinstance(grids, Mapping) or "images" not in grids or "labels" not in grids:
        raise ValueError("grids must be the dict build_grids / make_grids returns (with 'images' and 'labels')")
    images, labels = grids["images"], grids["labels"]
    n = _check_grid_size(int(round(labels.shape[1] ** 0.5)))
    if n * n != labels.shape[1]:
        raise ValueError(f"grids['labels'] must be (G, N²); got {tuple(labels.shape)}")
    jobs = grid_targets(labels, cells)
    net = model if game == "gridpg" else grid_wrapper(game, model, n, cell_size=images.shape[-1] // n)
    targets = jobs["target"] if game == "gridpg" else net.output_index(jobs["cell"], jobs["target"])
    inputs = images[jobs["grid"]]
    size = (int(images.shape[-2]), int(images.shape[-1]))
    raw_result = None
    if isinstance(explain, str):
        from .class_sensitivity import run_method

        truth = {"mask": cell_masks(jobs["cell"], n, size[0], size[1], device=inputs.device)}  # for `oracle`
        explanation = run_method(net, inputs, explain, targets, layer, batch_size, method_options, truth)
        raw = explanation.raw
        result = grid_pointing_game(raw, jobs["cell"], n, size=size)
        if raw.shape[-2] % n == 0 and raw.shape[-1] % n == 0:
            raw_result = grid_pointing_game(raw, jobs["cell"], n)
    elif callable(explain):
        result = grid_pointing_game(explain(net, inputs, targets), jobs["cell"], n, size=size)
    else:
        raise TypeError(f"explain must be a method name or a callable; got {type(explain).__name__}")
    return {"score": result["gridpg"], "per_image": result["per_image"],
            "score_raw": None if raw_result is None else raw_result["gridpg"],
            "per_image_raw": None if raw_result is None else raw_result["per_image"],
            "jobs": jobs, "chance": 1.0 / (n * n), "game": game, "grid_size": n, "num_grids": int(labels.shape[0])}


__all__ = ["build_focus_mosaics", "build_grids", "cell_masks", "cell_shares", "confident_cells", "focus",
           "GAMES", "grid_pointing_game", "grid_targets", "make_focus_mosaics", "make_grids", "play_grid_game"]
