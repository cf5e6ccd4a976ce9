"""``camzoo explain --task``: what each photo's maps explain for a segmenter or a detector.

Why apart from explain.py: a classifier gets one map per photo for one class, but a segmenter's
map explains a class over a region (a ``--mask`` or the region it predicts) and a detector's
explains one box, so a detector's photo gives one map per detected box (the photo repeated once
per box in the batch, each copy with its own ``BoxTarget``). This module reads and checks the
options of those tasks, and turns each batch of photos into the images, targets and drawing
(box, mask outline) of every map to write.

Coordinates: ``--box`` is in the photo's own pixels (as an image viewer shows them, EXIF rotation
applied); ``--mask`` is a picture of the photo, resized (nearest) to what the model sees. Boxes
printed and written to the manifest are in the photo's own pixels too.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

TASKS = ("classification", "segmentation", "detection")
DEFAULT_SCORE = 0.5
PROBE_SIZE = (64, 64)  # a blank this size checks a model with no fixed input size, and the methods on it

Box = tuple[float, float, float, float]


def resolve_task(option: str | None, model: Any) -> str:
    """--task, else the model's ``task`` attribute (camzoo sets it on torchvision segmenters and
    detectors), else classification; a --task that contradicts the model's own is refused."""
    own = getattr(model, "task", None)
    if option is not None and own in TASKS and option != own:
        raise click.BadParameter(f"--task {option}, but this model is a {own} model; drop --task",
                                 param_hint="--task")
    return option or (own if own in TASKS else "classification")


def parse_box(text: str | None) -> Box | None:
    """``x0,y0,x1,y1`` (pixels of the photo, x0 < x1, y0 < y1) -> a tuple; a usage error otherwise."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise click.BadParameter(f"{text!r} is not x0,y0,x1,y1: four pixel coordinates >= 0, e.g. 10,20,110,95",
                                 param_hint="--box")
    if values[0] >= values[2] or values[1] >= values[3]:
        raise click.BadParameter(f"{text!r} is an empty box: it needs x0 < x1 and y0 < y1 (x0,y0 is the top-left "
                                 "corner, x1,y1 the bottom-right one)", param_hint="--box")
    return values  # type: ignore[return-value]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image as (H, W) bool, nonzero = inside (a palette PNG by its indices, colour by any
    channel); a usage error for a file that cannot be read or holds no inside pixel."""
    from PIL import Image, UnidentifiedImageError

    from ..io import display_path

    try:
        with Image.open(path) as image:
            image.load()
            values = np.asarray(image if image.mode in ("1", "L", "P", "I", "I;16", "F") else image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise click.BadParameter(f"cannot read {display_path(path)!r} as a mask image: {err}",
                                 param_hint="--mask") from err
    mask = values != 0 if values.ndim == 2 else (values != 0).any(axis=-1)
    if not mask.any():
        raise click.BadParameter(f"{display_path(path)!r} has no nonzero pixel: a mask marks the region to explain "
                                 "with nonzero pixels", param_hint="--mask")
    return mask


def check_task_options(task: str, *, masks: Sequence[Any], box: Box | None, targets: Sequence[str],
                       score: float | None, max_boxes: int | None) -> None:
    """Refuse options that do not belong to ``task``, and the ones a task needs but lacks."""
    def refuse(option: str, owner: str, why: str = "") -> None:
        raise click.BadParameter(f"{option} is for --task {owner}, and this run's task is {task}{why}",
                                 param_hint=option)

    if task != "segmentation" and masks:
        refuse("--mask", "segmentation")
    if task != "detection":
        for option, value in (("--box", box), ("--score", score), ("--max-boxes", max_boxes)):
            if value is not None:
                refuse(option, "detection")
    if task == "segmentation" and not targets:
        raise click.UsageError("--task segmentation needs --target CLASS (an index or a name): the class whose "
                               "region is explained")
    if task == "detection" and box is not None:
        if len(targets) != 1:
            raise click.BadParameter("--box needs exactly one --target CLASS: the label of the object in the box",
                                     param_hint="--target")
        if score is not None:
            raise click.BadParameter("--score picks detected boxes, and --box gives the box to explain; drop one",
                                     param_hint="--score")


def check_box_inside(box: Box, files: Sequence[Path]) -> None:
    """A usage error naming the first photo that ``box`` does not fit inside (read at reduced size:
    only its own size is needed). Unreadable photos are left to the run, which lists them."""
    from ..inputs import open_image
    from ..io import display_path

    for path in files:
        try:
            with warnings.catch_warnings():  # an animation's note comes when the run reads it
                warnings.simplefilter("ignore")
                height, width = open_image(path, max_size=64)[1]
        except (ValueError, FileNotFoundError):
            continue
        if box[2] > width or box[3] > height:
            raise click.BadParameter(f"{','.join(f'{v:g}' for v in box)} lies outside {display_path(path)} "
                                     f"({width}x{height} px): give it in that photo's pixels", param_hint="--box")


def outputs_of(model: Any, images: Any, selector: Any = None) -> Any:
    """Each image's output, read as the methods read it (a segmenter's (B, C, H, W) scores, its
    ``out`` for torchvision's; a detector's list of dicts of boxes, labels and scores), without grad."""
    import torch

    from ..methods.objectives import per_image_outputs
    from ..methods.outputs import forward_raw

    with torch.no_grad():
        return per_image_outputs(forward_raw(model.eval(), images), selector)


def class_count(model: Any, task: str, outputs: Any) -> int | None:
    """How many classes ``--target`` may name: the segmenter's output channels; the detector's
    ``num_classes`` (background included), None when it does not say."""
    if task == "segmentation":
        if not hasattr(outputs, "ndim") or outputs.ndim != 4:
            raise ValueError(f"a segmenter must return (B, C, H, W) class scores; got {type(outputs).__name__} "
                             f"{tuple(getattr(outputs, 'shape', ()))} (--output selects them)")
        return int(outputs.shape[1])
    count = getattr(model, "num_classes", None)
    return count if isinstance(count, int) else None


def probe_target(task: str, size: tuple[int, int], device: Any = "cpu") -> Any:
    """A target the methods can be tried with on a blank image of ``size`` (None: the predicted class)."""
    from ..targets import BoxTarget, SegmentationTarget

    if task == "segmentation":
        import torch

        return SegmentationTarget(0, mask=torch.ones(size, dtype=torch.bool, device=device))
    if task == "detection":
        return BoxTarget(1, (0.0, 0.0, float(size[1]), float(size[0])))
    return None


@dataclass
class Item:
    """One map to write: which photo of the batch, what it explains, and what its overlay draws."""

    image: int  # which photo of the batch (maps are in the order of the items, one per row of the images)
    target: Any  # a class index, or a camzoo.targets target
    suffix: str = ""  # added to the overlay's name: "_box0" for a photo's first box
    box: Box | None = None  # in the model's input pixels (drawn on the overlay)
    outline: Any = None  # (H, W) bool at the model's input size (its boundary is drawn)
    photo_box: Box | None = None  # ``box`` in the photo's own pixels (printed, and in the manifest)
    box_score: float | None = None  # the detector's score of the box
    label: int | None = None  # the box's label


@dataclass
class Work:
    """What the explainers run on for one batch of photos."""

    images: Any  # (N, C, H, W): the batch, or a photo repeated once per box
    targets: Any  # None (predicted class), or one target per row of ``images``
    items: list[Item]


@dataclass
class TaskPlan:
    """The per-task options, resolved, and how a batch becomes :class:`Work`."""

    task: str
    targets: list[int] | None  # one class per photo (None: predicted / every detected box)
    masks: list[np.ndarray] | None = None  # one per photo, at the photo's own size
    box: Box | None = None
    score: float = DEFAULT_SCORE
    max_boxes: int = 10
    selector: Any = None  # --output: where the model's output holds what the targets read

    def work(self, model: Any, batch: Any, indices: Sequence[int], own_sizes: Sequence[tuple[int, int]],
             say: Callable[[int, str], None]) -> Work:
        """The images, targets and items for ``batch`` (photos ``indices`` of the run, of own size
        (H, W) each); ``say(k, text)`` reports why photo k gets no map."""
        if self.task == "classification":
            targets = None if self.targets is None else [self.targets[k] for k in indices]
            return Work(batch, targets, [Item(j, None if targets is None else targets[j]) for j in range(len(indices))])
        if self.task == "segmentation":
            return self._segmentation(model, batch, indices, say)
        return self._detection(model, batch, indices, own_sizes, say)

    def _segmentation(self, model: Any, batch: Any, indices: Sequence[int], say: Callable[[int, str], None]) -> Work:
        import torch
        import torch.nn.functional as F

        from ..targets import SegmentationTarget

        size = tuple(batch.shape[-2:])
        if self.masks is None:  # the predicted regions: drawn, and checked for being empty
            predicted = outputs_of(model, batch, self.selector).argmax(1)
        rows, targets, items = [], [], []
        for j, k in enumerate(indices):
            category = self.targets[k]  # type: ignore[index]
            if self.masks is not None:
                given = torch.as_tensor(self.masks[k])[None, None].float()
                region = F.interpolate(given, size=size, mode="nearest")[0, 0].bool().to(batch.device)
            else:
                region = predicted[j] == category
            if not region.any():
                say(k, f"class {category} is predicted nowhere in this image, so there is no region to explain; "
                       "give its region with --mask")
                continue
            rows.append(j)
            targets.append(SegmentationTarget(category, mask=region))
            items.append(Item(j, targets[-1], outline=region.cpu().numpy()))
        return Work(batch[rows], targets, items)

    def _detection(self, model: Any, batch: Any, indices: Sequence[int], own_sizes: Sequence[tuple[int, int]],
                   say: Callable[[int, str], None]) -> Work:
        from ..targets import BoxTarget

        height, width = batch.shape[-2:]
        rows, targets, items = [], [], []
        found = [] if self.box is not None else outputs_of(model, batch, self.selector)
        for j, k in enumerate(indices):
            sy, sx = height / own_sizes[j][0], width / own_sizes[j][1]
            if self.box is not None:
                label = self.targets[0]  # type: ignore[index]
                chosen = [(label, None, (self.box[0] * sx, self.box[1] * sy, self.box[2] * sx, self.box[3] * sy))]
            else:
                chosen = self._detected(found[j], None if self.targets is None else self.targets[k], k, say)
            for n, (label, score, box) in enumerate(chosen):
                rows.append(j)
                targets.append(BoxTarget(label, box))
                photo = (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)
                items.append(Item(j, targets[-1], suffix=f"_box{n}", box=box, photo_box=photo,
                                  box_score=score, label=label))
        return Work(batch[rows], targets, items)

    def _detected(self, detections: dict[str, Any], label: int | None, k: int,
                  say: Callable[[int, str], None]) -> list[tuple[int, float, Box]]:
        """The detections to explain: score >= --score (of class ``label`` if given), best first,
        at most --max-boxes."""
        scores, labels, boxes = (detections[key].detach().float().cpu() for key in ("scores", "labels", "boxes"))
        if label is not None:
            keep = labels == label
            scores, labels, boxes = scores[keep], labels[keep], boxes[keep]
        order = scores.argsort(descending=True)
        chosen = [(int(labels[i]), float(scores[i]), tuple(float(v) for v in boxes[i]))
                  for i in order.tolist() if scores[i] >= self.score][: self.max_boxes]
        if not chosen:
            of = f" of class {label}" if label is not None else ""
            if len(scores) == 0:
                say(k, f"the model detects no box{of} in this image")
            else:
                best = float(scores[order[0]])
                say(k, f"no box{of} scores >= {self.score:g} (the best scores {best:.3g}); lower --score, e.g. "
                       f"--score {math.floor(best * 100) / 100:g}, to explain it")
        return chosen  # type: ignore[return-value]


def quiet_probe(call: Callable[[], Any]) -> Any:
    """``call()`` without the warnings a blank image causes (a detector finds no box to match)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()
