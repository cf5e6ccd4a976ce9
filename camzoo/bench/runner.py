"""Run a benchmark grid: train or load each model, explain, score, and commit every cell.

The grid is dataset x backbone x kind x variant x seed. For each model: a "model" cell (accuracy,
training time), then one cell per applicable method (maps of the evaluation images, deletion /
insertion, localization, time per image). After all seeds of a (dataset, backbone, kind): one
stability cell per method, comparing every pair of seeds (and variants) on the same images.
Each cell commits in its own transaction, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized

import numpy as np
import torch

from .._version import __version__
from ..modelutil import resolve_device, synchronize
from .cost import PEAK_METRIC, PeakMemory
from .plan import MODEL_CELL, BenchPlan, DatasetSpec, ModelJob, StabilityGroup
from .shards import ShardedStore, Worker, merge_shards
from .store import CellKey, ResultsStore


@dataclass
class EvalSet:
    """The evaluation images every method of every model explains: the first N of the test split."""

    images: torch.Tensor  # (N,3,H,W) normalised, on the device
    labels: torch.Tensor  # (N,)
    masks: torch.Tensor | None  # (N,H,W) bool
    boxes: torch.Tensor | None  # (N,K,4) NaN-padded
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    # results of map-only metrics by the maps' content, shared by every model on these images (the
    # centre, edges and oracle controls' maps are the same for every model; metrics.score_maps)
    memo: dict = field(default_factory=dict, repr=False, compare=False)


def load_eval_set(test_split, count: int, device: torch.device) -> EvalSet:
    from ..data import loader

    subset = torch.utils.data.Subset(test_split, range(min(count, len(test_split))))
    images, labels, targets = next(iter(loader(subset, batch_size=len(subset), shuffle=False, device=device)))
    return EvalSet(
        images=images, labels=labels, masks=targets.get("mask"), boxes=targets.get("boxes"),
        mean=tuple(test_split.mean), std=tuple(test_split.std), classes=list(test_split.classes),
    )


def fingerprint(*tensors: torch.Tensor) -> str:
    """Short hash of tensors' bytes: proves two runs scored the very same evaluation images."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def explain_all(model, eval_set: EvalSet, method: str, batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Maps of every evaluation image for its true class, the raw maps at the layer's resolution
    (what ``lfi_compat`` stability reads), and the median seconds per image."""
    explained, seconds = explain_group(model, eval_set, [method], batch_size, device)
    maps, raw = explained[method]
    return maps, raw, seconds


def explain_group(model, eval_set: EvalSet, methods: Sequence[str], batch_size: int, device: torch.device,
                  layers: Mapping[str, str | None] | None = None
                  ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """``explain_all`` for several methods at once: ``{method: (maps, raw maps)}`` and the median
    seconds per image of the whole group.

    The gradient family (``methods.multi.shares_one_pass``) shares one forward and one backward per
    batch (``methods.multi.explain_many``); other methods run one after the other. A row
    ``NAME@LAYER`` explains that layer (``methods.split_layer``): the methods are explained per layer,
    the layer passed to ``explain_many``, and returned under their full names. The evaluation
    images are already a validated, normalised batch on the device, so ``camzoo.explain``'s input
    handling would only repeat work. Timing: one untimed call on the first batch's shape (layer
    detection, lazy initialisation and allocator warm-up are not per-image costs), then the median
    over batches of seconds per image, so a small evaluation set is not dominated by one slow call.
    """
    from ..methods import split_layer
    from ..methods.multi import explain_many

    truth = {"mask": eval_set.masks, "boxes": eval_set.boxes}
    by_layer: dict[str | None, dict[str, str]] = {}  # layer -> {method name: row name}
    for row in methods:  # ``layers`` (the plan's): a row's layer, or its model entry's
        name, layer = split_layer(row)
        layer = layers.get(row, layer) if layers else layer
        by_layer.setdefault(layer, {})[name] = row

    def chunk(start: int, stop: int):
        ground_truth = {k: v[start:stop] for k, v in truth.items() if v is not None}
        found = {}
        for layer, rows in by_layer.items():
            results = explain_many(model, eval_set.images[start:stop], list(rows), target=eval_set.labels[start:stop],
                                   layer=layer, ground_truth=ground_truth or None)
            found.update({rows[name]: result for name, result in results.items()})
        return found

    chunk(0, batch_size)
    parts: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {m: ([], []) for m in methods}
    per_image_seconds = []
    for start in range(0, eval_set.images.shape[0], batch_size):
        synchronize(device)
        begin = time.perf_counter()
        results = chunk(start, start + batch_size)
        synchronize(device)
        count = min(start + batch_size, eval_set.images.shape[0]) - start
        per_image_seconds.append((time.perf_counter() - begin) / count)
        for name, result in results.items():
            parts[name][0].append(result.maps)
            parts[name][1].append(result.raw)
    explained = {name: (torch.cat(maps), torch.cat(raw)) for name, (maps, raw) in parts.items()}
    return explained, float(np.median(per_image_seconds))


class BenchRunner:
    """Executes a :class:`~camzoo.bench.plan.BenchPlan` into one results directory; safe to rerun
    (finished cells are skipped). The grid is the plan's: the runner keeps no list of its own."""

    def __init__(self, plan: BenchPlan, out_dir: str | Path, progress: bool = True,
                 echo: Callable[[str], None] = print, worker: Worker | None = None):
        if not isinstance(plan, BenchPlan):
            raise TypeError("BenchRunner runs a plan: BenchRunner(camzoo.bench.build_plan(config), out_dir); "
                            f"got {type(plan).__name__}")
        self.plan = plan
        self.out_dir = Path(out_dir)
        self.device = resolve_device(plan.device)
        self.run_id = plan.run_id
        self.device_label = plan.device_label
        self.progress = progress
        self.echo = echo
        self.worker = worker or Worker()
        self._store: ResultsStore | ShardedStore | None = None

    @property
    def store(self) -> ResultsStore | ShardedStore:
        """Opened on first use, so that a config that fails validation leaves nothing on disk. One of
        several ranks writes its own shard (camzoo.bench.shards), a single process the results store."""
        if self._store is None:
            single = self.worker.world_size == 1
            self._store = ResultsStore(self.out_dir) if single else ShardedStore(self.out_dir, self.worker)
        return self._store

    def use_store(self, store: ResultsStore | ShardedStore) -> None:
        """Write to another store from now on (rank 0 turns to the merged store for stability cells)."""
        if self._store is not None and self._store is not store:
            self._store.close()
        self._store = store

    def run(self) -> None:
        """Every model job, then the stability cells (the plan was validated when it was built). A
        distributed run splits these steps over ranks (camzoo.bench.distributed)."""
        try:
            if isinstance(self.store, ResultsStore):
                merge_shards(self.out_dir, self.store)  # cells an earlier distributed attempt finished
            self.record_run()
            self.run_models(self.plan.jobs)
            self.run_stability()
        finally:
            self.close()

    def close(self) -> None:
        """Close the store (SQLite folds its write-ahead log into results.sqlite once the last
        connection closes, so the file alone then holds every cell); ``store`` reopens it on use."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def record_run(self) -> None:
        self.store.record_run(self.run_id, dict(self.plan.config), self._provenance())

    def run_models(self, jobs: Iterable[ModelJob]) -> None:
        """Train (or reuse) each model and write its model and method cells; finished cells are skipped.
        ``jobs`` may be a list or an iterator that hands out jobs as they are claimed (several ranks)."""
        from tqdm.auto import tqdm

        total = len(jobs) if isinstance(jobs, Sized) else None
        bar = tqdm(total=total, desc=f"camzoo bench{self._rank_label()}", unit="job", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            splits: dict[str, tuple[Any, Any, EvalSet]] = {}
            for job in jobs:
                bar.set_postfix_str(job.label)
                name = job.dataset.name
                if not self._job_done(job):
                    if name not in splits:
                        splits[name] = self._load_dataset(job.dataset, needs_train=job.source is None)
                    self._run_model_job(job, *splits[name])
                bar.update(1)
        finally:
            bar.close()

    def run_stability(self) -> None:
        """One stability cell per (dataset, backbone, kind, method): needs the maps of every seed."""
        for group in self.plan.stability:
            self._run_stability(group)

    def pending_jobs(self) -> list[ModelJob]:
        """The plan's model jobs that still lack a cell, in plan order."""
        return [job for job in self.plan.jobs if not self._job_done(job)]

    def _rank_label(self) -> str:
        return f" [rank {self.worker.rank}/{self.worker.world_size}]" if self.worker.world_size > 1 else ""

    def _job_done(self, job: ModelJob) -> bool:
        return all(self.store.is_done(self.run_id, job.key(m)) for m in job.cells)

    def _provenance(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:  # the installed version, without importing timm (4.5 s here; the CIFAR grids never use it)
            timm_version = version("timm")
        except PackageNotFoundError:
            timm_version = "not installed"
        return {
            "camzoo": __version__, "torch": torch.__version__, "timm": timm_version,
            "python": platform.python_version(), "device": self.device_label, "host": socket.gethostname(),
            "run_id": self.run_id, "world_size": self.worker.world_size,
        }

    def _write(self, key: CellKey, metrics: Mapping[str, tuple[float | None, np.ndarray | None]],
               arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Commit one cell. Every number must be an entry of the metrics table (camzoo.metrics.METRICS),
        so that the report knows its meaning, direction and range."""
        from ..metrics import METRICS

        unregistered = sorted(name for name in metrics if name not in METRICS)
        if unregistered:
            raise ValueError(f"cell {key.as_tuple()} holds numbers that are not in the metrics table: "
                             f"{unregistered}; register them with camzoo.metrics.register_metric")
        self.store.write_cell(self.run_id, key, metrics, arrays, code_version=__version__, device=self.device_label,
                              worker=self.worker.label)

    # --- one dataset ----------------------------------------------------------------------------
    def _load_dataset(self, dataset: DatasetSpec, needs_train: bool = True):
        train_split = dataset.load("train") if needs_train else None  # loaded models are not trained
        test_split = dataset.load("test")
        eval_set = load_eval_set(test_split, self.plan.eval_images, self.device)
        if eval_set.masks is None and eval_set.boxes is None:
            self.echo(f"dataset {dataset.name}: no masks or boxes, so the localization columns and the oracle "
                      "control are left out")
        if not self.store.is_done(self.run_id, dataset.gallery_key):
            from ..inputs import to_display_images

            count = self.plan.gallery_images
            arrays = {
                "images": to_display_images(eval_set.images[:count], eval_set.mean, eval_set.std),
                "labels": eval_set.labels[:count].cpu().numpy(),
                "class_names": np.array(eval_set.classes),
                "fingerprint": np.array(fingerprint(eval_set.images, eval_set.labels)),
                # every evaluation image and its ground truth, for report.html's per-image browser
                "eval_images": to_display_images(eval_set.images, eval_set.mean, eval_set.std),
                "eval_labels": eval_set.labels.cpu().numpy(),
                **{f"eval_{name}": truth.cpu().numpy() for name, truth in
                   (("masks", eval_set.masks), ("boxes", eval_set.boxes)) if truth is not None},
            }
            metrics = {"eval_images": (float(eval_set.images.shape[0]), None)}
            self._write(dataset.gallery_key, metrics, arrays)
        return train_split, test_split, eval_set

    # --- one model ------------------------------------------------------------------------------
    def _checkpoint_dir(self, job: ModelJob) -> Path:
        digest = hashlib.sha256(repr(sorted(job.train.fingerprint().items())).encode()).hexdigest()[:10]
        return self.out_dir / "models" / f"{job.label.replace('/', '-')}-{digest}"

    def _run_model_job(self, job: ModelJob, train_split, test_split, eval_set: EvalSet) -> None:
        from .. import metrics
        from ..batchnorm_folding import fold_batchnorm
        from ..inference import predict
        from ..methods import get_method
        from ..metrics import MethodSpec
        from ..train import train

        if job.source is not None:  # a [[models]] checkpoint: loaded, never trained
            model, result = job.source.load(self.device), None
        else:
            result = train(job.train, train_split, self._checkpoint_dir(job))
            model = result.model
        if not self.store.is_done(self.run_id, job.key(MODEL_CELL)):
            logits, labels = predict(model, test_split, self.plan.batch_size, self.device)
            scores = metrics.accuracy(logits, labels)
            cell = {name: (float(scores[name]), None) for name in ("top1", "top5") if name in scores}
            cell["top1"] = (float(scores["top1"]), scores["correct"].float().cpu().numpy())
            if result is not None:
                cell["train_seconds"] = (result.total_train_time_s, None)
                cell["train_loss"] = (result.train_loss, None)
            # the evaluation images are the first N of the test split: their logits, for report.html
            self._write(job.key(MODEL_CELL), cell, {"eval_logits": logits[: eval_set.images.shape[0]].cpu().numpy()})
        pending = {m for m in job.methods if not self.store.is_done(self.run_id, job.key(m))}
        # the games' forwards run on a copy with BatchNorm folded into the convolutions (docs/benchmark.md)
        scorer = fold_batchnorm(model) if pending else model
        model_memo: dict = {}  # what every cell of this model shares (its scores on the unperturbed images)
        for group in job.groups:
            group = [m for m in group if m in pending]
            if not group:
                continue
            # a shared pass's time and peak memory are recorded for each of its methods: its forward
            # and backward dominate, so they are close to what each method costs alone (docs/benchmark.md)
            with PeakMemory(self.device) as peak:
                explained, seconds = explain_group(model, eval_set, group, self.plan.batch_size, self.device,
                                                   job.layers)
            for method in group:
                maps, raw = explained.pop(method)
                # controls only: their maps repeat across models, a method's never do (and the memo
                # keeps each entry's per-image tables for the whole run)
                memo = eval_set.memo if get_method(method).reference else None
                cell = metrics.score_maps(scorer, eval_set.images, maps, eval_set.labels, eval_set.masks,
                                          eval_set.boxes, self.plan.settings_for(method), map_memo=memo,
                                          model_memo=model_memo,
                                          method=MethodSpec(MethodSpec.parse(method).name, job.layer(method)))
                cell["ms_per_image"] = (1000.0 * seconds, None)
                cell[PEAK_METRIC] = (peak.megabytes, None)
                self._write(job.key(method), cell, {"maps": maps.half().cpu().numpy(), "raw_maps": raw.float().cpu().numpy()})

    # --- across seeds ---------------------------------------------------------------------------
    def _lfi_script_sets(self, group: StabilityGroup, method: str, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """What the official LFI-CAM IoU script reads, per seed: the raw maps resized, not re-normalised
        (``metrics.lfi_script_maps``). Stores written before raw maps were kept fall back to ``maps``."""
        from .. import metrics
        from ..methods import get_method

        raw_sets = [raw for _, raw in self.store.arrays(
            self.run_id, "raw_maps", dataset=group.dataset.name, backbone=group.backbone, kind=group.kind,
            method=method)]
        if len(raw_sets) != len(maps):
            return maps
        unit_scale = bool(getattr(get_method(method), "raw_unit_scale", False))
        size = tuple(maps[0].shape[-2:])
        return [metrics.lfi_script_maps(torch.from_numpy(raw).to(self.device), size, unit_scale) for raw in raw_sets]

    def _run_stability(self, group: StabilityGroup) -> None:
        from .. import metrics

        for method in group.methods:
            key = group.key(method)
            if self.store.is_done(self.run_id, key):
                continue
            map_sets = [
                maps for _, maps in self.store.arrays(
                    self.run_id, "maps", dataset=group.dataset.name, backbone=group.backbone, kind=group.kind,
                    method=method)
            ]
            if len(map_sets) < 2:
                continue  # one model only: nothing to compare
            sets = [torch.from_numpy(m.astype(np.float32)).to(self.device) for m in map_sets]
            standard = metrics.pairwise_stability(sets)
            compat = metrics.pairwise_stability(self._lfi_script_sets(group, method, sets), lfi_compat=True)
            # per-image values of every pair (pairs, images): CIs resample pairs, then images
            cell = {
                f"stability_{name}": (float(standard["mean"][name]), standard["per_image"][name].cpu().numpy())
                for name in standard["mean"]
            }
            cell["stability_iou_lfi_compat"] = (float(compat["mean"]["iou"]), compat["per_image"]["iou"].cpu().numpy())
            cell["stability_pairs"] = (float(len(standard["pairs"])), None)
            self._write(key, cell)
