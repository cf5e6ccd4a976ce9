"""Causal metrics: deletion / insertion (RISE) and Average Drop / Increase in Confidence (Grad-CAM++).

Why: localisation asks whether a map points at the object; causal metrics ask whether the pixels the
map ranks first are the ones the *model* needs. Both query the model on perturbed copies of each
image, so they are the expensive metrics: every (image, step) pair goes through the model as part of
large batched forwards on the model's device, ``chunk_size`` inputs at a time, under ``no_grad``.
The protocol details (kernel, padding, step counts, tie-breaking) are in docs/metrics.md.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_images, check_maps, check_targets
from ._model import check_same_device, eval_mode, target_probabilities

Substrate = Union[float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]

RISE_BLUR = (11, 5.0)  # the official RISE notebook: gkern(klen=11, nsig=5)
RISE_STEPS = 224  # the official RISE notebook: 224 px per step at 224x224 -> 224 steps, 225 points


def rise_blur_kernel(kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The 2-D blur kernel (k,k) of RISE's ``gkern``, exactly.

    RISE builds it as ``scipy.ndimage.gaussian_filter`` of a k x k delta. SciPy's filter has radius
    ``int(4 * sigma + 0.5)`` (20 for sigma 5, wider than the 11 x 11 array) and mode 'reflect', so the
    Gaussian's tails fold back into the array: it is not a truncated Gaussian. We reproduce that
    folding in closed form (the filter is separable, so the 2-D kernel is an outer product).
    """
    if kernel_size < 1 or sigma <= 0:
        raise ValueError(f"blur needs kernel_size >= 1 and sigma > 0; got {kernel_size}, {sigma}")
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    centre = kernel_size // 2
    positions = torch.arange(kernel_size)[:, None] + offsets.long()[None, :]  # (k, 2r+1)
    period = positions.remainder(2 * kernel_size)  # 'reflect' = symmetric extension, period 2k
    folded = torch.where(period < kernel_size, period, 2 * kernel_size - 1 - period)
    kernel_1d = (weights[None, :] * (folded == centre)).sum(1)
    return torch.outer(kernel_1d, kernel_1d).float()


def rise_blur(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion start: each channel convolved with ``rise_blur_kernel``, zero padding.

    Zero padding (as RISE's ``conv2d(x, kern, padding=klen//2)``) pulls the border towards 0, which in
    normalised space is the dataset's mean colour.
    """
    channels = images.shape[1]
    kernel = rise_blur_kernel(kernel_size, sigma).to(images.device, images.dtype)
    weight = kernel.expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(images, weight, padding=kernel_size // 2, groups=channels)


def saliency_rank(maps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel (B,H*W) in the order of decreasing saliency; 0 = most salient.

    Ties are broken by pixel index (raster order), via a stable sort: the same map always gives the
    same order, on every device. (RISE's ``np.flip(np.argsort(...))`` breaks ties the other way round,
    by descending index; with continuous maps ties are rare.)
    """
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Normalised trapezoidal area under each curve (B,S+1), x spaced evenly over [0,1] (RISE's ``auc``)."""
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / steps


def _substrate_for(substrate: Substrate, images: torch.Tensor, lo: int, hi: int, name: str) -> torch.Tensor:
    """The substrate images for ``images[lo:hi]`` from a constant, a tensor or a callable."""
    chunk = images[lo:hi]
    if callable(substrate):
        result = substrate(chunk)
        if not isinstance(result, torch.Tensor) or result.shape != chunk.shape:
            raise ValueError(f"{name} callable must return a tensor shaped like its input {tuple(chunk.shape)}")
        return result.to(chunk.dtype)
    if isinstance(substrate, torch.Tensor):
        substrate = substrate.to(chunk.device, chunk.dtype)
        if substrate.dim() == 4:
            if substrate.shape != images.shape:
                raise ValueError(f"a (B,C,H,W) {name} must match the images {tuple(images.shape)}")
            return substrate[lo:hi]
        try:
            return substrate.expand_as(chunk)
        except RuntimeError:
            raise ValueError(
                f"{name} tensor {tuple(substrate.shape)} does not broadcast to the images (C,H,W) "
                f"{tuple(chunk.shape[1:])}"
            ) from None
    return torch.full_like(chunk, float(substrate))


class _SlidingSources:
    """Per-image sources (original, substrates) for a window of images that only moves forward.

    Chunks of jobs walk through the images in order and often share an image with the previous
    chunk; each image's blur / substrate is computed once, in batches, and dropped once passed.
    ``get`` returns a view (sources, images, C, H, W).
    """

    def __init__(self, makers: list[Callable[[int, int], torch.Tensor]]) -> None:
        self.makers = makers
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


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    steps: int = RISE_STEPS,
    substrate: Substrate = 0.0,
    blur: tuple[int, float] | Callable[[torch.Tensor], torch.Tensor] = RISE_BLUR,
    chunk_size: int = 64,
    autocast: bool = False,
    softmax: bool = True,
    modes: Sequence[str] = ("deletion", "insertion"),
) -> dict[str, torch.Tensor]:
    """RISE's deletion and insertion games for a batch, as batched forwards.

    Pixels are ranked by decreasing saliency (ties by pixel index). Point k of a curve (k = 0..steps)
    has the first ``floor(k * H * W / steps)`` pixels changed: deletion replaces them (all channels)
    with ``substrate`` (default 0 = the mean colour in normalised space); insertion starts from
    ``blur(images)`` (default RISE's 11 x 11, sigma 5 Gaussian) and restores the original pixels.
    The score at each point is the softmax probability of ``targets`` (raw model output when
    ``softmax=False``). AUC is the trapezoidal area with x in [0,1].

    Args:
        model: classifier returning logits (B,C); put in eval mode for the call, its modes restored.
        images: normalised images (B,C,H,W) on the model's device.
        maps: saliency (B,H,W); only the order of the values matters (any finite values).
        targets: class whose score is tracked, (B,).
        steps: number of chunks; 224 reproduces RISE's 224 px per step at 224 x 224.
        substrate: deletion substrate: a constant, a tensor broadcastable to (C,H,W) or (B,C,H,W),
            or a callable images -> images.
        blur: insertion start: (kernel_size, sigma) for RISE's blur, or a callable images -> images.
        chunk_size: (image, step) inputs per forward pass; bounds the memory.
        autocast: mixed precision (float16 on CUDA, bfloat16 on CPU).
        modes: which games to play, any of "deletion", "insertion".

    Returns:
        ``deletion`` / ``insertion``: AUC per image (B,) in [0,1] — lower deletion and higher insertion
        are better; ``deletion_curve`` / ``insertion_curve``: (B, steps+1); ``fraction``: (steps+1,)
        the fraction of pixels changed at each point.
    """
    maps = check_maps(maps, unit_range=False)
    images = check_images(images, maps)
    check_same_device(model, images)
    batch, _, height, width = images.shape
    pixels = height * width
    targets = check_targets(targets, batch, device=images.device)
    modes = tuple(modes)
    unknown = set(modes) - {"deletion", "insertion"}
    if not modes or unknown:
        raise ValueError(f"modes must be a non-empty subset of ('deletion', 'insertion'); got {modes}")
    if not 1 <= int(steps) <= pixels:
        raise ValueError(f"steps must be in [1, H*W={pixels}]; got {steps}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    steps, chunk_size = int(steps), int(chunk_size)
    if callable(blur):
        blur_fn = blur
    else:
        kernel_size, sigma = blur
        blur_fn = lambda x: rise_blur(x, int(kernel_size), float(sigma))  # noqa: E731

    device = images.device
    rank = saliency_rank(maps).int()  # int32 halves the bytes gathered per input
    counts = torch.arange(steps + 1, device=device) * pixels // steps  # pixels changed at point k

    # One job per model input. The original image is deletion's first point and insertion's last,
    # so it is evaluated once: 2 * steps + 1 forwards per image when both games are played.
    kinds, points = [0], [0]  # kind 0 = deletion (or the original), kind 1 = insertion
    if "deletion" in modes:
        kinds += [0] * steps
        points += list(range(1, steps + 1))
    if "insertion" in modes:
        kinds += [1] * steps
        points += list(range(steps))
    per_image = len(kinds)
    job_image = torch.arange(batch, device=device).repeat_interleave(per_image)
    job_kind = torch.tensor(kinds, device=device).repeat(batch)
    job_count = counts[torch.tensor(points, device=device)].repeat(batch).int()
    scores = torch.empty(batch * per_image, device=device)

    makers = [lambda lo, hi: images[lo:hi]]
    if "deletion" in modes:
        makers.append(lambda lo, hi: _substrate_for(substrate, images, lo, hi, "substrate"))
    if "insertion" in modes:
        makers.append(lambda lo, hi: _substrate_for(blur_fn, images, lo, hi, "blur"))
    source_cache = _SlidingSources(makers)

    with torch.no_grad(), eval_mode(model):
        for start in range(0, batch * per_image, chunk_size):
            stop = min(start + chunk_size, batch * per_image)
            image_idx, kind, count = job_image[start:stop], job_kind[start:stop], job_count[start:stop]
            # jobs are image-major, so a chunk touches a contiguous range of images (computed on the
            # host: reading it from the device would stall the queue once per chunk)
            lo, hi = start // per_image, (stop - 1) // per_image + 1
            local = image_idx - lo
            # The few images this chunk touches, with their substrates: (sources, images, C, H, W).
            # Each input is then two gathers and one where, whatever its mix of games and steps.
            sources = source_cache.get(lo, hi)
            is_deletion = kind == 0
            start_source = torch.where(is_deletion, 0, sources.shape[0] - 1)
            end_source = torch.where(is_deletion, 1 if "deletion" in modes else 0, 0)
            changed = (rank[image_idx] < count[:, None]).view(-1, 1, height, width)
            inputs = torch.where(changed, sources[end_source, local], sources[start_source, local])
            scores[start:stop] = target_probabilities(model, inputs, targets[image_idx], softmax, autocast,
                                                      all_targets=targets if start == 0 else None)

    scores = scores.view(batch, per_image)
    original = scores[:, :1]
    result: dict[str, torch.Tensor] = {"fraction": counts.float() / pixels}
    offset = 1
    if "deletion" in modes:
        curve = torch.cat([original, scores[:, offset:offset + steps]], dim=1)
        result["deletion_curve"], result["deletion"] = curve, auc(curve)
        offset += steps
    if "insertion" in modes:
        curve = torch.cat([scores[:, offset:offset + steps], original], dim=1)
        result["insertion_curve"], result["insertion"] = curve, auc(curve)
    return result


def average_drop_increase(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    baseline: float | torch.Tensor = 0.0,
    chunk_size: int = 64,
    autocast: bool = False,
    softmax: bool = True,
) -> dict[str, torch.Tensor]:
    """Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++, 2018).

    The "explanation map" of an image x is ``baseline + map * (x - baseline)`` (with the default
    baseline 0 in normalised space: x * map, masked-out pixels go to the mean colour). With Y the
    target's softmax score on x and O the score on the explanation map:

    - ``average_drop`` = 100 * mean(max(0, Y - O) / Y), in [0, 100], lower is better;
    - ``increase_in_confidence`` = 100 * mean(O > Y), in [0, 100], higher is better.

    Per-image values come back too (``drop`` in [0,1], ``increase`` bool, ``score`` Y,
    ``explanation_score`` O) so that results can be pooled over batches.
    """
    maps = check_maps(maps)
    images = check_images(images, maps)
    check_same_device(model, images)
    batch = images.shape[0]
    targets = check_targets(targets, batch, device=images.device)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.to(images.device, images.dtype)
        if baseline.dim() == 1:
            baseline = baseline[:, None, None]
    full = torch.empty(batch, device=images.device)
    masked = torch.empty(batch, device=images.device)
    with torch.no_grad(), eval_mode(model):
        for start in range(0, batch, int(chunk_size)):
            part = slice(start, min(start + int(chunk_size), batch))
            x, m, t = images[part], maps[part, None], targets[part]
            first = targets if start == 0 else None
            full[part] = target_probabilities(model, x, t, softmax, autocast, all_targets=first)
            explanation = baseline + m * (x - baseline)
            masked[part] = target_probabilities(model, explanation, t, softmax, autocast)
    drop = (full - masked).clamp(min=0) / full.clamp(min=torch.finfo(full.dtype).tiny)
    increase = masked > full
    return {
        "average_drop": 100 * drop.mean(),
        "increase_in_confidence": 100 * increase.float().mean(),
        "drop": drop,
        "increase": increase,
        "score": full,
        "explanation_score": masked,
    }


__all__ = [
    "RISE_BLUR",
    "RISE_STEPS",
    "auc",
    "average_drop_increase",
    "deletion_insertion",
    "rise_blur",
    "rise_blur_kernel",
    "saliency_rank",
]
