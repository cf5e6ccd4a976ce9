"""Predictions of a trained model over a whole dataset: what the trainer's evaluation and the
benchmark's accuracy cells both use, through camzoo's one data path.

Classifiers are scored per image (top-1 accuracy), segmenters (``model.task == "segmentation"``) per
pixel against the dataset's class maps (pixel accuracy and mean IoU, from one confusion matrix summed
on the device).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .data.loading import BatchLoader
from .modelutil import eval_mode, model_device

SEGMENTATION = "segmentation"  # the task name and the batch target that holds the class maps


def is_segmenter(model: nn.Module) -> bool:
    """Whether ``model`` predicts a class per pixel (its kind's ``task``), so it is scored on class maps."""
    return getattr(model, "task", "classification") == SEGMENTATION


class SegmentationView:
    """A dataset as :class:`~camzoo.data.BatchLoader` reads it, with the per-pixel class maps in every
    batch: its ``get_batch`` asked for ``objects=True`` (flipped with the images when it augments),
    optionally restricted to ``indices`` (a shard)."""

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


def segmentation_view(dataset, indices: torch.Tensor | None = None) -> SegmentationView:
    """``dataset`` with its class maps in every batch (targets["segmentation"], (B, H, W): 0 background,
    c+1 class c); a one-line error when it has none."""
    if isinstance(dataset, SegmentationView) and indices is None:
        return dataset
    get_batch = getattr(dataset, "get_batch", None)
    try:
        takes_objects = callable(get_batch) and "objects" in inspect.signature(get_batch).parameters
    except (TypeError, ValueError):
        takes_objects = False
    # one image shows whether the class maps are there (an empty set fails in BatchLoader, clearly)
    if not takes_objects or (len(dataset) and SEGMENTATION not in get_batch(torch.zeros(1, dtype=torch.long),
                                                                            objects=True)[2]):
        raise ValueError(f"{getattr(dataset, 'name', type(dataset).__name__)!r} has no per-pixel class maps "
                         "(get_batch(indices, objects=True) with a 'segmentation' target): train and evaluate a "
                         "segmenter on a dataset with per-object masks, such as 'scenes'")
    return SegmentationView(dataset, indices)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
            amp: bool = False, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float logits (N, classes) and labels (N,) of a whole dataset, in eval mode, batched on the device.

    A segmenter's are the per-pixel logits (N, classes, H, W) and the class maps (N, H, W) long: N
    times the class count times H x W floats, so score a large split with :func:`evaluate_segmentation`.
    """
    device = torch.device(device) if device is not None else model_device(model)
    segmenter = is_segmenter(model)
    source = segmentation_view(dataset) if segmenter else dataset
    data = BatchLoader(source, batch_size, device, num_classes=num_classes or getattr(model, "num_classes", None),
                       num_workers=0)
    logits, labels = [], []
    with eval_mode(model), _autocast(device, amp):
        for x, y, targets in data.epoch(shuffle=False):
            logits.append(model(x).float())
            labels.append(targets[SEGMENTATION].long() if segmenter else y)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
             amp: bool = False, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``dataset`` (eval mode, batched); for a
    segmenter, :func:`evaluate_segmentation`'s numbers (its ``accuracy`` is the pixel accuracy)."""
    if is_segmenter(model):
        return evaluate_segmentation(model, dataset, batch_size, device, amp)
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
