"""SESS (Tursun et al. 2023): an inner method's maps of windows slid over several scales, fused.

For each image: resize it so that its shorter side is each of the ``scales``; slide a square window
over every scaled image (stride ``step_size``; the last window of a row or column is shifted back
inside, so every window has the same size); score each window with the target's softmax
probability (its logit with ``use_softmax_scores=False``; negative scores count as 0); optionally
drop the lowest-scoring ``pre_filter_ratio`` of the windows; run the inner method on the others;
weight each window's map (inner map resized to the window, min-max normalised) by score / highest
score; paste it into a zero canvas of the scaled size and resize that to the image; fuse the pasted
maps by a per-pixel mean over the windows whose pasted value exceeds ``theta`` (``pool="mean"``) or
by a maximum (``pool="max"``); blur with an 11x11 Gaussian of sigma 5 (``smooth``).

The arithmetic is pytorch-grad-cam 1.5.7's ``SESS`` (tests/test_methods_wrappers.py), batched: all
windows of all images of a batch run through the model in chunks sized by ``memory_mb``. Resizing
the pasted canvas is done as two small matrix products per window (bilinear resizing is separable
and linear), never as a full-size canvas. Without pre-filtering the inner method's own forward
gives the windows' scores, so no extra scoring pass is run.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur, resize

from .base import target_scores
from .layers import LayerSpec
from .outputs import run_model
from .perturbation import PerturbationCAM
from .registry import register
from .wrappers import WrapperCAM, resize_matrix, resized_inner_maps

SCALE_STEP_RATIO = 2.0 / 7.0  # the paper's: scales grow by 64 px for a 224 px window
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


def window_starts(length: int, step: int, window: int) -> list[int]:
    """Window offsets along one axis: every ``step``, the last one shifted back so it ends at the edge."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def cut_windows(scaled: torch.Tensor, image: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                window: int) -> torch.Tensor:
    """(n,C,window,window): window i of image ``image[i]`` at (``ys[i]``, ``xs[i]``), one gather."""
    offsets = torch.arange(window, device=scaled.device)
    rows = (ys[:, None] + offsets)[:, None, :, None]
    cols = (xs[:, None] + offsets)[:, None, None, :]
    channels = torch.arange(scaled.shape[1], device=scaled.device)[None, :, None, None]
    return scaled[image[:, None, None, None], channels, rows, cols]


@register
class SESS(WrapperCAM, PerturbationCAM):
    """SESS (Tursun et al. 2023): the inner method's maps of sliding windows at several scales,
    weighted by each window's score and fused (see the module docstring).

    Defaults are pytorch-grad-cam's: 12 scales from the window size up in steps of 2/7 of it, a
    window of the image's shorter side, non-overlapping windows, no pre-filter, ``theta=0``, mean
    fusion, smoothing on. One-logit models score a window by its sigmoid, not a softmax over one class.
    """

    name = "sess"
    cost = "iterative"
    default_inner = "gradcam"
    label = "SESS: the inner method's maps of windows slid over several scales, weighted by their scores, fused"
    summary = f"{label} (sess(INNER); bare: gradcam)"
    paper = "Tursun et al. 2023"
    uses_gradients = True
    serves_output_targets = False  # a window's score is a class's; an output target is the whole image's

    def __init__(self, model: nn.Module, layer: LayerSpec = None, batch_size: int | None = None, *,
                 scales: list[int] | None = None, num_scales: int = 12, scale_step_ratio: float = SCALE_STEP_RATIO,
                 window_size: int | None = None, step_size: int | None = None, pre_filter_ratio: float = 0.0,
                 theta: float = 0.0, pool: str = "mean", smooth: bool = True, use_softmax_scores: bool = True,
                 **options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **options)
        if scales is not None and (isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales
                                   or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in scales)):
            raise ValueError(f"scales must be a non-empty list of positive pixel sizes (ints); got {scales!r}")
        for option, value in (("window_size", window_size), ("step_size", step_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{option} must be a positive int or None; got {value!r}")
        if num_scales < 1 or not scale_step_ratio > 0:
            raise ValueError(f"num_scales must be >= 1 and scale_step_ratio > 0; got {num_scales}, {scale_step_ratio}")
        if not 0.0 <= pre_filter_ratio < 1.0:
            raise ValueError(f"pre_filter_ratio must be in [0, 1); got {pre_filter_ratio}")
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max'; got {pool!r}")
        self.scales = list(scales) if scales is not None else None
        self.num_scales, self.scale_step_ratio = int(num_scales), float(scale_step_ratio)
        self.window_size, self.step_size = window_size, step_size
        self.pre_filter_ratio, self.theta, self.pool = float(pre_filter_ratio), float(theta), pool
        self.smooth, self.use_softmax_scores = bool(smooth), bool(use_softmax_scores)

    def scale_list(self, window: int) -> list[int]:
        """The shorter sides the image is resized to: ``scales``, else window + i * round(ratio * window)."""
        if self.scales is None:
            step = int(round(window * self.scale_step_ratio))
            return [window + step * i for i in range(self.num_scales)]
        small = [s for s in self.scales if s < window]
        if small:
            raise ValueError(f"every scale must be at least the window size {window}; got {small}")
        return self.scales

    def window_scores(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(n,) scores of windows: the target's probability (or logit), at least 0."""
        logits = logits.float()
        values = target_scores(logits, classes) if self.use_softmax_scores else \
            logits.gather(1, classes[:, None].to(logits.device))[:, 0]
        return values.clamp_min(0)

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, targets, the fused map at the images' size)."""
        forward = self.forward_targets(images, targets)
        batch, height, width = images.shape[0], int(images.shape[-2]), int(images.shape[-1])
        if self.smooth and min(height, width) <= BLUR_KERNEL // 2:
            raise ValueError(f"sess smooths with an {BLUR_KERNEL}x{BLUR_KERNEL} Gaussian, which needs images larger "
                             f"than {BLUR_KERNEL // 2} px; got {height}x{width} (or pass smooth=False)")
        window = self.window_size or min(height, width)
        grids = windows_of(height, width, self.scale_list(window), window, self.step_size or window, images.device)
        chunk = self.chunk_size(images.shape[1] * window * window * images.element_size())
        chosen = forward.chosen.to(images.device)
        total = sum(len(grid.ys) for grid in grids)
        if self.pre_filter_ratio > 0:  # score every window first (forward only), then run the best ones
            with torch.no_grad():
                scores = torch.cat([self._scores(images, grid, window, chunk, chosen) for grid in grids], dim=1)
            keep = total - int(total * self.pre_filter_ratio)
            kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(keep, dim=1).indices, True)
        else:  # every window: the inner method's forward scores them
            scores, kept = None, torch.ones(batch, total, dtype=torch.bool, device=images.device)
        runs = [self._inner_maps(images, grid, window, chunk, chosen, kept[:, grid.offset:grid.offset + len(grid.ys)])
                for grid in grids]
        if scores is None:
            scores = torch.zeros(batch, total, device=images.device)
            for grid, (pairs, run_scores, _) in zip(grids, runs):
                scores[pairs[:, 0], grid.offset + pairs[:, 1]] = run_scores.to(scores.device)
        best = scores.amax(dim=1, keepdim=True)
        weights = torch.where(best > 0, scores / torch.where(best > 0, best, torch.ones_like(best)),
                              torch.ones_like(scores))
        with torch.no_grad():
            fused = self._fuse((batch, height, width), grids, runs, weights, window, chunk)
            if self.smooth:
                fused = gaussian_blur(fused[:, None], [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])[:, 0]
        self.layers, self.layer = self.inner_method.layers, self.inner_method.layer
        return forward.logits, forward.chosen, fused

    def _scores(self, images: torch.Tensor, grid: Grid, window: int, chunk: int, chosen: torch.Tensor
                ) -> torch.Tensor:
        """(B, windows of this scale) scores, from plain forwards of the windows."""
        scaled, count = rescale(images, grid.size), len(grid.ys)

        def score(start: int, stop: int) -> torch.Tensor:
            flat = torch.arange(start, stop, device=images.device)
            image, index = torch.div(flat, count, rounding_mode="floor"), flat % count
            patches = cut_windows(scaled, image, grid.ys[index], grid.xs[index], window)
            return self.window_scores(run_model(self.model, patches, self.output), chosen[image])

        return self.chunked_scores(len(images) * count, chunk, score).view(len(images), count).to(images.device)

    def _inner_maps(self, images: torch.Tensor, grid: Grid, window: int, chunk: int, chosen: torch.Tensor,
                    kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inner method on this scale's kept windows: their (image, window) pairs (n, 2), scores
        (n,) from the inner method's own forward, and raw maps (n, h, w) at its layer's resolution."""
        pairs, shape = kept.nonzero(), {}
        if not len(pairs):  # every window of this scale was filtered out
            return pairs, torch.zeros(0, device=images.device), torch.zeros(0, 1, 1, device=images.device)
        scaled = rescale(images, grid.size)

        def run(start: int, stop: int) -> torch.Tensor:
            image, index = pairs[start:stop].unbind(1)
            patches = cut_windows(scaled, image, grid.ys[index], grid.xs[index], window)
            logits, _, raw = self.inner_method.run(patches, chosen[image])
            shape["raw"] = tuple(raw.shape[1:])
            scores = self.window_scores(logits, chosen[image]).to(raw.device)
            return torch.cat([scores[:, None], raw.flatten(1).float()], dim=1)  # one tensor per chunk

        packed = self.chunked_scores(len(pairs), chunk, run).to(images.device)
        raws = packed[:, 1:].reshape(len(pairs), *shape.get("raw", (window, window)))
        return pairs, packed[:, 0], raws

    def _fuse(self, shape: tuple[int, int, int], grids: list[Grid], runs: list[tuple[torch.Tensor, ...]],
              weights: torch.Tensor, window: int, chunk: int) -> torch.Tensor:
        """(B,H,W): every window's weighted map pasted at its place, resized to the image, fused."""
        batch, height, width = shape
        device = weights.device
        total = torch.zeros(shape, device=device)
        counts = torch.zeros(shape, device=device)
        offsets = torch.arange(window, device=device)
        for grid, (pairs, _, raws) in zip(grids, runs):
            rows = resize_matrix(grid.size[0], height, device).T  # (scaled h, H)
            cols = resize_matrix(grid.size[1], width, device).T  # (scaled w, W)
            for start in range(0, len(pairs), chunk):
                image, index = pairs[start:start + chunk].unbind(1)
                cams = resized_inner_maps(raws[start:start + chunk], (window, window))
                cams = cams * weights[image, grid.offset + index][:, None, None]
                left = rows[grid.ys[index][:, None] + offsets].transpose(1, 2)  # (n, H, window)
                right = cols[grid.xs[index][:, None] + offsets]  # (n, window, W)
                pasted = left @ cams @ right
                if self.pool == "max":
                    total.scatter_reduce_(0, image[:, None, None].expand_as(pasted), pasted, "amax")
                else:
                    above = pasted > self.theta
                    total.index_add_(0, image, torch.where(above, pasted, torch.zeros_like(pasted)))
                    counts.index_add_(0, image, above.float())
        if self.pool == "max":
            return total
        return torch.where(counts > 0, total / counts.clamp_min(1), torch.zeros_like(total))


class Grid(NamedTuple):
    """One scale's windows: the scaled image's (h, w), the windows' top-left corners, and the index
    of its first window among all scales'."""

    size: tuple[int, int]
    ys: torch.Tensor
    xs: torch.Tensor
    offset: int


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision's ``resize(img, short)`` size: the shorter side becomes ``short``, the aspect kept
    (the longer side truncated to an int)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def rescale(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The images at ``size``: bilinear, antialiased when shrinking (torchvision's resize, as the reference)."""
    return resize(images, list(size), antialias=True)


def windows_of(height: int, width: int, scales: list[int], window: int, step: int, device: torch.device
               ) -> list[Grid]:
    """Every scale's :class:`Grid` (rows of windows top to bottom, each left to right)."""
    grids, offset = [], 0
    for scale in scales:
        size = resized_size(height, width, scale)
        ys, xs = torch.meshgrid(torch.tensor(window_starts(size[0], step, window)),
                                torch.tensor(window_starts(size[1], step, window)), indexing="ij")
        grids.append(Grid(size, ys.flatten().to(device), xs.flatten().to(device), offset))
        offset += ys.numel()
    return grids
