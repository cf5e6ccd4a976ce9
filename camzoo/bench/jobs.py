"""What one model job computes: its model from its source, its model cell, its method cells (and, for a
dataset's first job, the dataset's gallery cell), each handed to the runner as soon as it is computed.

Why apart from the runner: the runner decides which jobs run where and commits cells; this says what a
job's cells are. A job never asks whether its model is trained or loaded: its source
(camzoo.bench.sources) obtains the model, gives the split it is evaluated on and the options of each
method row on it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from .datasets import DatasetData, gallery_cell
from .evaluation import EvalStream
from .objects import ObjectStream
from .parts_track import PartsStream, calibration_split, is_parts_split
from .plan import MODEL_CELL, BenchPlan, ModelJob
from .scoring import Cell, score_model
from .store import CellKey

CellOut = tuple[CellKey, Cell, dict[str, np.ndarray] | None]


def model_cell(model: torch.nn.Module, split: Any, stream: EvalStream, batch_size: int, device: torch.device,
               keep_maps: int, numbers: Mapping[str, tuple[float, None]]) -> tuple[Cell, dict[str, np.ndarray]]:
    """The model cell: accuracy on the test split (per-image top-1 kept), the source's own ``numbers``
    (training time and loss), and the kept evaluation images' logits for report.html; on a planted
    shortcut (camzoo.data.shortcuts) the best constant accuracy too, which a model beats only by using
    the artefact. A segmenter's: its pixel accuracy and mean IoU on the test split; a detector's: its
    box AP at IoU 0.5."""
    from .. import metrics
    from ..inference import predict

    task = getattr(model, "task", "classification")
    if task != "classification":
        from .. import inference

        # the cell's metric -> the evaluation's key
        evaluate, names = ((inference.evaluate_segmentation, {"pixel_accuracy": "accuracy", "miou": "mean_iou"})
                           if task == "segmentation" else (inference.evaluate_detection, {"box_ap50": "ap50"}))
        scores = evaluate(model, split, batch_size, device)
        cell = {name: (float(scores[key]), None) for name, key in names.items()}
        cell.update(numbers)
        return cell, {}

    logits, labels = predict(model, split, batch_size, device)
    scores = metrics.accuracy(logits, labels)
    cell: Cell = {name: (float(scores[name]), None) for name in ("top1", "top5") if name in scores}
    cell["top1"] = (float(scores["top1"]), scores["correct"].float().cpu().numpy())
    if getattr(split, "shortcut_region", None) is not None:  # a planted shortcut: what top1 must beat
        cell["best_constant_accuracy"] = (metrics.best_constant_accuracy(labels), None)
    cell.update(numbers)
    # the evaluation images are the first N of the test split: the kept ones' logits
    kept = min(stream.count, keep_maps)
    return cell, {"eval_logits": logits[:kept].cpu().numpy()}


class JobCells:
    """Computes the cells of model jobs on one device, keeping each dataset's loaded data for the next
    job of the same dataset."""

    def __init__(self, plan: BenchPlan, device: torch.device, models: Path, echo: Callable[[str], None] = print):
        self.plan, self.device, self.models, self.echo = plan, device, models, echo
        self._datasets: dict[str, DatasetData] = {}

    def compute(self, job: ModelJob, done: Callable[[CellKey], bool],
                progress: Callable[[str], None] | None = None) -> Iterator[CellOut]:
        """The cells of ``job`` that are not ``done``, each as soon as it is computed (a method's cell
        as soon as it is scored on the last block); ``progress`` hears what is being done."""
        from ..batchnorm_folding import fold_batchnorm

        plan, data = self.plan, self._datasets.get(job.dataset.key)
        if data is None:
            stream = (partial(self._stream, calibration=partial(calibration_split, job.dataset))
                      if job.dataset.task == "classification" else partial(self._objects, task=job.dataset.task))
            data = self._datasets[job.dataset.key] = DatasetData(job.dataset, stream)
            if not data.annotated:
                self.echo(f"dataset {job.dataset.name}: no masks or boxes, so the localization columns and the "
                          "oracle control are left out")
            if not done(job.dataset.gallery_key):
                yield job.dataset.gallery_key, *gallery_cell(data.stream, plan.keep_maps, plan.gallery_images)
        model, numbers = job.source.obtain(data, self.device, self.models)
        split, stream = job.source.evaluation(model, data)
        if not done(job.key(MODEL_CELL)):
            if progress is not None:
                progress("accuracy")
            yield job.key(MODEL_CELL), *model_cell(model, split, stream, plan.batch_size, self.device, plan.keep_maps,
                                                   numbers)
        pending = {m for m in job.methods if not done(job.key(m))}
        groups = [group for group in ([m for m in g if m in pending] for g in job.groups) if group]
        if groups:  # the games' forwards run on a copy with BatchNorm folded into the convolutions
            for method, cell, arrays in score_model(
                    model, fold_batchnorm(model), stream.blocks(), groups, plan.settings_for, layers=job.layers,
                    reshape=job.source.reshape_function(), batch_size=plan.batch_size, device=self.device,
                    keep_maps=plan.keep_maps, last_start=stream.last_start, progress=progress):
                yield job.key(method), cell, arrays

    def _stream(self, split: Any, calibration: Callable[[int], Any] | None = None) -> EvalStream:
        """The classification track's stream; a parts world's carries the parts track, its threshold
        chosen on ``calibration`` (the dataset's val split, loaded on first use; camzoo.bench.parts_track)."""
        plan = self.plan
        if calibration is not None and is_parts_split(split):
            return PartsStream(split, plan.eval_images, plan.block_images, self.device, plan.batch_size,
                               calibration=calibration)
        return EvalStream(split, plan.eval_images, plan.block_images, self.device, plan.batch_size)

    def _objects(self, split: Any, task: str) -> EvalStream:
        """A segmentation or detection dataset's (image, object) pairs (camzoo.bench.objects)."""
        plan = self.plan
        return ObjectStream(split, plan.eval_images, plan.block_images, self.device, plan.batch_size, task=task)
