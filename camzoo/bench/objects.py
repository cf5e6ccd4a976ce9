"""The object track: a segmenter's or detector's maps of every object of a scene, scored against that
object with the scene's other objects as distractors.

Why pairs: a scene of 2-4 objects of distinct classes asks more of a map than "find an object": each
object is explained in turn (``SegmentationTarget(its class, its mask)``), and the map must put its
evidence on that object and not on the others. So the evaluation set is one entry per (image,
object): the image, the object's class, its mask and box as the ground truth the localization
metrics read, the other objects' masks (``object_share`` reads them), and the target to explain.
Everything downstream (explaining in one-pass groups, the controls, the kept maps, stability, the
paired tests) is the classification track's code, on pairs instead of images.

The pairs of the first ``eval.images`` images form one block: a segmentation set is small (a few
thousand pairs of small images), and its maps are scored alone (no games), so they need no streaming.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..methods.objectives import OutputTargets
from ..targets import BoxTarget, SegmentationTarget
from .evaluation import EvalSet, EvalStream

# a segmenter's and a detector's class 0 is the background; dataset class c is their class c + 1
BACKGROUND_CLASSES = 1


def object_targets(task: str, classes: list[int], masks: torch.Tensor, boxes: list[list[float]]) -> OutputTargets:
    """What each (image, object) pair's map explains, from the object's dataset class, mask and box:
    ``SegmentationTarget(class + 1, mask)`` for a segmenter, ``BoxTarget(class + 1, box)`` for a
    detector (silent on a miss: its map is all zeros, and scored so)."""
    if task == "segmentation":
        return OutputTargets([SegmentationTarget(c + BACKGROUND_CLASSES, mask) for c, mask in zip(classes, masks)])
    return OutputTargets([BoxTarget(c + BACKGROUND_CLASSES, box, warn=False) for c, box in zip(classes, boxes)])


def load_object_set(split: Any, count: int, device: torch.device, task: str = "segmentation") -> EvalSet:
    """The (image, object) pairs of the first ``count`` images of ``split`` (a dataset with
    ``get_objects``, e.g. "scenes"), on the device, in image order then object order. ``task``: what
    each pair's target is: ``SegmentationTarget(class, the object's mask)`` for a segmenter,
    ``BoxTarget(class, the object's box)`` for a detector."""
    if not callable(getattr(split, "get_objects", None)):
        raise ValueError(f"the object track needs per-object masks (get_objects); {type(split).__name__} has none")
    indices = torch.arange(min(count, len(split)))
    images, _, _ = split.get_batch(indices)
    objects = split.get_objects(indices)
    image, slot = torch.nonzero(objects["object_labels"] >= 0, as_tuple=True)  # every object of every image
    classes = objects["object_labels"][image, slot]
    instances = objects["instances"][image].long()
    target = instances == (slot + 1)[:, None, None]
    others = (instances > 0) & ~target
    boxes = objects["object_boxes"][image, slot]
    targets = object_targets(task, classes.tolist(), target.to(device), boxes.tolist())
    return EvalSet(
        images=images[image].to(device), labels=classes.to(device), masks=target.to(device),
        boxes=boxes[:, None].to(device),
        mean=tuple(split.mean), std=tuple(split.std), classes=list(split.classes),
        targets=targets, other_masks=others.to(device),
    )


class ObjectStream(EvalStream):
    """The object track's evaluation set as a stream of one block (see the module docstring);
    ``count`` counts images, the block holds their pairs."""

    def __init__(self, split: Any, count: int, block: int, device: torch.device, batch_size: int | None = None,
                 task: str = "segmentation"):
        super().__init__(split, count, block, device, batch_size)
        self.task = task

    @property
    def first(self) -> EvalSet:
        if self._first is None:
            self._first = load_object_set(self.split, self.count, self.device, self.task)
        return self._first

    def blocks(self) -> Iterator[EvalSet]:
        yield self.first
