"""Run a benchmark grid: train or load each model, explain, score, and commit every cell.

The grid is dataset x backbone x kind x variant x seed. For each model: a "model" cell (accuracy,
training time), then one cell per applicable method (maps of the evaluation images, deletion /
insertion, localization, time per image). After all seeds of a (dataset, backbone, kind): one
stability cell per method, comparing every pair of seeds (and variants) on the same images.
Each cell commits in its own transaction, so an interrupted run resumes where it stopped.

Scale: the evaluation images stream through each model in blocks of ``eval.block_images`` on the
device (:class:`EvalStream`), so peak memory does not grow with ``eval.images``. Each block is explained
and scored; the blocks' rows are joined exactly (``camzoo.metrics.combine_blocks``); per-image values
are kept for every image, maps only for the first ``eval.keep_maps`` images (the gallery, report.html's
browser and cross-seed stability read those). A ``[[models]]`` entry with its own ``image_size`` or
``mean``/``std`` gets an evaluation stream of its own (the same images, prepared for it).
"""

from __future__ import annotations

import hashlib
import platform
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sized

import numpy as np
import torch

from .._version import __version__
from ..modelutil import resolve_device
from .cost import PEAK_METRIC, PeakMemory
from .evaluation import (EvalSet, EvalStream, Renormalised, cat_padded, explain_block, fingerprint, first_images,
                         score_block)
from .plan import MODEL_CELL, BenchPlan, DatasetSpec, ModelJob, StabilityGroup
from .shards import ShardedStore, Worker, merge_shards
from .sources import ModelSource
from .store import CellKey, ResultsStore


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
        # (dataset, image size, mean, std) -> (test split, its stream) of [[models]] entries prepared their own way
        self._entry_data: dict[tuple, tuple[Any, EvalStream]] = {}

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
            splits: dict[str, tuple[Any, Any, EvalStream]] = {}
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
    def _stream(self, split: Any) -> EvalStream:
        plan = self.plan
        return EvalStream(split, plan.eval_images, plan.block_images, self.device, plan.batch_size)

    def _load_dataset(self, dataset: DatasetSpec, needs_train: bool = True):
        train_split = dataset.load("train") if needs_train else None  # loaded models are not trained
        test_split = dataset.load("test")
        stream = self._stream(test_split)
        first = stream.first
        if first.masks is None and first.boxes is None:
            self.echo(f"dataset {dataset.name}: no masks or boxes, so the localization columns and the oracle "
                      "control are left out")
        if not self.store.is_done(self.run_id, dataset.gallery_key):
            self._write_gallery(dataset, stream)
        return train_split, test_split, stream

    def _write_gallery(self, dataset: DatasetSpec, stream: EvalStream) -> None:
        """The dataset's image-set cell: the fingerprint of every evaluation image (one pass over the
        blocks), and the first ``eval.keep_maps`` images with their ground truth for report.html's
        browser (the gallery plot shows the first ``eval.gallery_images`` of those)."""
        from ..inputs import to_display_images

        keep = min(self.plan.keep_maps, stream.count)
        digest, labels, kept = hashlib.sha256(), [], []
        for block in stream.blocks():
            fingerprint(block.images, digest=digest)
            labels.append(block.labels.cpu())
            if block.start < keep:
                kept.append(first_images(block, keep - block.start))
        labels_all = torch.cat(labels)
        kept = kept or [first_images(stream.first, 0)]  # eval.keep_maps = 0: no image is kept
        images = torch.cat([block.images for block in kept])
        first = stream.first
        arrays = {
            "images": to_display_images(images[:min(self.plan.gallery_images, keep)], first.mean, first.std),
            "labels": labels_all[:min(self.plan.gallery_images, keep)].numpy(),
            "class_names": np.array(first.classes),
            "fingerprint": np.array(fingerprint(labels_all, digest=digest)),
            # the first keep_maps evaluation images and their ground truth, for report.html's per-image browser
            "eval_images": to_display_images(images, first.mean, first.std),
            "eval_labels": labels_all[:keep].numpy(),
            **{f"eval_{name}": cat_padded([getattr(block, name) for block in kept]).cpu().numpy()
               for name in ("masks", "boxes") if getattr(first, name) is not None},
        }
        self._write(dataset.gallery_key, {"eval_images": (float(stream.count), None)}, arrays)

    def _prepared(self, job: ModelJob, model, test_split, stream: EvalStream) -> tuple[Any, EvalStream]:
        """The test split and stream a ``[[models]]`` entry sees: the dataset's, or — with its own
        image size or mean/std (:meth:`ModelSource.normalisation`) — the same images prepared for it."""
        from .validate import split_options

        source = job.source
        if source is None:
            return test_split, stream
        options = split_options(job.dataset.as_config(), "test")
        mean, std = source.normalisation(model, test_split, explicit="mean" in options or "std" in options)
        size = source.image_size or job.dataset.image_size
        if size == job.dataset.image_size and (mean, std) == (tuple(test_split.mean), tuple(test_split.std)):
            return test_split, stream
        key = (job.dataset.name, size, mean, std)
        if key not in self._entry_data:
            split = test_split if size == job.dataset.image_size else replace(job.dataset, image_size=size).load("test")
            if (mean, std) != (tuple(split.mean), tuple(split.std)):
                split = Renormalised(split, mean, std)
            self._entry_data[key] = (split, self._stream(split))
        return self._entry_data[key]

    # --- one model ------------------------------------------------------------------------------
    def _checkpoint_dir(self, job: ModelJob) -> Path:
        digest = hashlib.sha256(repr(sorted(job.train.fingerprint().items())).encode()).hexdigest()[:10]
        return self.out_dir / "models" / f"{job.label.replace('/', '-')}-{digest}"

    def _run_model_job(self, job: ModelJob, train_split, test_split, stream: EvalStream) -> None:
        from .. import metrics
        from ..batchnorm_folding import fold_batchnorm
        from ..inference import predict
        from ..train import train

        if job.source is not None:  # a [[models]] checkpoint: loaded, never trained
            model, result = job.source.load(self.device), None
        else:
            result = train(job.train, train_split, self._checkpoint_dir(job))
            model = result.model
        test_split, stream = self._prepared(job, model, test_split, stream)
        if not self.store.is_done(self.run_id, job.key(MODEL_CELL)):
            logits, labels = predict(model, test_split, self.plan.batch_size, self.device)
            scores = metrics.accuracy(logits, labels)
            cell = {name: (float(scores[name]), None) for name in ("top1", "top5") if name in scores}
            cell["top1"] = (float(scores["top1"]), scores["correct"].float().cpu().numpy())
            if result is not None:
                cell["train_seconds"] = (result.total_train_time_s, None)
                cell["train_loss"] = (result.train_loss, None)
            # the evaluation images are the first N of the test split: the kept ones' logits, for report.html
            kept = min(stream.count, self.plan.keep_maps)
            self._write(job.key(MODEL_CELL), cell, {"eval_logits": logits[:kept].cpu().numpy()})
        pending = {m for m in job.methods if not self.store.is_done(self.run_id, job.key(m))}
        groups = [group for group in ([m for m in g if m in pending] for g in job.groups) if group]
        if groups:
            # the games' forwards run on a copy with BatchNorm folded into the convolutions (docs/benchmark.md)
            self._score_model(job, model, fold_batchnorm(model), groups, stream)

    def _score_model(self, job: ModelJob, model, scorer, groups: list[list[str]], stream: EvalStream) -> None:
        """Explain and score every block with every pending method, then write one cell per method: the
        blocks' rows joined (``metrics.combine_blocks``), the maps of the first ``eval.keep_maps`` images."""
        from .. import metrics

        source: ModelSource | None = job.source
        reshape = source.reshape_function() if source is not None else None
        parts: dict[str, list[dict]] = {m: [] for group in groups for m in group}
        kept: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in parts}
        seconds: list[list[float]] = [[] for _ in groups]
        peaks = [0.0 for _ in groups]
        metric_seconds: dict[str, dict[str, float]] = {m: {} for m in parts}  # the reliability card's cost
        labels = []
        # eval.reliability = "full": every method also explained and scored under MetaQuantus' perturbations
        full = [g for g in ([m for m in group if self.plan.settings_for(m).reliability == "full"] for group in groups)
                if g]
        perturbed: list = []  # one camzoo.bench.perturbation.PerturbedBlock per block
        for block in stream.blocks():
            labels.append(block.labels.cpu())
            model_memo: dict = {}  # what every cell of this model shares on this block (unperturbed scores, grids)
            for index, group in enumerate(groups):
                # a shared pass's time and peak memory are recorded for each of its methods: its forward
                # and backward dominate, so they are close to what each method costs alone (docs/benchmark.md)
                with PeakMemory(self.device) as peak:
                    explained, timed = explain_block(model, block, group, self.plan.batch_size, self.device,
                                                     job.layers, reshape, warm_up=block.start == 0)
                seconds[index] += timed
                peaks[index] = max(peaks[index], peak.megabytes)
                for method in group:
                    maps, raw = explained.pop(method)
                    parts[method].append(self._score(job, method, scorer, block, maps, model_memo, reshape,
                                                     metric_seconds[method]))
                    keep = min(self.plan.keep_maps - block.start, maps.shape[0])
                    if keep > 0:
                        kept[method].append((maps[:keep].half().cpu(), raw[:keep].float().cpu().clone()))
            if full:  # after every method: the passes replay the grids the unperturbed cells played
                from .perturbation import perturbed_block

                perturbed.append(perturbed_block(model, scorer, block, full, self.plan.settings_for, layers=job.layers,
                                                 reshape=reshape, batch_size=self.plan.batch_size, device=self.device,
                                                 model_memo=model_memo))
        labels_all = torch.cat(labels)
        for index, group in enumerate(groups):
            for method in group:
                cell = metrics.combine_blocks(parts.pop(method), labels_all)
                cell["ms_per_image"] = (1000.0 * float(np.median(seconds[index])), None)
                cell[PEAK_METRIC] = (peaks[index], None)
                maps = kept.pop(method)
                arrays = {"maps": torch.cat([m for m, _ in maps]).numpy(),
                          "raw_maps": torch.cat([r for _, r in maps]).numpy()} if maps else {}
                timed = metric_seconds.pop(method)  # seconds per evaluation image, per metric
                arrays["metric_names"] = np.array(list(timed), dtype=str)
                arrays["metric_seconds"] = np.array(list(timed.values()), dtype=np.float64) / max(len(labels_all), 1)
                if perturbed:
                    from .perturbation import perturbed_arrays

                    arrays.update(perturbed_arrays(perturbed, method, reference=cell))
                self._write(job.key(method), cell, arrays)

    def _score(self, job: ModelJob, method: str, scorer, block: EvalSet, maps: torch.Tensor, model_memo: dict,
               reshape: Callable | None, seconds: dict[str, float] | None = None) -> dict:
        """One method's rows on one block; the controls share the block's memo (only the first block's
        memo lives for the whole run, so it keeps their per-image tables no longer than needed)."""
        return score_block(scorer, block, method, maps, self.plan.settings_for(method), model_memo, block.memo,
                           job.layer(method), reshape, seconds)

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
