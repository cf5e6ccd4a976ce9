"""Cross-seed stability: do two models of the same kind explain the same image the same way?

Per image: IoU and Dice of the maps binarised at the LFI-CAM threshold (map * 255 > 100), Spearman
rank correlation, Pearson correlation and SSIM (scikit-image's defaults). ``pairwise_stability``
runs every pair of seeds and reports mean and std over pairs. All batched in torch on the maps'
device; ``lfi_compat=True`` reproduces the official LFI-CAM IoU/Dice script (see docs/metrics.md).
"""

from __future__ import annotations

from itertools import combinations
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..maps import minmax_normalise
from ._checks import check_maps

LFI_THRESHOLD = 100 / 255  # the LFI-CAM paper binarises maps at 100 on the 0..255 scale
STABILITY_METRICS = ("iou", "dice", "spearman", "pearson", "ssim")


def _pair(maps_a: torch.Tensor, maps_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    maps_a, maps_b = check_maps(maps_a, "maps_a"), check_maps(maps_b, "maps_b")
    if maps_a.shape != maps_b.shape:
        raise ValueError(
            f"maps_a {tuple(maps_a.shape)} and maps_b {tuple(maps_b.shape)} must have the same shape: "
            "the maps of the same images from two models"
        )
    if maps_a.device != maps_b.device:
        raise ValueError(f"maps_a is on {maps_a.device} but maps_b on {maps_b.device}")
    return maps_a, maps_b


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def pearson(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per image (B,) in [-1,1].

    Degenerate maps: both constant -> 1 (they agree: there is nothing to disagree on); exactly one
    constant -> 0 (no association can be measured). SciPy would return NaN for both.

    Args:
        maps_a: maps (B,H,W) float in [0,1], finite, from one model.
        maps_b: maps of the same images (same shape and device) from the other model.

    Returns:
        (B,) float32 correlation of each image's two maps over its pixels (computed in float64, float32 on MPS).

    Raises:
        TypeError: a map batch is not a float tensor.
        ValueError: a wrong shape, NaN/inf or values outside [0,1]; the two batches differ in shape or device.
    """
    maps_a, maps_b = _pair(maps_a, maps_b)
    return _pearson_rows(maps_a.flatten(1), maps_b.flatten(1))


def _pearson_rows(flat_a: torch.Tensor, flat_b: torch.Tensor) -> torch.Tensor:
    flat_a, flat_b = (m.to(_compute_dtype(m.device)) for m in (flat_a, flat_b))
    centred_a = flat_a - flat_a.mean(1, keepdim=True)
    centred_b = flat_b - flat_b.mean(1, keepdim=True)
    covariance = (centred_a * centred_b).sum(1)
    scale = (centred_a.square().sum(1) * centred_b.square().sum(1)).sqrt()
    constant_a = flat_a.amax(1) == flat_a.amin(1)  # exact test: a centred constant is not always 0
    constant_b = flat_b.amax(1) == flat_b.amin(1)
    value = (covariance / scale.clamp(min=torch.finfo(scale.dtype).tiny)).clamp(-1, 1)
    value = torch.where(constant_a | constant_b, (constant_a & constant_b).to(value.dtype), value)
    return value.float()


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) along dim 1 of (B,N), ties given their average rank (scipy's ``rankdata``)."""
    batch, count = values.shape
    ordered, order = values.sort(dim=1, stable=True)
    starts_group = torch.ones_like(ordered, dtype=torch.bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts_group.cumsum(1) - 1 + torch.arange(batch, device=values.device)[:, None] * count
    position = torch.arange(count, device=values.device, dtype=torch.float64).expand(batch, count)
    first = torch.zeros(batch * count, dtype=torch.float64, device=values.device)
    last = torch.zeros_like(first)
    first.scatter_reduce_(0, group.flatten(), position.flatten(), reduce="amin", include_self=False)
    last.scatter_reduce_(0, group.flatten(), position.flatten(), reduce="amax", include_self=False)
    sorted_ranks = ((first + last) / 2 + 1)[group]
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def spearman(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per image (B,): Pearson of average ranks; degenerate maps as ``pearson``.

    Args:
        maps_a: maps (B,H,W) float in [0,1], finite, from one model.
        maps_b: maps of the same images (same shape and device) from the other model.

    Returns:
        (B,) float32 in [-1,1]: Pearson correlation of the pixels' average ranks (ties share their mean rank).

    Raises:
        TypeError: a map batch is not a float tensor.
        ValueError: a wrong shape, NaN/inf or values outside [0,1]; the two batches differ in shape or device.
    """
    maps_a, maps_b = _pair(maps_a, maps_b)
    return _spearman(maps_a, maps_b)


def _spearman(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    ranks_a = average_ranks(maps_a.flatten(1).to(_compute_dtype(maps_a.device)))
    ranks_b = average_ranks(maps_b.flatten(1).to(_compute_dtype(maps_b.device)))
    return _pearson_rows(ranks_a, ranks_b)


def ssim(maps_a: torch.Tensor, maps_b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image (B,), equal to ``skimage.metrics.structural_similarity(a, b, data_range=1)``.

    scikit-image's defaults: 7x7 uniform window, sample covariance (N/(N-1)), K1 = 0.01, K2 = 0.03,
    mean over the pixels at least 3 px from the border (where the window fits). Two identical maps,
    constant ones included, score 1.

    Args:
        maps_a: maps (B,H,W) float in [0,1], finite, from one model.
        maps_b: maps of the same images (same shape and device) from the other model.
            Both at least 7x7.
        data_range: the value range that scales SSIM's constants C1 = (0.01 * data_range)^2 and
            C2 = (0.03 * data_range)^2; 1 for maps in [0,1].

    Returns:
        (B,) float32 mean SSIM of each image's two maps, in [-1,1].

    Raises:
        TypeError: a map batch is not a float tensor.
        ValueError: a wrong shape, NaN/inf or values outside [0,1]; the two batches differ in shape or device.
        ValueError: maps smaller than 7x7.
    """
    maps_a, maps_b = _pair(maps_a, maps_b)
    return _ssim(maps_a, maps_b, data_range)


def _ssim(maps_a: torch.Tensor, maps_b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    batch, height, width = maps_a.shape
    window = 7
    if height < window or width < window:
        raise ValueError(f"ssim needs maps of at least {window}x{window} pixels; got {height}x{width}")
    dtype = _compute_dtype(maps_a.device)
    a, b = maps_a[:, None].to(dtype), maps_b[:, None].to(dtype)
    stacked = torch.cat([a, b, a * a, b * b, a * b], 1)
    mean_a, mean_b, mean_aa, mean_bb, mean_ab = F.avg_pool2d(stacked, window, stride=1).unbind(1)
    cov_norm = window * window / (window * window - 1)
    var_a = cov_norm * (mean_aa - mean_a * mean_a)
    var_b = cov_norm * (mean_bb - mean_b * mean_b)
    cov_ab = cov_norm * (mean_ab - mean_a * mean_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * cov_ab + c2)) / (
        (mean_a * mean_a + mean_b * mean_b + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(1).float()


def binarise(maps: torch.Tensor, threshold: float = LFI_THRESHOLD) -> torch.Tensor:
    """The LFI-CAM binarisation ``map * 255 > threshold * 255`` (threshold in [0,1])."""
    return maps * 255 > threshold * 255


def _overlap(mask_a: torch.Tensor, mask_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-image IoU and Dice (B,); two empty masks agree perfectly (1)."""
    intersection = (mask_a & mask_b).flatten(1).sum(1).double()
    total = mask_a.flatten(1).sum(1).double() + mask_b.flatten(1).sum(1).double()
    union = total - intersection
    iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    dice = torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.ones_like(total))
    return iou.float(), dice.float()


def _lfi_binarise(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """What the official script thresholds: the map written as an 8-bit PNG, read back, min-max
    stretched, then ``np.uint8(256 * map)`` — whose brightest pixels (256) wrap round to 0."""
    dtype = _compute_dtype(maps.device)
    png = torch.round(maps.to(dtype) * 255).clamp(0, 255)  # cv2.imwrite rounds half to even, as torch
    low = png.flatten(1).amin(1)[:, None, None]
    spread = png.flatten(1).amax(1)[:, None, None] - low
    stretched = torch.where(spread > 0, (png - low) / spread.clamp(min=1), torch.zeros_like(png))
    wrapped = torch.floor(256 * stretched).remainder(256)
    return wrapped > round(threshold * 255)


def _lfi_overlap(mask_a: torch.Tensor, mask_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official script's IoU and Dice: per image *row* of the HxWx3 array, +1e-6 smoothing,
    averaged over rows. Rows empty in both give IoU 1 and Dice 2 (its smoothing quirk)."""
    smooth = 1e-6
    channels = 3  # the PNG is read back as 3 identical channels; the sums run over them too
    intersection = channels * (mask_a & mask_b).sum(2).double()  # (B,H)
    total = channels * (mask_a.sum(2).double() + mask_b.sum(2).double())
    iou = (intersection + smooth) / (total - intersection + smooth)
    dice = 2 * (intersection + smooth) / (total + smooth)
    return iou.mean(1).float(), dice.mean(1).float()


def lfi_script_maps(raw: torch.Tensor, size: tuple[int, int], unit_scale: bool) -> torch.Tensor:
    """The maps the official LFI-CAM test loop hands its IoU script, before the 8-bit round trip.

    ``raw`` (B,h,w) at the layer's resolution is resized bilinearly to ``size`` (``cv2.resize``'s
    default INTER_LINEAR equals torch's ``align_corners=False`` when upscaling) and *not*
    re-normalised: the script multiplies the resized attention by 255, writes it as an 8-bit PNG and
    only then stretches it, so a map spanning [0.2, 0.8] keeps its coarser quantisation. Why it
    matters: ABN's sigmoid attention rarely spans [0,1]. ``unit_scale=False`` (maps with no fixed
    scale, e.g. Grad-CAM's) min-max normalises at the layer's resolution first, as CAM tools do
    before resizing. Pass the result to ``stability(..., lfi_compat=True)``.

    Args:
        raw: (B,h,w) maps at the layer's resolution, any real dtype (computed in float32), any device.
        size: (H,W) of the output, the images' size.
        unit_scale: True: ``raw`` already has a fixed [0,1] scale and is resized as is; False: each map
            is min-max normalised to [0,1] first (a constant map becomes zeros).

    Returns:
        (B,H,W) float32 on ``raw``'s device, not re-normalised after resizing.

    Raises:
        ValueError: ``raw`` is not 3-D.
    """
    if raw.ndim != 3:
        raise ValueError(f"raw maps must have shape (B,h,w); got {tuple(raw.shape)}")
    maps = raw.float() if unit_scale else minmax_normalise(raw.float())
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def stability(maps_a: torch.Tensor, maps_b: torch.Tensor, threshold: float = LFI_THRESHOLD,
              lfi_compat: bool = False, chunk_size: int = 256) -> dict[str, torch.Tensor]:
    """Agreement of two map batches (B,H,W) of the same images, per image.

    ``lfi_compat=True`` replaces IoU/Dice by the official LFI-CAM script's row-wise numbers (8-bit
    round trip and uint8 wrap included; its Dice can reach 2 on rows empty in both maps) so that the
    paper's figures can be compared like for like.

    Args:
        maps_a: maps (B,H,W) float in [0,1], finite, from one model.
        maps_b: maps of the same images (same shape and device) from the other model.
            At least 7x7 (SSIM's window).
        threshold: binarisation threshold for IoU/Dice in [0,1), a fraction of the 0..255 scale: a pixel is
            foreground when ``map * 255 > threshold * 255`` (default 100/255, LFI-CAM's; with ``lfi_compat``
            the script's stretched 8-bit value is compared with ``round(threshold * 255)``).
        lfi_compat: the official LFI-CAM script's IoU/Dice instead of whole-image ones (see above).
        chunk_size: images per chunk (>= 1); bounds the float64 intermediates.

    Returns:
        (B,) float32 tensors, all higher-is-better with 1 for identical maps: ``iou`` and ``dice`` in [0,1]
        of the maps binarised at ``threshold`` (whole image; two empty masks score 1), ``spearman`` and
        ``pearson`` in [-1,1], ``ssim`` in [-1,1].

    Raises:
        TypeError: a map batch is not a float tensor.
        ValueError: a wrong shape, NaN/inf or values outside [0,1]; the two batches differ in shape or device.
        ValueError: ``threshold`` outside [0,1); ``chunk_size < 1``; maps smaller than 7x7.
    """
    maps_a, maps_b = _pair(maps_a, maps_b)
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0,1) (fraction of the map's range); got {threshold}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in STABILITY_METRICS}
    for start in range(0, maps_a.shape[0], int(chunk_size)):  # bounds the float64 intermediates
        a, b = maps_a[start:start + int(chunk_size)], maps_b[start:start + int(chunk_size)]
        if lfi_compat:
            iou, dice = _lfi_overlap(_lfi_binarise(a, threshold), _lfi_binarise(b, threshold))
        else:
            iou, dice = _overlap(binarise(a, threshold), binarise(b, threshold))
        for name, value in (("iou", iou), ("dice", dice), ("spearman", _spearman(a, b)),
                            ("pearson", _pearson_rows(a.flatten(1), b.flatten(1))),
                            ("ssim", _ssim(a, b))):
            parts[name].append(value)
    return {name: torch.cat(values) for name, values in parts.items()}


def pairwise_stability(map_sets: Sequence[torch.Tensor], threshold: float = LFI_THRESHOLD,
                       lfi_compat: bool = False, chunk_size: int = 256) -> dict[str, object]:
    """``stability`` over every pair of map sets (one set per seed/model, same images, same order).

    The std is the population std over pairs (ddof 0): pairs of seeds are not independent samples, and
    one pair gives 0.

    Args:
        map_sets: a list or tuple of at least two map batches (B,H,W) in [0,1], one per seed/model, all
            of the same shape and on the same device.
        threshold: as in ``stability``.
        lfi_compat: as in ``stability``.
        chunk_size: as in ``stability``.

    Returns:
        ``pairs``: list of the P index pairs (i, j), i < j, in ``itertools.combinations`` order;
        ``per_image``: {metric: (P,B)}; ``per_pair``: {metric: (P,) mean over images}; ``mean`` and
        ``std``: {metric: scalar over pairs}. Metrics: iou, dice, spearman, pearson, ssim.

    Raises:
        ValueError: fewer than two map sets, or not a list/tuple; anything ``stability`` raises.
        TypeError: a map set is not a float tensor.
    """
    if not isinstance(map_sets, (list, tuple)) or len(map_sets) < 2:
        raise ValueError("pairwise_stability needs a list of at least two map sets (one per seed)")
    pairs = list(combinations(range(len(map_sets)), 2))
    per_image = {name: [] for name in STABILITY_METRICS}
    for i, j in pairs:
        result = stability(map_sets[i], map_sets[j], threshold, lfi_compat, chunk_size)
        for name in STABILITY_METRICS:
            per_image[name].append(result[name])
    stacked = {name: torch.stack(values) for name, values in per_image.items()}
    per_pair = {name: values.mean(1) for name, values in stacked.items()}
    return {
        "pairs": pairs,
        "per_image": stacked,
        "per_pair": per_pair,
        "mean": {name: values.mean() for name, values in per_pair.items()},
        "std": {name: values.std(correction=0) for name, values in per_pair.items()},
    }


__all__ = [
    "LFI_THRESHOLD",
    "STABILITY_METRICS",
    "average_ranks",
    "binarise",
    "pairwise_stability",
    "pearson",
    "spearman",
    "ssim",
    "stability",
]
