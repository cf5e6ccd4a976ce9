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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_maps
from ..modelutil import select_output
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
        logits = torch.cat([select_output(model(chunk)) for chunk in images.split(batch_size)])  # as explain reads it
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


__all__ = ["build_grids", "cell_masks", "cell_shares", "confident_cells", "grid_pointing_game", "grid_targets",
           "make_grids"]
