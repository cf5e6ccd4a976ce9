"""The parts track: every method row of a model on the ``parts`` dataset scored with the FunnyBirds
protocol (camzoo.metrics.parts), its threshold chosen on a calibration split.

Why a stream of its own: the protocol asks the model about exact interventions (the same scene
re-rendered with parts or distractors left out), so the evaluation set must carry, besides its
images, their part maps and a renderer; and the threshold that decides which parts a map marks
important is chosen on other images than those it is reported on (the ``val`` split's first images:
the calibration split), as WSOL-right asks of anything tuned. The rest of a cell (accuracy,
deletion/insertion, localization against the bird's mask, the games) is the classification track's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .evaluation import EvalSet, EvalStream, load_eval_set


def is_parts_split(split: Any) -> bool:
    """Whether a split is a parts world (it can re-render its images with parts left out)."""
    return callable(getattr(split, "render", None)) and getattr(split, "part_maps", None) is not None


@dataclass(frozen=True)
class PartsTrack:
    """What the parts metrics read from an evaluation set: its own images as a ``PartsSet`` and the
    calibration split's, both on the device."""

    test: Any  # camzoo.metrics.parts.PartsSet
    calibration: Any


def parts_set(split: Any, count: int, device: torch.device, loaded: EvalSet | None = None) -> Any:
    """The first ``count`` images of a parts split as a ``camzoo.metrics.parts.PartsSet`` on ``device``:
    its images, labels, part maps and distractor counts, and a renderer of its interventions.
    ``loaded``: those images already on the device (the evaluation set's), used as they are."""
    from ..metrics.parts import PartsSet

    indices = torch.arange(min(count, len(split)))
    images, labels = (loaded.images, loaded.labels) if loaded is not None else split.get_batch(indices)[:2]

    def render(positions: torch.Tensor, removed_parts: torch.Tensor, removed_background: torch.Tensor) -> torch.Tensor:
        chosen = indices[positions.cpu()]
        pixels, _ = split.render(chosen, removed_parts.cpu(), removed_background.cpu())
        return split.normalise(pixels).to(device)

    return PartsSet(images=images.to(device), labels=labels.to(device), part_maps=split.part_maps[indices].to(device),
                    background_counts=split.background_counts[indices].to(device), table=split.class_table.to(device),
                    max_background=int(split.max_background), render=render)


def calibration_split(spec: Any, image_size: int) -> Any:
    """The split the parts threshold is chosen on: the dataset's ``val`` split at ``image_size``."""
    from dataclasses import replace

    return replace(spec, image_size=image_size).load("val")


class PartsStream(EvalStream):
    """A parts split's evaluation images as one block that carries the parts track (see the module
    docstring); ``calibration(image_size)`` loads the split the threshold is chosen on (once, on first use)."""

    def __init__(self, split: Any, count: int, block: int, device: torch.device, batch_size: int | None = None, *,
                 calibration: Callable[[int], Any]):
        super().__init__(split, count, max(block, count), device, batch_size)
        self._calibration = calibration

    @property
    def first(self) -> EvalSet:
        if self._first is None:
            found = load_eval_set(self.split, self.count, self.device, 0, self.batch_size)
            calibration = self._calibration(int(self.split.image_size))
            found.parts = PartsTrack(parts_set(self.split, self.count, self.device, loaded=found),
                                     parts_set(calibration, self.count, self.device))
            self._first = found
        return self._first

    def blocks(self) -> Iterator[EvalSet]:
        yield self.first
