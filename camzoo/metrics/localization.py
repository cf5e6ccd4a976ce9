"""Localization metrics: does the map point at the object?

Pointing game (TorchRay protocol), energy-based pointing game (Score-CAM), relevance rank accuracy,
MaxBoxAccV1/V2 (Choe et al. 2020, clovaai/wsolevaluation) and PxAP (pixel average precision).
Ground truth is given as bool masks (B,H,W) or NaN-padded boxes (B,K,4) in pixel-edge coordinates;
the exact protocols, and where we differ from the reference code, are in docs/metrics.md.

Dataset-level metrics (MaxBoxAcc, PxAP) are *not* averages of per-image numbers: MaxBoxAcc counts
hits per CAM threshold over the whole evaluation set, then takes the best threshold. The functions
therefore also return the per-image hit tables / histograms, and ``max_box_acc_from_hits`` /
``pxap_from_histograms`` reduce the concatenation over many batches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ._checks import boxes_to_masks, check_boxes, check_maps, check_masks, object_masks

CAM_THRESHOLDS = 100  # wsolevaluation's cam_curve_interval 0.01: thresholds 0.00, 0.01, ..., 0.99
IOU_THRESHOLDS = (0.3, 0.5, 0.7)  # MaxBoxAccV2
# Labels every (image, threshold) slice of a (N,T,H,W) volume at once, 8-connected within a slice
# and never across slices: the only non-zero plane of the 3x3x3x3 structure is the middle one.
_SLICE_8_CONNECTED = np.zeros((3, 3, 3, 3), dtype=bool)
_SLICE_8_CONNECTED[1, 1] = True


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
                  tolerance: float = 15.0,
                  original_size: int | tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Pointing game (Zhang et al. 2016) as TorchRay evaluates it.

    The map's maximum (the first in raster order when several pixels tie) is a hit when an object
    pixel lies strictly closer than ``tolerance`` pixels to it (the point itself always counts).
    ``tolerance`` is in pixels of the maps; pass ``original_size`` (H0,W0) of the images the tolerance
    was meant for and it is scaled to the maps' size (TorchRay: 15 px at the original image size).
    A constant map (all zero included) has no maximum and is a miss. Masks are used when given,
    else the union of the boxes.

    Returns ``pointing_game`` (hit rate in [0,1], higher is better), ``hits`` (B,) bool and
    ``points`` (B,2) as (row, column).
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
    return {"pointing_game": hits.float().mean(), "hits": hits, "points": torch.stack([row, col], 1)}


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor | None = None,
                         boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Energy-based pointing game (Wang et al., Score-CAM 2020): the share of map mass on the object.

    Score-CAM uses the bounding box; with a mask this is Quantus' relevance mass accuracy. Masks are
    used when given, else the union of the boxes. An all-zero map has no mass and scores 0.
    Returns ``energy_pointing_game`` (mean in [0,1], higher is better) and ``per_image`` (B,).
    """
    maps = check_maps(maps)
    regions = object_masks(maps, masks, boxes, "energy_pointing_game")
    total = maps.flatten(1).sum(1, dtype=torch.float64)
    inside = (maps * regions).flatten(1).sum(1, dtype=torch.float64)
    per_image = torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total)).float()
    return {"energy_pointing_game": per_image.mean(), "per_image": per_image}


def relevance_rank_accuracy(maps: torch.Tensor, masks: torch.Tensor | None = None,
                            boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Relevance rank accuracy (Arras et al. 2022): of the K most salient pixels, K the object's size,
    the share that lies on the object. Ties are broken by raster order, so a constant map scores the
    share of the first K raster pixels on the object. In [0,1], higher is better.
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


def _ground_truth_boxes(maps: torch.Tensor, masks: torch.Tensor | None,
                        boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """GT boxes as inclusive integer pixel boxes (B,K,4) float64 with a validity mask (B,K).

    From float boxes in pixel-edge coordinates: the pixels whose centres they cover. From masks: the
    bounding box of each mask (one object per image).
    """
    batch, height, width = maps.shape
    if boxes is not None:
        boxes = check_boxes(boxes, batch, height, width).to(maps.device).double()
        valid = ~torch.isnan(boxes).any(-1)
        filled = torch.nan_to_num(boxes)
        first = torch.ceil(filled[..., :2] - 0.5)
        last = torch.floor(filled[..., 2:] - 0.5)
        valid = valid & (last >= first).all(-1)
        gt = torch.cat([first, last], -1)
    elif masks is not None:
        regions = check_masks(masks, maps.shape).to(maps.device)
        any_col, any_row = regions.any(1), regions.any(2)  # (B,W), (B,H)
        cols = torch.arange(width, device=maps.device, dtype=torch.float64)
        rows = torch.arange(height, device=maps.device, dtype=torch.float64)
        inf = float("inf")
        gt = torch.stack([
            torch.where(any_col, cols, inf).amin(1), torch.where(any_row, rows, inf).amin(1),
            torch.where(any_col, cols, -inf).amax(1), torch.where(any_row, rows, -inf).amax(1),
        ], 1)[:, None]
        valid = any_col.any(1)[:, None]
        gt = torch.nan_to_num(gt, posinf=0.0, neginf=0.0)
    else:
        raise ValueError("max_box_acc needs ground truth: pass boxes=(B,K,4) or masks=(B,H,W)")
    empty = ~valid.any(1)
    if bool(empty.any()):
        raise ValueError(
            f"max_box_acc: images {torch.nonzero(empty).flatten().tolist()[:10]} have no ground-truth box "
            "covering a pixel; drop those images before scoring"
        )
    return gt, valid


def _box_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of inclusive integer boxes, wsolevaluation's ``calculate_multiple_iou`` (+1 areas).

    ``pred`` (..., 4) and ``gt`` (..., K, 4) broadcast to (..., K).
    """
    pred = pred[..., None, :]
    width = (torch.minimum(pred[..., 2], gt[..., 2]) - torch.maximum(pred[..., 0], gt[..., 0]) + 1).clamp(min=0)
    height = (torch.minimum(pred[..., 3], gt[..., 3]) - torch.maximum(pred[..., 1], gt[..., 1]) + 1).clamp(min=0)
    intersection = width * height
    area_pred = (pred[..., 2] - pred[..., 0] + 1) * (pred[..., 3] - pred[..., 1] + 1)
    area_gt = (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1)
    union = area_pred + area_gt - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def _component_boxes(foreground: np.ndarray, exact: bool) -> tuple[np.ndarray, ...]:
    """Connected components of every (image, threshold) slice at once.

    Returns, per component: its slice index (into N*T), its pixel count and its box (x0,y0,x1,y1),
    inclusive pixel indices; in wsolevaluation's convention (``exact=False``) the box is
    cv2.boundingRect's (x, y, x+w, y+h) clipped to the image, i.e. one pixel wider and taller than
    the component where it does not touch the border.
    """
    import scipy.ndimage as ndimage  # CPU: labelling has no batched torch equivalent

    labels, count = ndimage.label(foreground, structure=_SLICE_8_CONNECTED)
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((0, 4), dtype=np.int64)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    spans = np.array([[s[0].start, s[1].start, s[2].start, s[2].stop, s[3].start, s[3].stop]
                      for s in ndimage.find_objects(labels)], dtype=np.int64)
    thresholds = foreground.shape[1]
    height, width = foreground.shape[2:]
    slice_index = spans[:, 0] * thresholds + spans[:, 1]
    if exact:
        x1, y1 = spans[:, 5] - 1, spans[:, 3] - 1
    else:
        x1, y1 = np.minimum(spans[:, 5], width - 1), np.minimum(spans[:, 3], height - 1)
    boxes = np.stack([spans[:, 4], spans[:, 2], x1, y1], 1)
    return slice_index, sizes, boxes


def max_box_acc(maps: torch.Tensor, boxes: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                cam_thresholds: int = CAM_THRESHOLDS, iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
                v1_iou: float = 0.5, box_convention: str = "wsol",
                chunk_size: int = 8) -> dict[str, torch.Tensor]:
    """MaxBoxAccV1 and V2 (Choe et al. 2020), the wsolevaluation protocol, batched.

    For each CAM threshold t in 0, 1/T, ..., (T-1)/T (T = ``cam_thresholds``, 100 = steps of 0.01) the
    map, quantised as ``uint8(map * 255)``, is binarised at ``> int(t * max)``; 8-connected regions of
    each (image, threshold) slice are labelled in one call. V1: the box of the largest region (pixel
    count) is a hit at IoU >= ``v1_iou``. V2: the best box over all regions, at each IoU in
    ``iou_thresholds``. An empty slice predicts the box (0,0,0,0), as in the reference. Hits are
    counted per threshold over the batch and the best threshold is taken — never the best per image.

    Boxes are used when given (the best IoU over an image's boxes counts), else the bounding box of
    each mask. ``box_convention="wsol"`` reproduces the reference's one-pixel-larger predicted box;
    ``"exact"`` uses the region's own bounding box.

    Returns fractions in [0,1], higher is better: ``max_box_acc_v1``, ``max_box_acc_v2`` (mean over
    the IoU thresholds), ``max_box_acc_v2_per_iou`` (len(iou_thresholds),); and for pooling over
    batches ``hits_v1`` (B,T) and ``hits_v2`` (len(iou_thresholds),B,T) bool, ``cam_thresholds`` (T,).
    """
    maps = check_maps(maps)
    if box_convention not in ("wsol", "exact"):
        raise ValueError(f"box_convention must be 'wsol' or 'exact'; got {box_convention!r}")
    if int(cam_thresholds) < 1 or int(chunk_size) < 1:
        raise ValueError("cam_thresholds and chunk_size must be >= 1")
    ious = torch.tensor([float(v) for v in iou_thresholds], dtype=torch.float64, device=maps.device)
    if ious.numel() == 0 or bool(((ious <= 0) | (ious > 1)).any()) or not 0 < v1_iou <= 1:
        raise ValueError(f"IoU thresholds must lie in (0,1]; got {list(iou_thresholds)} and v1_iou={v1_iou}")
    gt, valid = _ground_truth_boxes(maps, masks, boxes)
    batch, height, width = maps.shape
    count_t = int(cam_thresholds)
    thresholds = _threshold_list(count_t, maps.device)

    quantised = torch.floor(maps.float() * 255).clamp(0, 255)  # numpy's (map * 255).astype(uint8)
    cut = torch.floor(thresholds[None, :] * quantised.flatten(1).amax(1)[:, None].double())  # (B,T)
    best_v1 = torch.empty(batch, count_t, dtype=torch.float64, device=maps.device)
    best_v2 = torch.empty(batch, count_t, dtype=torch.float64, device=maps.device)
    empty_box = torch.zeros(4, dtype=torch.float64, device=maps.device)
    for start in range(0, batch, int(chunk_size)):  # bounds memory: (chunk, T, H, W) labels
        part = slice(start, min(start + int(chunk_size), batch))
        n = part.stop - part.start
        foreground = quantised[part, None].double() > cut[part, :, None, None]
        slice_index, sizes, comp_boxes = _component_boxes(foreground.cpu().numpy(), box_convention == "exact")
        slice_index = torch.from_numpy(slice_index).to(maps.device)
        sizes = torch.from_numpy(sizes).to(maps.device)
        comp_boxes = torch.from_numpy(comp_boxes).to(maps.device, torch.float64)
        image_of = slice_index // count_t + part.start
        comp_iou = _box_iou(comp_boxes, gt[image_of])  # (n_comp, K)
        comp_iou = torch.where(valid[image_of], comp_iou, torch.zeros_like(comp_iou)).amax(1)

        # Slices without any region predict the box (0,0,0,0).
        empty_iou = torch.where(valid[part], _box_iou(empty_box, gt[part]), 0).amax(1)  # (n,)
        v2 = empty_iou[:, None].expand(n, count_t).reshape(-1).clone()
        has_region = torch.zeros(n * count_t, dtype=torch.bool, device=maps.device)
        has_region[slice_index] = True
        v2[has_region] = 0
        v2.scatter_reduce_(0, slice_index, comp_iou, reduce="amax", include_self=True)

        # V1: the largest region of each slice; among equal sizes the first labelled (raster order).
        largest = torch.zeros(n * count_t, dtype=sizes.dtype, device=maps.device)
        largest.scatter_reduce_(0, slice_index, sizes, reduce="amax", include_self=True)
        is_largest = sizes == largest[slice_index]
        component = torch.arange(sizes.numel(), device=maps.device)
        pick = torch.full((n * count_t,), sizes.numel(), dtype=torch.long, device=maps.device)
        pick.scatter_reduce_(0, slice_index[is_largest], component[is_largest], reduce="amin", include_self=True)
        v1 = empty_iou[:, None].expand(n, count_t).reshape(-1).clone()
        v1[has_region] = comp_iou[pick[has_region]]

        best_v1[part] = v1.view(n, count_t)
        best_v2[part] = v2.view(n, count_t)

    hits_v1 = best_v1 >= v1_iou
    hits_v2 = best_v2[None] >= ious[:, None, None]
    result = max_box_acc_from_hits(hits_v1, hits_v2)
    result.update(hits_v1=hits_v1, hits_v2=hits_v2, cam_thresholds=thresholds.float())
    return result


def max_box_acc_from_hits(hits_v1: torch.Tensor, hits_v2: torch.Tensor) -> dict[str, torch.Tensor]:
    """MaxBoxAcc from per-image hit tables (B,T) and (I,B,T), e.g. concatenated over batches (dim -2)."""
    if hits_v1.dim() != 2 or hits_v2.dim() != 3 or hits_v2.shape[1:] != hits_v1.shape:
        raise ValueError(
            f"hits_v1 must be (B,T) and hits_v2 (I,B,T) for the same B,T; got {tuple(hits_v1.shape)} "
            f"and {tuple(hits_v2.shape)}"
        )
    per_threshold_v1 = hits_v1.float().mean(0)  # accuracy at each CAM threshold over all images
    per_iou = hits_v2.float().mean(1).amax(1)  # best threshold, separately for each IoU threshold
    return {
        "max_box_acc_v1": per_threshold_v1.amax(),
        "max_box_acc_v2": per_iou.mean(),
        "max_box_acc_v2_per_iou": per_iou,
        "best_threshold_v1": per_threshold_v1.argmax(),
    }


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
    "IOU_THRESHOLDS",
    "boxes_to_masks",
    "energy_pointing_game",
    "max_box_acc",
    "max_box_acc_from_hits",
    "pointing_game",
    "pxap",
    "pxap_from_histograms",
    "relevance_rank_accuracy",
]
