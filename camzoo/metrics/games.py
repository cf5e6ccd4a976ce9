"""The one perturbation-game engine: deletion/insertion, MoRF/LeRF (and any later pixel game) are
configurations of it.

A game changes an image's pixels in the order of a ranking, a growing number at each point of a
curve, and records the model's score of a target class at every point. Every (image, point) pair is
one *job*; jobs are laid out image-major (per image: each curve's points in turn) and go through the
model ``chunk_size`` at a time under ``no_grad`` in eval mode, so a chunk touches a contiguous range
of images, whose source images (original, substrate, blur) are made once and reused by the next
chunk. An input is two gathers and one ``where`` against per-pixel ranks, whatever its mix of curves
and points; a mask-dependent substrate (ROAD's imputation) is an ``impute`` function instead.
Why one engine: the job layout, chunking and argument checks were written twice, and their checks
had drifted apart.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._model import eval_mode, target_probabilities

# (lo, hi) -> source images (hi - lo, C, H, W) for images[lo:hi]; source 0 is always the originals
SourceMaker = Callable[[int, int], torch.Tensor]
# (originals (n,C,H,W), changed (n,H,W) bool, image indices (n,)) -> inputs (n,C,H,W)
Imputer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Curve:
    """One curve of a game.

    ``order``: which ranking (index into ``ranks``) decides the pixels changed; ``start``: the
    source an image starts as (0 = the originals); ``end``: the source changed pixels take, or
    None for the game's ``impute``; ``points``: which points k to play (point k changes the first
    ``counts[k]`` pixels).
    """

    order: int
    start: int
    end: int | None
    points: tuple[int, ...]


def check_game_arguments(steps: object, fraction: object, chunk_size: object, pixels: int) -> tuple[int, float, int]:
    """The checks every game shares; returns (steps, fraction, chunk_size) as plain numbers."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < float(fraction) <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (the share of pixels the curves cover); got {fraction!r}")
    evaluated = pixel_budget(float(fraction), pixels)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= evaluated:
        raise ValueError(f"steps must be an integer in [1, round(fraction * H*W) = {evaluated}]; got {steps!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    return int(steps), float(fraction), int(chunk_size)


def pixel_budget(fraction: float, pixels: int) -> int:
    """Pixels changed at a game's last point: ``round(fraction * H*W)``, at least 1."""
    return max(1, round(fraction * pixels))


def point_counts(steps: int, budget: int, device: torch.device) -> torch.Tensor:
    """Pixels changed at each point k = 0..steps: ``floor(k * budget / steps)``."""
    return torch.arange(steps + 1, device=device) * budget // steps


class SlidingSources:
    """Per-image sources for a window of images that only moves forward.

    Chunks of jobs walk through the images in order and often share an image with the previous
    chunk; each image's sources are computed once, in batches, and dropped once passed.
    ``get`` returns a view (sources, images, C, H, W).
    """

    def __init__(self, makers: Sequence[SourceMaker]) -> None:
        self.makers = list(makers)
        self.lo = self.hi = 0
        self.stacked: torch.Tensor | None = None

    def _make(self, lo: int, hi: int) -> torch.Tensor:
        return torch.stack([make(lo, hi) for make in self.makers])

    def get(self, lo: int, hi: int) -> torch.Tensor:
        """Sources for images[lo:hi]; ``lo`` and ``hi`` never decrease between calls."""
        if self.stacked is None or lo >= self.hi:  # nothing to reuse
            self.stacked, self.hi = self._make(lo, hi), hi
        else:
            kept = self.stacked[:, lo - self.lo:]
            if hi > self.hi:
                kept, self.hi = torch.cat([kept, self._make(self.hi, hi)], dim=1), hi
            self.stacked = kept
        self.lo = lo  # invariant: self.stacked covers images[self.lo:self.hi]
        return self.stacked[:, : hi - lo]


def play(
    model: nn.Module,
    images: torch.Tensor,
    ranks: torch.Tensor,
    counts: torch.Tensor,
    curves: Sequence[Curve],
    sources: Sequence[SourceMaker],
    targets: torch.Tensor,
    chunk_size: int,
    softmax: bool = True,
    autocast: bool = False,
    impute: Imputer | None = None,
) -> torch.Tensor:
    """Play ``curves`` on every image: the target's score at each of their points, (B, total points),
    the curves' points side by side in the order given.

    ``ranks``: (orders, B, H*W) the rank of every pixel in each ordering (0 = changed first);
    ``counts``: (steps+1,) pixels changed at each point; ``sources``: makers of the source images
    (source 0 = the originals); ``targets``: (B,) the classes scored, checked against the model's
    outputs on the first chunk. The caller has checked the arguments (``check_game_arguments``).
    """
    batch, _, height, width = images.shape
    device = images.device
    if any(curve.end is None for curve in curves) and impute is None:
        raise ValueError("a curve without an end source needs impute=")
    orders, starts, ends, points = [], [], [], []
    for curve in curves:
        orders += [curve.order] * len(curve.points)
        starts += [curve.start] * len(curve.points)
        ends += [-1 if curve.end is None else curve.end] * len(curve.points)
        points += list(curve.points)
    per_image = len(points)
    scores = torch.empty(batch * per_image, device=device)
    if per_image == 0:
        return scores.view(batch, 0)

    def repeat(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device).repeat(batch)

    job_image = torch.arange(batch, device=device).repeat_interleave(per_image)
    job_order, job_start, job_end = repeat(orders), repeat(starts), repeat(ends)
    job_count = counts[torch.tensor(points, dtype=torch.long, device=device)].repeat(batch).int()
    imputes = -1 in ends
    if imputes and set(ends) != {-1}:
        raise ValueError("a game's curves either all impute or none does")
    window = SlidingSources(sources)

    with torch.no_grad(), eval_mode(model):
        for start in range(0, batch * per_image, chunk_size):
            stop = min(start + chunk_size, batch * per_image)
            image_idx = job_image[start:stop]
            changed = ranks[job_order[start:stop], image_idx] < job_count[start:stop, None]
            changed = changed.view(-1, height, width)
            # jobs are image-major, so a chunk touches a contiguous range of images (computed on the
            # host: reading it from the device would stall the queue once per chunk)
            lo, hi = start // per_image, (stop - 1) // per_image + 1
            local = image_idx - lo
            stacked = window.get(lo, hi)
            begin = stacked[job_start[start:stop], local]
            if imputes:  # one game's curves all impute or none does (MoRF/LeRF with ROAD)
                inputs = impute(begin, changed, image_idx)
            else:
                inputs = torch.where(changed[:, None], stacked[job_end[start:stop], local], begin)
            scores[start:stop] = target_probabilities(model, inputs, targets[image_idx], softmax, autocast,
                                                      all_targets=targets if start == 0 else None)
    return scores.view(batch, per_image)


__all__ = ["Curve", "SlidingSources", "check_game_arguments", "pixel_budget", "play", "point_counts"]
