"""Localization metrics: does the map point at the object?

Pointing game (TorchRay protocol), energy-based pointing game (Score-CAM), relevance rank accuracy,
and PxAP (pixel average precision); MaxBoxAccV1/V2 (Choe et al. 2020, clovaai/wsolevaluation) live in
``wsol.py`` and share this module's threshold list.
Ground truth is given as bool masks (B,H,W) or NaN-padded boxes (B,K,4) in pixel-edge coordinates;
the exact protocols, and where we differ from the reference code, are in docs/metrics.md.

PxAP is *not* an average of per-image numbers: it returns per-image histograms, and
``pxap_from_histograms`` reduces the concatenation over many batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_maps, object_masks

CAM_THRESHOLDS = 100  # wsolevaluation's cam_curve_interval 0.01: thresholds 0.00, 0.01, ..., 0.99
IOU_THRESHOLDS = (0.3, 0.5, 0.7)  # MaxBoxAccV2 (wsolevaluation's iou_threshold_list 30 50 70)


def _tolerance_pixels(tolerance: float, shape: tuple[int, int],
                      original_size: int | tuple[int, int] | None) -> float:
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels; got {tolerance}")
    if original_size is None:
        return float(tolerance)
    if isinstance(original_size, int):
        original_size = (original_size, original_size)
    orig_h, orig_w = original_size
    if orig_h <= 0 or orig_w <= 0:
        raise ValueError(f"original_size must be positive; got {original_size}")
    return float(tolerance) * ((shape[0] * shape[1]) / (orig_h * orig_w)) ** 0.5


def pointing_game(maps: torch.Tensor, masks: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
                  tolerance: float = 15.0, original_size: int | tuple[int, int] | None = None,
                  labels: torch.Tensor | Sequence[int] | None = None,
                  num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """Pointing game (Zhang et al. 2016) as TorchRay evaluates it.

    The map's maximum — the first in raster order when several pixels tie, as TorchRay's
    ``torch.argmax`` over the flattened map picks it — is a hit when an object pixel lies strictly
    closer than ``tolerance`` pixels to it (the point itself always counts). ``tolerance`` is in
    pixels of the maps; pass ``original_size`` (H0,W0) of the images the tolerance was meant for and
    it is scaled to the maps' size (TorchRay: 15 px at the original image size). A constant map (all
    zero included) has no maximum and is a miss (TorchRay would test its top-left pixel). Masks are
    used when given, else the union of the boxes.

    TorchRay's benchmark reports the *mean of per-class accuracies*: pass each map's class in
    ``labels`` (B,) for ``pointing_game_class_mean`` (see ``pointing_game_class_mean``).

    Args:
        maps: saliency (B,H,W) float in [0,1], finite.
        masks: object masks (B,H,W), bool or 0/1 valued, the maps' shape; take precedence over ``boxes``.
        boxes: (B,K,4) x0,y0,x1,y1 in pixel-edge coordinates, NaN rows as padding; used (their union,
            rasterised by ``boxes_to_masks``) when ``masks`` is None. One of the two is required, and
            every image needs at least one object pixel.
        tolerance: hit radius in pixels (>= 0; a pixel strictly closer than this counts), at the maps'
            size unless ``original_size`` is given.
        original_size: (H0,W0), or one int for both, of the images ``tolerance`` is meant for; the
            radius is scaled by ``sqrt(H*W / (H0*W0))``. None: ``tolerance`` is in map pixels.
        labels: (B,) integer class of each map; adds the per-class mean (``pointing_game_class_mean``).
        num_classes: passed to ``pointing_game_class_mean`` (classes 0..num_classes-1); needs ``labels``.

    Returns:
        ``pointing_game``: scalar float (hit rate in [0,1], higher is better); ``hits``: (B,) bool;
        ``points``: (B,2) int64 (row, column) of each map's maximum. With ``labels`` also
        ``pointing_game_class_mean`` (scalar), ``classes`` (C,) and ``class_accuracy`` (C,) as
        ``pointing_game_class_mean`` returns them. All on the maps' device.

    Raises:
        TypeError: ``maps`` (or ``masks``/``boxes``) is not a tensor, or ``maps`` is not float; labels
            that are not integers.
        ValueError: a wrong shape, NaN/inf or values outside [0,1] in ``maps``; no or empty ground
            truth; ``tolerance < 0``; a non-positive ``original_size``; ``num_classes`` without
            ``labels``; labels out of range.
    """
    maps = check_maps(maps)
    regions = object_masks(maps, masks, boxes, "pointing_game")
    batch, height, width = maps.shape
    radius = _tolerance_pixels(tolerance, (height, width), original_size)
    flat = maps.flatten(1)
    index = flat.argmax(1)  # the first maximum
    row, col = index // width, index % width
    rows = torch.arange(height, device=maps.device, dtype=torch.float32)
    cols = torch.arange(width, device=maps.device, dtype=torch.float32)
    distance2 = (rows[None, :, None] - row[:, None, None]) ** 2 + (cols[None, None, :] - col[:, None, None]) ** 2
    accept = (distance2 < radius ** 2) | (distance2 == 0)
    informative = flat.amax(1) > flat.amin(1)
    hits = (regions & accept).flatten(1).any(1) & informative
    result = {"pointing_game": hits.float().mean(), "hits": hits, "points": torch.stack([row, col], 1)}
    if labels is not None:
        result.update(pointing_game_class_mean(hits, labels, num_classes))
    elif num_classes is not None:
        raise ValueError("num_classes needs labels: pass each map's class as labels=(B,)")
    return result


def pointing_game_class_mean(hits: torch.Tensor, labels: torch.Tensor | Sequence[int],
                             num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """TorchRay's pointing-game score: the mean over classes of each class's hit rate.

    Why: the plain hit rate weights classes by their frequency; TorchRay's ``PointingGame.accuracy``
    (and the tables of the EBP/TorchRay papers) average per-class accuracies. ``hits`` (N,) bool and
    ``labels`` (N,) class of each pointing (one per image-class pair), e.g. concatenated over batches.
    By default the mean runs over the classes present in ``labels``; with ``num_classes`` it runs
    over all classes 0..num_classes-1 and a class never seen counts 0, exactly as TorchRay's
    ``hits / (hits + misses).clamp(min=1)`` does.

    Args:
        hits: (N,) bool, whether each pointing hit (``pointing_game(...)["hits"]``).
        labels: (N,) integer class (>= 0) of each pointing; a tensor or a sequence of ints.
        num_classes: None: average over the classes present in ``labels``; else over all classes
            0..num_classes-1, unseen classes counting 0 (labels must then be < num_classes).

    Returns:
        ``pointing_game_class_mean``: scalar float32 in [0,1] (higher is better); ``classes``: (C,)
        int64, the classes averaged over (sorted); ``class_accuracy``: (C,) float32 hit rate of each.
        On ``hits``' device.

    Raises:
        ValueError: ``hits`` is not a (N,) tensor; ``labels`` is not (N,); a label < 0 or
            >= ``num_classes``.
        TypeError: ``labels`` holds floats or bools.
    """
    if not isinstance(hits, torch.Tensor) or hits.dim() != 1:
        raise ValueError(f"hits must be a (N,) bool tensor; got {getattr(hits, 'shape', type(hits).__name__)}")
    labels = torch.as_tensor(labels, device=hits.device)
    if labels.dim() != 1 or labels.shape[0] != hits.shape[0]:
        raise ValueError(f"labels must be (N,) with N={hits.shape[0]} (one class per map); got shape "
                         f"{tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class indices; got {labels.dtype}")
    labels = labels.long()
    if hits.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0; got {int(labels.min())}")
    if num_classes is not None:
        if hits.numel() and int(labels.max()) >= num_classes:
            raise ValueError(f"labels reach {int(labels.max())} but num_classes={num_classes}")
        classes = torch.arange(num_classes, device=hits.device)
        position = labels
    else:
        classes, position = torch.unique(labels, return_inverse=True)
    count = torch.zeros(classes.numel(), dtype=torch.float64, device=hits.device)
    hit = torch.zeros_like(count)
    count.index_add_(0, position, torch.ones_like(hits, dtype=torch.float64))
    hit.index_add_(0, position, hits.double())
    class_accuracy = (hit / count.clamp(min=1)).float()
    return {"pointing_game_class_mean": class_accuracy.mean(), "classes": classes,
            "class_accuracy": class_accuracy}


ENERGY_VARIANTS = ("mask", "box")


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor | None = None,
                         boxes: torch.Tensor | None = None, variant: str = "auto") -> dict[str, torch.Tensor | str]:
    """Energy-based pointing game: the share of the map's mass on the object. Two variants exist and
    give different numbers, so the result names the one computed:

    - ``"box"``: Score-CAM's (Wang et al. 2020) energy inside the object's bounding box(es) — the
      union of ``boxes``, or without boxes the bounding box of each mask;
    - ``"mask"``: inside the object's pixel mask — Quantus' ``RelevanceMassAccuracy``; needs masks.

    ``"auto"`` (default) takes the mask when masks are given, else the boxes. An all-zero map has no
    mass and scores 0 (Quantus: NaN).

    Args:
        maps: saliency (B,H,W) float in [0,1], finite.
        masks: object masks (B,H,W), bool or 0/1 valued, the maps' shape.
        boxes: (B,K,4) x0,y0,x1,y1 in pixel-edge coordinates, NaN rows as padding. With ``"box"``
            the boxes are used when given, else each mask's bounding box.
        variant: ``"auto"``, ``"mask"`` or ``"box"`` (see above).

    Returns:
        ``energy_pointing_game``: scalar float32 (mean over images in [0,1], higher is better); the same
        number under ``energy_pointing_game_mask`` or ``energy_pointing_game_box``; ``per_image``: (B,)
        float32 share of each map's mass on the object; ``variant``: the str "mask" or "box" computed.

    Raises:
        TypeError: ``maps`` is not a float tensor, or ``masks``/``boxes`` is not a tensor.
        ValueError: an unknown ``variant``; ``"mask"`` without masks; no or empty ground truth; a wrong
            shape, NaN/inf or values outside [0,1] in ``maps``.
    """
    maps = check_maps(maps)
    if variant not in ("auto",) + ENERGY_VARIANTS:
        raise ValueError(f"variant must be 'auto', 'mask' or 'box'; got {variant!r}")
    if variant == "auto":
        variant = "mask" if masks is not None else "box"
    if variant == "mask":
        if masks is None:
            raise ValueError("energy_pointing_game(variant='mask') needs masks=(B,H,W); with boxes only "
                             "use variant='box' (Score-CAM's protocol)")
        regions = object_masks(maps, masks, None, "energy_pointing_game")
    elif boxes is not None:
        regions = object_masks(maps, None, boxes, "energy_pointing_game")
    else:  # the bounding box of each mask
        mask = object_masks(maps, masks, None, "energy_pointing_game")
        any_row, any_col = mask.any(2), mask.any(1)  # (B,H), (B,W)
        rows_between = (any_row.cumsum(1) > 0) & (any_row.flip(1).cumsum(1).flip(1) > 0)
        cols_between = (any_col.cumsum(1) > 0) & (any_col.flip(1).cumsum(1).flip(1) > 0)
        regions = rows_between[:, :, None] & cols_between[:, None, :]
    total = maps.flatten(1).sum(1, dtype=torch.float64)
    inside = (maps * regions).flatten(1).sum(1, dtype=torch.float64)
    per_image = torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total)).float()
    score = per_image.mean()
    return {"energy_pointing_game": score, f"energy_pointing_game_{variant}": score,
            "per_image": per_image, "variant": variant}


def relevance_rank_accuracy(maps: torch.Tensor, masks: torch.Tensor | None = None,
                            boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Relevance rank accuracy (Arras et al. 2022): of the K most salient pixels, K the object's size,
    the share that lies on the object. Ties are broken by raster order, so a constant map scores the
    share of the first K raster pixels on the object. In [0,1], higher is better.

    Args:
        maps: saliency (B,H,W) float in [0,1], finite.
        masks: object masks (B,H,W), bool or 0/1 valued, the maps' shape; take precedence over ``boxes``.
        boxes: (B,K,4) x0,y0,x1,y1 in pixel-edge coordinates, NaN rows as padding, used (their union)
            when ``masks`` is None. One of the two is required; every image needs an object pixel.

    Returns:
        ``relevance_rank_accuracy``: scalar float32, the mean over images; ``per_image``: (B,) float32.

    Raises:
        TypeError: ``maps`` is not a float tensor, or ``masks``/``boxes`` is not a tensor.
        ValueError: a wrong shape, NaN/inf or values outside [0,1] in ``maps``; no or empty ground truth.
    """
    maps = check_maps(maps)
    regions = object_masks(maps, masks, boxes, "relevance_rank_accuracy")
    flat_regions = regions.flatten(1)
    order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices
    size = flat_regions.sum(1)
    on_object = flat_regions.gather(1, order)
    top = torch.arange(order.shape[1], device=maps.device)[None, :] < size[:, None]
    per_image = (on_object & top).sum(1).float() / size.float()
    return {"relevance_rank_accuracy": per_image.mean(), "per_image": per_image}


def _threshold_list(count: int, device: torch.device) -> torch.Tensor:
    """``np.arange(0, 1, 1/count)`` bit for bit (k * step, not k / count: they differ in the last bit)."""
    return torch.arange(count, dtype=torch.float64, device=device) * (1.0 / count)


def _pxap_bin_edges(bins: int, device: torch.device) -> torch.Tensor:
    """wsolevaluation's edges: 0, 1/bins, ..., (bins-1)/bins, 1, 2, 3 (value 1.0 gets its own bin)."""
    steps = _threshold_list(bins, device)
    return torch.cat([steps, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, device=device)])


def pxap(maps: torch.Tensor, masks: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
         bins: int = CAM_THRESHOLDS) -> dict[str, torch.Tensor]:
    """Pixel-wise average precision (PxAP, Choe et al. 2020) of the maps against object masks.

    Map values are histogrammed at object and background pixels over the wsolevaluation bins
    (thresholds 0, 0.01, ..., 0.99, 1); precision/recall at every threshold give the area under the
    precision-recall curve. ``pxap`` pools all pixels of the batch (the reference's dataset-level
    number); ``per_image`` is the same computed image by image. In [0,1], higher is better; a map
    unrelated to the object scores about the object's area fraction. Histograms come back for pooling
    over batches with ``pxap_from_histograms(pos.sum(0), neg.sum(0))``.

    PxAP needs pixel masks: with only boxes (CUB, ImageNet) it raises; use MaxBoxAcc there.

    Args:
        maps: saliency (B,H,W) float in [0,1], finite.
        masks: object masks (B,H,W), bool or 0/1 valued, the maps' shape; required.
        boxes: not scored; only makes the error without masks say that the ground truth has boxes only.
        bins: thresholds 0, 1/bins, ..., (bins-1)/bins (the reference's 100); a value of exactly 1.0
            gets its own bin, so there are ``bins + 2`` histogram bins.

    Returns:
        ``pxap``: scalar float32 over all pixels of the batch; ``per_image``: (B,) float32;
        ``hist_positive`` / ``hist_negative``: (B, bins+2) float64 pixel counts per bin at object /
        background pixels.

    Raises:
        TypeError: ``maps`` is not a float tensor, or ``masks`` is not a tensor.
        ValueError: no ``masks``; an image with no object pixel; a wrong shape, NaN/inf or values
            outside [0,1] in ``maps``.
    """
    maps = check_maps(maps)
    if masks is None:
        raise ValueError(
            "pxap needs pixel masks (masks=(B,H,W) bool); this ground truth has "
            + ("only boxes. Box-only datasets are scored with max_box_acc; rasterising the boxes "
               "(camzoo.metrics.boxes_to_masks) gives a different, box-level number, so do that only "
               "knowingly" if boxes is not None else "none")
        )
    regions = object_masks(maps, masks, None, "pxap")
    edges = _pxap_bin_edges(int(bins), maps.device)
    count_bins = edges.numel() - 1
    values = maps.flatten(1).double().clamp(0, 1)
    index = (torch.bucketize(values, edges, right=True) - 1).clamp(0, count_bins - 1)
    index = index + count_bins * torch.arange(maps.shape[0], device=maps.device)[:, None]
    flat_regions = regions.flatten(1)
    size = maps.shape[0] * count_bins
    positive = torch.zeros(size, dtype=torch.float64, device=maps.device)
    negative = torch.zeros(size, dtype=torch.float64, device=maps.device)
    positive.index_add_(0, index[flat_regions], torch.ones_like(values[flat_regions]))
    negative.index_add_(0, index[~flat_regions], torch.ones_like(values[~flat_regions]))
    positive, negative = positive.view(-1, count_bins), negative.view(-1, count_bins)
    return {
        "pxap": pxap_from_histograms(positive.sum(0), negative.sum(0)),
        "per_image": pxap_from_histograms(positive, negative),
        "hist_positive": positive,
        "hist_negative": negative,
    }


def pxap_from_histograms(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Average precision from score histograms (..., bins) at object / background pixels.

    Follows wsolevaluation's ``MaskEvaluator.compute``: thresholds from high to low, precision times
    the recall increment, thresholds with no positive prediction skipped.

    Args:
        positive: (..., bins) counts of object pixels per score bin, lowest bin first (``pxap``'s
            ``hist_positive``; sum over images, dim 0, to pool batches).
        negative: (..., bins) counts of background pixels per bin, the same shape.

    Returns:
        (...,) float32 average precision in [0,1] for each leading index (a scalar for 1-D histograms).

    Raises:
        ValueError: a histogram with no object pixel.
    """
    tp = positive.flip(-1).cumsum(-1)
    fp = negative.flip(-1).cumsum(-1)
    total_positive = positive.sum(-1, keepdim=True)
    if bool((total_positive <= 0).any()):
        raise ValueError("pxap: no object pixel in the ground truth")
    predicted = tp + fp
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = tp / total_positive
    gain = precision[..., 1:] * recall.diff(dim=-1)
    return torch.where(predicted[..., 1:] > 0, gain, torch.zeros_like(gain)).sum(-1).float()


__all__ = [
    "CAM_THRESHOLDS",
    "ENERGY_VARIANTS",
    "IOU_THRESHOLDS",
    "energy_pointing_game",
    "pointing_game",
    "pointing_game_class_mean",
    "pxap",
    "pxap_from_histograms",
    "relevance_rank_accuracy",
]
