"""Predictions of a trained model over a whole dataset: what the trainer's evaluation and the
benchmark's accuracy cells both use, through camzoo's one data path.

Classifiers are scored per image (top-1 accuracy), segmenters (``model.task == "segmentation"``) per
pixel against the dataset's class maps (pixel accuracy and mean IoU, from one confusion matrix summed
on the device), detectors (``model.task == "detection"``) per object against the dataset's boxes
(average precision at IoU 0.5, from every detection matched to the ground truth).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .data.loading import BatchLoader
from .methods.outputs import OutputSelector, logits_of
from .modelutil import eval_mode, model_device

SEGMENTATION = "segmentation"  # the task name and the batch target that holds the class maps
DETECTION = "detection"  # the task name of detectors
OBJECT_BOXES, OBJECT_LABELS = "object_boxes", "object_labels"  # the batch targets a detector learns from


def is_segmenter(model: nn.Module) -> bool:
    """Whether ``model`` predicts a class per pixel (its kind's ``task``), so it is scored on class maps."""
    return getattr(model, "task", "classification") == SEGMENTATION


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` predicts boxes (its kind's ``task``), so it is scored on the dataset's objects."""
    return getattr(model, "task", "classification") == DETECTION


class ObjectView:
    """A dataset as :class:`~camzoo.data.BatchLoader` reads it, with the per-object annotations in
    every batch (class maps, boxes and labels): its ``get_batch`` asked for ``objects=True`` (flipped
    with the images when it augments), optionally restricted to ``indices`` (a shard)."""

    def __init__(self, dataset, indices: torch.Tensor | None = None) -> None:
        self.dataset, self.indices = dataset, indices
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def get_batch(self, indices, generator: torch.Generator | None = None, objects: bool = True):
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.indices is not None:
            idx = self.indices[idx]
        return self.dataset.get_batch(idx, generator=generator, objects=True)


def _object_view(dataset, indices: torch.Tensor | None, key: str, missing: str) -> ObjectView:
    """``dataset`` with its objects in every batch; the one-line error ``missing`` when one image's batch
    has no ``key`` target."""
    if isinstance(dataset, ObjectView) and indices is None:
        return dataset
    get_batch = getattr(dataset, "get_batch", None)
    try:
        takes_objects = callable(get_batch) and "objects" in inspect.signature(get_batch).parameters
    except (TypeError, ValueError):
        takes_objects = False
    # one image shows whether the annotations are there (an empty set fails in BatchLoader, clearly)
    if not takes_objects or (len(dataset) and key not in get_batch(torch.zeros(1, dtype=torch.long), objects=True)[2]):
        raise ValueError(f"{getattr(dataset, 'name', type(dataset).__name__)!r} {missing}")
    return ObjectView(dataset, indices)


def segmentation_view(dataset, indices: torch.Tensor | None = None) -> ObjectView:
    """``dataset`` with its class maps in every batch (targets["segmentation"], (B, H, W): 0 background,
    c+1 class c); a one-line error when it has none."""
    return _object_view(dataset, indices, SEGMENTATION,
                        "has no per-pixel class maps (get_batch(indices, objects=True) with a 'segmentation' "
                        "target): train and evaluate a segmenter on a dataset with per-object masks, such as 'scenes'")


def detection_view(dataset, indices: torch.Tensor | None = None) -> ObjectView:
    """``dataset`` with its objects in every batch (targets "object_boxes" (B, M, 4) NaN-padded and
    "object_labels" (B, M) -1-padded); a one-line error when it has none."""
    return _object_view(dataset, indices, OBJECT_BOXES,
                        "has no per-object boxes (get_batch(indices, objects=True) with 'object_boxes' and "
                        "'object_labels' targets): train and evaluate a detector on a dataset with per-object "
                        "boxes, such as 'scenes'")


def detection_targets(targets: dict[str, torch.Tensor],
                      boxes: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
    """torchvision's detection targets, one dict per image (``boxes`` (G, 4), ``labels`` (G,) long),
    from a batch's padded per-object annotations: padding dropped, dataset class c as label c + 1
    (0 is a detector's background). ``boxes``: (B, M, 4) to use instead of the batch's (augmented)."""
    labels = targets[OBJECT_LABELS].long()
    boxes = targets[OBJECT_BOXES] if boxes is None else boxes
    keep = (labels >= 0) & torch.isfinite(boxes).all(-1)
    return [{"boxes": b[k].float(), "labels": c[k] + 1} for b, c, k in zip(boxes, labels, keep)]


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
            amp: bool = False, num_classes: int | None = None, output: OutputSelector = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float logits (N, classes) and labels (N,) of a whole dataset, in eval mode, batched on the device.

    A classifier's output is read as ``camzoo.explain`` reads it (``methods.outputs.logits_of``; a
    tuple, dict, dataclass or Hugging Face ``ModelOutput`` holds its logits; ``output``: the selector).
    A segmenter's are the per-pixel logits (N, classes, H, W) and the class maps (N, H, W) long: N
    times the class count times H x W floats, so score a large split with :func:`evaluate_segmentation`.
    """
    if is_detector(model):
        raise ValueError("predict gives class logits; a detector's detections are scored by evaluate_detection")
    device = torch.device(device) if device is not None else model_device(model)
    segmenter = is_segmenter(model)
    source = segmentation_view(dataset) if segmenter else dataset
    data = BatchLoader(source, batch_size, device, num_classes=num_classes or getattr(model, "num_classes", None),
                       num_workers=0)
    logits, labels = [], []
    with eval_mode(model), _autocast(device, amp):
        for x, y, targets in data.epoch(shuffle=False):
            logits.append(model(x).float() if segmenter else logits_of(model(x), model, x, output))
            labels.append(targets[SEGMENTATION].long() if segmenter else y)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
             amp: bool = False, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``dataset`` (eval mode, batched); for a
    segmenter, :func:`evaluate_segmentation`'s numbers (its ``accuracy`` is the pixel accuracy); for a
    detector, :func:`evaluate_detection`'s (``ap50``, no accuracy)."""
    if is_segmenter(model):
        return evaluate_segmentation(model, dataset, batch_size, device, amp)
    if is_detector(model):
        return evaluate_detection(model, dataset, batch_size, device, amp)
    return scores(*predict(model, dataset, batch_size, device, amp, num_classes))


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """What :func:`evaluate` reports, from the logits and labels of a whole dataset."""
    return {
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "n": len(labels),
    }


@torch.no_grad()
def segmentation_confusion(model: nn.Module, dataset, batch_size: int = 256,
                           device: str | torch.device | None = None, amp: bool = False,
                           indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Confusion matrix (K, K) long (rows: true class, columns: predicted) and the summed per-pixel
    cross-entropy of a segmenter over ``dataset`` (or its ``indices``), both on the device.

    Sums, not means, so that shards of a split add up (camzoo.train.ddp) to exactly the whole split's.
    """
    device = torch.device(device) if device is not None else model_device(model)
    k = int(model.num_classes)
    source = segmentation_view(dataset, indices)
    classes = source.classes
    if classes is not None and len(classes) + 1 != k:
        raise ValueError(f"the segmenter predicts {k} classes but the dataset's class maps have {len(classes) + 1} "
                         f"({len(classes)} classes + background); evaluate it on the dataset it was trained on")
    confusion = torch.zeros(k * k, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    with eval_mode(model), _autocast(device, amp):
        for x, _, targets in BatchLoader(source, batch_size, device, num_workers=0).epoch(shuffle=False):
            logits, truth = model(x).float(), targets[SEGMENTATION].long()
            loss_sum += F.cross_entropy(logits, truth, reduction="sum").double()
            confusion += torch.bincount((truth * k + logits.argmax(1)).flatten(), minlength=k * k)
    return confusion.view(k, k), loss_sum


def segmentation_scores(confusion: torch.Tensor, loss_sum: torch.Tensor | float, n: int) -> dict[str, float]:
    """Pixel accuracy, mean IoU, mean per-pixel loss from a confusion matrix (rows: truth).

    IoU of class c = hits / (true c + predicted c - hits); the mean leaves out classes that neither
    the truth nor the prediction contains (their IoU is 0/0), as torchvision's reference scripts do.
    """
    confusion = confusion.double()
    pixels = confusion.sum()
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    iou = hits[present] / union[present]
    return {
        "accuracy": (hits.sum() / pixels).item(),
        "mean_iou": iou.mean().item(),
        "loss": (torch.as_tensor(loss_sum, dtype=torch.float64) / pixels).item(),
        "n": n,
        "pixels": int(pixels.item()),
    }


def evaluate_segmentation(model: nn.Module, dataset, batch_size: int = 256,
                          device: str | torch.device | None = None, amp: bool = False) -> dict[str, float]:
    """A segmenter's scores on a dataset with class maps (e.g. "scenes"), eval mode, batched on the device.

    Returns:
        ``accuracy`` (pixel accuracy: the share of pixels whose argmax class is the true one),
        ``mean_iou`` (mean over the K classes, background included, of intersection over union; a
        class in neither the truth nor the prediction is left out), ``loss`` (mean per-pixel
        cross-entropy), ``n`` (images) and ``pixels``.

    Raises:
        ValueError: the dataset has no class maps, or its classes (plus background) are not the model's.
    """
    confusion, loss_sum = segmentation_confusion(model, dataset, batch_size, device, amp)
    return segmentation_scores(confusion, loss_sum, len(dataset))


def match_detections(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, truth_boxes: torch.Tensor,
                     truth_labels: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Which of one image's detections are true positives (D,) bool, in the detections' order.

    Greedy, as VOC and COCO match: in order of decreasing score, each detection takes the unmatched
    ground-truth box of its label with the largest IoU >= ``iou_threshold``; a detection left without
    one is a false positive. Vectorised when no detection has two candidate boxes (always on "scenes",
    whose objects have distinct classes): then a detection is a hit iff it is the best-scored
    candidate of its box.
    """
    from torchvision.ops import box_iou

    hit = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    if not len(scores) or not len(truth_labels):
        return hit
    order = scores.argsort(descending=True, stable=True)
    iou = box_iou(boxes[order].float(), truth_boxes.float().to(boxes.device))
    candidate = (iou >= iou_threshold) & (labels[order, None] == truth_labels.to(labels.device)[None])
    if bool((candidate.sum(1) <= 1).all()):
        hit[order] = (candidate & (candidate.cumsum(0) == 1)).any(1)
        return hit
    taken = torch.zeros(len(truth_labels), dtype=torch.bool, device=scores.device)
    for rank, detection in enumerate(order.tolist()):
        free = candidate[rank] & ~taken
        if bool(free.any()):
            taken[torch.where(free, iou[rank], -1.0).argmax()] = True
            hit[detection] = True
    return hit


def average_precision(scores: torch.Tensor, hits: torch.Tensor, num_truth: int) -> float:
    """VOC's all-point interpolated average precision of one class: the mean over its ``num_truth``
    ground-truth objects of the best precision at any recall reaching that object (0 for a missed one).
    Ties in score keep the given order (stable), so the result does not depend on how it is computed."""
    if num_truth <= 0:
        raise ValueError("average precision needs at least one ground-truth object")
    ranked = hits[scores.argsort(descending=True, stable=True)].double()
    precision = ranked.cumsum(0) / torch.arange(1, len(ranked) + 1, dtype=torch.float64, device=ranked.device)
    best_after = precision.flip(0).cummax(0).values.flip(0)  # interpolated: the best precision from here on
    return float((best_after * ranked).sum() / num_truth)


@torch.no_grad()
def detection_matches(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
                      amp: bool = False, indices: torch.Tensor | None = None,
                      iou_threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Every detection of ``model`` on ``dataset`` (or its ``indices``), matched to the ground truth.

    Returns CPU tensors: per detection ``image`` (its dataset index), ``scores``, ``labels`` and ``hits``
    (:func:`match_detections`); per ground-truth object ``truth_labels`` (dataset class + 1). Shards
    (as distributed evaluation takes them) concatenate to the whole split's, in image order.
    """
    device = torch.device(device) if device is not None else model_device(model)
    source = detection_view(dataset, indices)
    classes = getattr(model, "num_classes", None)
    if source.classes is not None and classes is not None and len(source.classes) + 1 != classes:
        raise ValueError(f"the detector predicts {classes} classes but the dataset has {len(source.classes) + 1} "
                         f"({len(source.classes)} classes + background); evaluate it on the dataset it was trained on")
    global_index = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices).cpu()
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in ("image", "scores", "labels", "hits", "truth_labels")}
    seen = 0
    with eval_mode(model), _autocast(device, amp):
        for x, _, targets in BatchLoader(source, batch_size, device, num_workers=0).epoch(shuffle=False):
            for found, truth in zip(model(x), detection_targets(targets)):
                scores, labels = found["scores"].float().cpu(), found["labels"].cpu()
                parts["image"].append(global_index[seen].expand(len(scores)))
                parts["scores"].append(scores)
                parts["labels"].append(labels)
                parts["hits"].append(match_detections(found["boxes"].float().cpu(), labels, scores,
                                                      truth["boxes"].cpu(), truth["labels"].cpu(), iou_threshold))
                parts["truth_labels"].append(truth["labels"].cpu())
                seen += 1
    empty = {"image": torch.long, "scores": torch.float32, "labels": torch.long, "hits": torch.bool,
             "truth_labels": torch.long}
    return {key: torch.cat(parts[key]) if parts[key] else torch.empty(0, dtype=empty[key]) for key in parts}


def detection_scores(matches: dict[str, torch.Tensor], num_classes: int, n: int) -> dict[str, float]:
    """``ap50`` (the mean over the classes 1..num_classes-1 that have ground-truth objects of their
    :func:`average_precision`), ``recall`` (share of objects matched by some detection), ``objects``,
    ``detections`` and ``n`` (images), from :func:`detection_matches` (or its shards, concatenated)."""
    order = matches["image"].argsort(stable=True)  # image order, each image's detections as it gave them
    scores, labels, hits = (matches[key][order] for key in ("scores", "labels", "hits"))
    truth = matches["truth_labels"]
    aps = [average_precision(scores[labels == c], hits[labels == c], int((truth == c).sum()))
           for c in range(1, num_classes) if bool((truth == c).any())]
    return {
        "ap50": sum(aps) / len(aps) if aps else float("nan"),
        "recall": float(hits.sum()) / len(truth) if len(truth) else float("nan"),
        "objects": len(truth),
        "detections": len(scores),
        "n": n,
    }


def evaluate_detection(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
                       amp: bool = False) -> dict[str, float]:
    """A detector's scores on a dataset with per-object boxes (e.g. "scenes"), eval mode, batched.

    ``model(x)`` must return torchvision's detections (a list of dicts ``boxes``, ``labels``,
    ``scores`` per image) with dataset class c as label c + 1 (0: background), as camzoo's "detector"
    kind does; its ``num_classes`` counts the background.

    Returns:
        ``ap50``: the mean over classes (those with ground-truth objects) of VOC's all-point
        interpolated average precision at IoU >= 0.5, detections matched greedily by score
        (:func:`match_detections`); ``recall`` (objects found at IoU 0.5, at the model's own score
        threshold), ``objects``, ``detections`` and ``n`` (images).

    Raises:
        ValueError: the dataset has no per-object boxes, or its classes (plus background) are not the model's.
    """
    matches = detection_matches(model, dataset, batch_size, device, amp)
    present = torch.cat([matches["truth_labels"], matches["labels"], torch.zeros(1, dtype=torch.long)])
    num_classes = getattr(model, "num_classes", None) or int(present.max()) + 1
    return detection_scores(matches, num_classes, len(dataset))
