"""MaxBoxAccV1/V2 (Choe et al. 2020), exactly as clovaai/wsolevaluation computes them.

For each CAM threshold (0.00, 0.01, ..., 0.99) each map is quantised to uint8 and thresholded as
wsolevaluation's ``compute_bboxes_from_scoremaps`` does; boxes come from the contours of the
foreground (``cv2.findContours(RETR_TREE)``: holes included): V1 takes the largest contour by
``cv2.contourArea``, V2 the best of all contours at IoU 0.3/0.5/0.7. Hits are counted per threshold
over the whole evaluation set, then the best threshold is taken (not the best per image): the
functions return the per-image hit tables, and ``max_box_acc_from_hits`` reduces many batches.
OpenCV is used when installed; otherwise a SciPy path that gives identical boxes (tested).
Details and conventions: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._checks import check_boxes, check_maps, check_masks
from .localization import CAM_THRESHOLDS, IOU_THRESHOLDS, _threshold_list

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connected foreground, as cv2.findContours traces it
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # 4-connected background (its dual)


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


def _boxes_of(labels: np.ndarray, count: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice index (n,) and inclusive pixel box (n,4) x0,y0,x1,y1 of labels 1..count of a mosaic
    (see ``_contour_boxes_scipy``: slice k occupies rows k*(H+1)+1 .. k*(H+1)+H)."""
    import scipy.ndimage as ndimage

    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.int64)
    spans = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop)
                      for s in ndimage.find_objects(labels, max_label=count)], dtype=np.int64)
    slice_index = (spans[:, 0] - 1) // (height + 1)
    offset = slice_index * (height + 1) + 1
    boxes = np.stack([spans[:, 2], spans[:, 0] - offset, spans[:, 3] - 1, spans[:, 1] - 1 - offset], 1)
    return slice_index, boxes


def _contour_boxes_scipy(foreground: np.ndarray) -> tuple[np.ndarray, ...]:
    """The boxes ``cv2.findContours(RETR_TREE)`` gives for every binary slice (S,H,W), without OpenCV.

    Suzuki-Abe border following (what findContours runs) traces one *outer* border per 8-connected
    foreground region and one *hole* border per 4-connected background region that does not reach
    the image border (outside the image counts as background). So, exactly (tested against OpenCV):

    - an outer border passes through the region's extreme pixels: its box is the region's box;
    - a hole border passes through the foreground pixels 4-adjacent to the hole: its box is the
      hole's box grown by one pixel on every side;
    - ``cv2.contourArea`` of an outer border (the polygon through its pixel centres) is the area of
      the region with its holes filled, where each 2x2 window of pixels adds 1 if all four are
      inside, 1/2 if three are (the border cuts that window diagonally) and 0 otherwise;
    - findContours lists top-level borders last-found first (the region whose first pixel comes last
      in raster order comes first), each followed by the borders nested in it. A nested border never
      encloses more area than its parent, so ``max(contours, key=cv2.contourArea)`` is the outer
      border of largest filled area, ties going to the region that starts last in raster order.

    All slices are labelled in one call each: stacked into one tall image, one empty row apart.
    """
    import scipy.ndimage as ndimage  # CPU: labelling has no batched torch equivalent

    slices, height, width = foreground.shape
    mosaic = np.zeros((slices * (height + 1) + 1, width), dtype=bool)
    mosaic[:-1].reshape(slices, height + 1, width)[:, 1:] = foreground

    regions, region_count = ndimage.label(mosaic, structure=_EIGHT)
    v2_slice, v2_boxes = _boxes_of(regions, region_count, height)
    top_level, top_count, top_slice, top_boxes = regions, region_count, v2_slice, v2_boxes
    filled = mosaic
    background, background_count = ndimage.label(~mosaic, structure=_FOUR)
    # Every empty row spans the width, so all background reaching a slice's border meets column 0 or
    # the last column; the rest are holes.
    is_hole = np.ones(background_count + 1, dtype=bool)
    is_hole[0] = False
    is_hole[background[:, 0]] = False
    is_hole[background[:, -1]] = False
    if is_hole.any():
        hole_ids = np.flatnonzero(is_hole)
        spans = ndimage.find_objects(background, max_label=int(hole_ids[-1]))
        hole_spans = np.array([(spans[i - 1][0].start, spans[i - 1][0].stop, spans[i - 1][1].start,
                                spans[i - 1][1].stop) for i in hole_ids], dtype=np.int64)
        hole_slice = (hole_spans[:, 0] - 1) // (height + 1)
        offset = hole_slice * (height + 1) + 1
        hole_boxes = np.stack([hole_spans[:, 2] - 1, hole_spans[:, 0] - offset - 1, hole_spans[:, 3],
                               hole_spans[:, 1] - offset], 1)
        v2_slice = np.concatenate([v2_slice, hole_slice])
        v2_boxes = np.concatenate([v2_boxes, hole_boxes])
        filled = mosaic | is_hole[background]
        top_level, top_count = ndimage.label(filled, structure=_EIGHT)
        top_slice, top_boxes = _boxes_of(top_level, top_count, height)
    if top_count == 0:
        return v2_slice, v2_boxes, v2_slice, v2_boxes

    # Labels follow raster order, so each slice's regions are consecutive and a later label starts
    # later. A slice with one top-level region needs no area.
    starts = np.flatnonzero(np.r_[True, top_slice[1:] != top_slice[:-1]])
    per_slice = np.diff(np.r_[starts, top_count])
    best = starts.copy()
    crowded = np.flatnonzero(per_slice > 1)
    if crowded.size:
        # Twice the contour area, on the crowded slices only: 2 per 2x2 window with four filled
        # pixels, 1 per window with three. The largest wins, then the latest start.
        rows = (top_slice[starts[crowded]][:, None] * (height + 1) + np.arange(height + 2)[None, :]).ravel()
        sub_filled, sub_labels = filled[rows], top_level[rows]
        inside = sub_filled[:-1, :-1].astype(np.uint8)
        inside += sub_filled[:-1, 1:]
        inside += sub_filled[1:, :-1]
        inside += sub_filled[1:, 1:]
        window_label = sub_labels[:-1, :-1].copy()  # all filled pixels of a window share one label
        for other in (sub_labels[:-1, 1:], sub_labels[1:, :-1], sub_labels[1:, 1:]):
            np.maximum(window_label, other, out=window_label)
        area2 = (np.bincount(window_label[inside >= 3], minlength=top_count + 1)
                 + np.bincount(window_label[inside == 4], minlength=top_count + 1))[1:]
        key = area2.astype(np.int64) * (top_count + 1) + np.arange(top_count)
        chosen = np.maximum.reduceat(key, starts) % (top_count + 1)
        best[crowded] = chosen[crowded]
    return top_slice[starts], top_boxes[best], v2_slice, v2_boxes


def _contour_boxes_opencv(foreground: np.ndarray) -> tuple[np.ndarray, ...]:
    """What ``_contour_boxes_scipy`` computes, with the reference's own OpenCV call
    (``findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``): the same boxes (tested), several times faster.

    Why one call for all slices: a per-slice loop spends most of its time in Python (16,000 slices of
    32 px per benchmark cell). The slices are stacked into one tall image with a zero row between
    them, so no region or contour crosses from one slice to the next and each slice keeps its own
    raster order; every contour is then assigned to the slice its first point lies in. Boxes are the
    contour points' extremes (``cv2.boundingRect``), areas the shoelace formula on the same points
    (``cv2.contourArea``, kept doubled: exact in integers), and V1 takes the largest area, the first
    listed on ties, as ``np.argmax`` over the reference's list does. Measured on smooth 32 px maps:
    9 ms against 24 ms for 400 slices; tested equal to the per-slice calls on random, smooth and
    border-touching slices.
    """
    import cv2

    images = np.ascontiguousarray(foreground, dtype=np.uint8)
    count, height, width = images.shape
    pitch = height + 1  # one zero row after each slice
    canvas = np.zeros((count, pitch, width), dtype=np.uint8)
    canvas[:, :height] = images
    contours = cv2.findContours(canvas.reshape(count * pitch, width), cv2.RETR_TREE,
                                cv2.CHAIN_APPROX_SIMPLE)[-2]  # OpenCV 3/4/5
    if not contours:
        empty = np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.int64)
        return empty + empty
    lengths = np.array([len(contour) for contour in contours])
    points = np.concatenate(contours)[:, 0].astype(np.int64)  # (M, 2): x, y on the canvas
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    slice_of = points[starts, 1] // pitch
    x, y = points[:, 0], points[:, 1] - np.repeat(slice_of, lengths) * pitch
    boxes = np.stack([np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts),
                      np.maximum.reduceat(x, starts), np.maximum.reduceat(y, starts)], 1)
    following = np.arange(len(points)) + 1  # the next point of each contour, the last wrapping round
    following[starts + lengths - 1] = starts
    doubled_area = np.abs(np.add.reduceat(x * y[following] - x[following] * y, starts))
    listed = np.argsort(slice_of, kind="stable")  # grouped by slice, the reference's order within
    by_slice = slice_of[listed]
    ranked = np.lexsort((np.arange(len(listed)), -doubled_area[listed], by_slice))
    first = np.r_[True, by_slice[ranked][1:] != by_slice[ranked][:-1]]
    largest = listed[ranked[first]]
    return slice_of[largest], boxes[largest], by_slice, boxes[listed]


def _contour_backend(backend: str) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    if backend not in ("auto", "opencv", "scipy"):
        raise ValueError(f"backend must be 'auto', 'opencv' or 'scipy'; got {backend!r}")
    if backend == "scipy":
        return _contour_boxes_scipy
    try:
        import cv2  # noqa: F401
    except ImportError:
        if backend == "opencv":
            raise ValueError("backend='opencv' needs OpenCV: pip install opencv-python-headless") from None
        return _contour_boxes_scipy
    return _contour_boxes_opencv


def _wsol_boxes(boxes: np.ndarray, height: int, width: int, convention: str) -> np.ndarray:
    """Border extremes -> predicted boxes: wsolevaluation's ``(x, y, x + w, y + h)`` from
    ``cv2.boundingRect``, clipped to ``(W-1, H-1)`` (one pixel wider and taller than the border unless
    clipped), or the extremes themselves (``"exact"``)."""
    if convention == "exact" or len(boxes) == 0:
        return boxes
    return np.stack([boxes[:, 0], boxes[:, 1], np.minimum(boxes[:, 2] + 1, width - 1),
                     np.minimum(boxes[:, 3] + 1, height - 1)], 1)


def _quantise(maps: torch.Tensor) -> torch.Tensor:
    """``(map * 255).astype(np.uint8)`` as wsolevaluation does it, in the map's precision (float64
    maps in float64, any other float in float32)."""
    work = maps if maps.dtype == torch.float64 else maps.float()
    return torch.floor(work * 255).clamp(0, 255).to(torch.uint8)


def max_box_acc(maps: torch.Tensor, boxes: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                cam_thresholds: int = CAM_THRESHOLDS, iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
                v1_iou: float = 0.5, box_convention: str = "wsol",
                chunk_size: int = 4, backend: str = "auto") -> dict[str, torch.Tensor]:
    """MaxBoxAccV1 and V2 (Choe et al. 2020) exactly as clovaai/wsolevaluation computes them, batched.

    For each CAM threshold t in 0, 1/T, ..., (T-1)/T (T = ``cam_thresholds``; 100 = the reference's
    ``np.arange(0, 1, 0.01)``) the map, quantised as ``uint8(map * 255)``, is binarised at
    ``> int(t * max)`` (``cv2.threshold(..., THRESH_BINARY)``). The boxes are those of the contours
    ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` returns: V1 (``multi_contour_eval=False``)
    takes the contour of largest ``cv2.contourArea``, the first listed on ties, and is a hit at
    IoU >= ``v1_iou``; V2
    (``multi_contour_eval=True``) takes the best IoU over *every* contour, hole borders included, at
    each IoU in ``iou_thresholds``. A slice with no contour predicts the box (0,0,0,0), as the
    reference does. Hits are counted per threshold over the batch and the best threshold is taken
    (separately per IoU threshold) — never the best per image.

    Boxes are used when given (the best IoU over an image's boxes counts), else the bounding box of
    each mask. GT boxes are pixel-edge ``(x0,y0,x1,y1)``; they are compared as the inclusive pixel box
    of the pixels whose centres they cover (the reference's convention: IoU with ``+1`` side lengths).
    ``box_convention="wsol"`` reproduces the reference's predicted box ``(x, y, x+w, y+h)``, one pixel
    wider and taller than the contour; ``"exact"`` uses the contour's own extremes.

    ``backend``: ``"opencv"`` runs the reference's OpenCV call (on all (image, threshold) slices of a
    chunk at once, separated by zero rows); ``"scipy"``
    computes the same contours' boxes and areas from connected components, without OpenCV (both tested
    equal to OpenCV, ties included); ``"auto"`` (default) takes OpenCV when it is installed, as it is
    several times faster (about 50 ms against 250 ms per 224 px map on 2 CPU cores). ``chunk_size``
    images are processed at a time (scipy: about 10 bytes per pixel per threshold).

    Args:
        maps: saliency (B,H,W) float in [0,1], finite; any device (contours are traced on the CPU).
        boxes: GT boxes (B,K,4) x0,y0,x1,y1 in pixel-edge coordinates, NaN rows as padding; used when given.
        masks: GT masks (B,H,W), bool or 0/1 valued, used (each mask's bounding box) when ``boxes`` is None.
            One of the two is required, and every image needs a GT box covering a pixel.
        cam_thresholds: T, the number of CAM thresholds t = k/T, k = 0..T-1 (>= 1; the reference: 100).
        iou_thresholds: IoU thresholds of V2, each in (0,1] (the reference: 0.3, 0.5, 0.7).
        v1_iou: IoU a V1 box needs to count as a hit, in (0,1] (the reference: 0.5).
        box_convention: ``"wsol"`` (the reference's predicted box) or ``"exact"`` (see above).
        chunk_size: images per contour pass (>= 1); bounds the memory.
        backend: ``"auto"``, ``"opencv"`` or ``"scipy"`` (see above).

    Returns:
        ``max_box_acc_v1``: scalar float32 in [0,1], higher is better; ``max_box_acc_v2``: scalar, the
        mean over the IoU thresholds of ``max_box_acc_v2_per_iou`` (len(iou_thresholds),) float32;
        ``best_threshold_v1``: scalar int64, the *index* (0..T-1) into ``cam_thresholds`` of the
        threshold that maximises V1 (the first on ties) — not the threshold itself; ``iou_v1`` /
        ``iou_v2``: (B,T) float64 IoU of every (image, threshold); for pooling over batches
        (``max_box_acc_from_hits``) ``hits_v1`` (B,T) and ``hits_v2`` (len(iou_thresholds),B,T) bool;
        ``cam_thresholds``: (T,) float32, the thresholds. All on the maps' device.

    Raises:
        TypeError: ``maps`` is not a float tensor, or ``boxes``/``masks`` is not a tensor.
        ValueError: bad ``maps`` (shape, NaN/inf, outside [0,1]); an unknown ``box_convention`` or
            ``backend`` (or ``"opencv"`` without OpenCV installed); ``cam_thresholds`` or ``chunk_size``
            < 1; IoU thresholds outside (0,1]; no ground truth, or an image without a GT box.
    """
    maps = check_maps(maps)
    if box_convention not in ("wsol", "exact"):
        raise ValueError(f"box_convention must be 'wsol' or 'exact'; got {box_convention!r}")
    if int(cam_thresholds) < 1 or int(chunk_size) < 1:
        raise ValueError("cam_thresholds and chunk_size must be >= 1")
    ious = torch.tensor([float(v) for v in iou_thresholds], dtype=torch.float64, device=maps.device)
    if ious.numel() == 0 or bool(((ious <= 0) | (ious > 1)).any()) or not 0 < v1_iou <= 1:
        raise ValueError(f"IoU thresholds must lie in (0,1]; got {list(iou_thresholds)} and v1_iou={v1_iou}")
    contour_boxes = _contour_backend(backend)
    gt, valid = _ground_truth_boxes(maps, masks, boxes)
    batch, height, width = maps.shape
    count_t = int(cam_thresholds)
    thresholds = _threshold_list(count_t, maps.device)

    quantised = _quantise(maps)
    peak = quantised.flatten(1).amax(1).double()
    cut = torch.floor(thresholds[None, :] * peak[:, None]).to(torch.uint8)  # (B,T): int(t * max)
    iou_v1 = torch.empty(batch, count_t, dtype=torch.float64, device=maps.device)
    iou_v2 = torch.empty(batch, count_t, dtype=torch.float64, device=maps.device)
    empty_box = torch.zeros(4, dtype=torch.float64, device=maps.device)

    def best_iou(slice_index: np.ndarray, found: np.ndarray, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(slice index on the device, best IoU over the image's GT boxes) of each found box."""
        index = torch.from_numpy(slice_index).to(maps.device)
        found_boxes = torch.from_numpy(_wsol_boxes(found, height, width, box_convention)).to(maps.device,
                                                                                            torch.float64)
        image_of = index // count_t + first
        iou = _box_iou(found_boxes, gt[image_of])  # (n, K)
        return index, torch.where(valid[image_of], iou, torch.zeros_like(iou)).amax(1)

    for start in range(0, batch, int(chunk_size)):  # bounds memory: (chunk, T, H, W) label volumes
        part = slice(start, min(start + int(chunk_size), batch))
        n = part.stop - part.start
        foreground = quantised[part, None] > cut[part, :, None, None]
        v1_slice, v1_found, v2_slice, v2_found = contour_boxes(
            foreground.reshape(n * count_t, height, width).cpu().numpy())
        # Slices without any contour predict the box (0,0,0,0).
        empty_iou = torch.where(valid[part], _box_iou(empty_box, gt[part]), 0).amax(1)  # (n,)
        v1 = empty_iou.repeat_interleave(count_t)
        index, iou = best_iou(v1_slice, v1_found, part.start)
        v1[index] = iou
        v2 = empty_iou.repeat_interleave(count_t)
        index, iou = best_iou(v2_slice, v2_found, part.start)
        v2[index] = 0.0  # non-empty slices: the best over their contours only
        v2.scatter_reduce_(0, index, iou, reduce="amax", include_self=True)
        iou_v1[part] = v1.view(n, count_t)
        iou_v2[part] = v2.view(n, count_t)

    hits_v1 = iou_v1 >= v1_iou
    hits_v2 = iou_v2[None] >= ious[:, None, None]
    result = max_box_acc_from_hits(hits_v1, hits_v2)
    result.update(hits_v1=hits_v1, hits_v2=hits_v2, iou_v1=iou_v1, iou_v2=iou_v2,
                  cam_thresholds=thresholds.float())
    return result


def max_box_acc_from_hits(hits_v1: torch.Tensor, hits_v2: torch.Tensor) -> dict[str, torch.Tensor]:
    """MaxBoxAcc from per-image hit tables (B,T) and (I,B,T), e.g. concatenated over batches (dim -2).

    Args:
        hits_v1: (B,T) bool, V1 hit of every (image, CAM threshold) (``max_box_acc(...)["hits_v1"]``).
        hits_v2: (I,B,T) bool, V2 hits at each of I IoU thresholds, same B and T.

    Returns:
        ``max_box_acc_v1``: scalar float32, the best over thresholds of the V1 hit rate over images;
        ``max_box_acc_v2``: scalar, the mean of ``max_box_acc_v2_per_iou`` (I,) (the best threshold taken
        separately at each IoU threshold); ``best_threshold_v1``: scalar int64 index (0..T-1) of V1's best
        threshold, the first on ties.

    Raises:
        ValueError: the tables are not (B,T) and (I,B,T) with the same B and T.
    """
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


__all__ = ["max_box_acc", "max_box_acc_from_hits"]
