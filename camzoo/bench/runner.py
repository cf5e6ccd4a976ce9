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

import platform
import socket
from functools import partial
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sized

import numpy as np
import torch

from .._version import __version__
from ..modelutil import resolve_device
from .jobs import JobCells
from .plan import BenchPlan, ModelJob
from .shards import ShardedStore, Worker, merge_shards
from .stability_cells import stability_cell
from .store import CellKey, ResultsStore


class BenchRunner:
    """Executes a :class:`~camzoo.bench.plan.BenchPlan` into one results directory; safe to rerun
    (finished cells are skipped). The grid is the plan's: the runner keeps no list of its own. It
    orchestrates and owns the store; what a cell holds is computed elsewhere (camzoo.bench.jobs for a
    model job's cells, camzoo.bench.stability_cells for a stability cell)."""

    def __init__(self, plan: BenchPlan, out_dir: str | Path, progress: bool = True,
                 echo: Callable[[str], None] = print, worker: Worker | None = None,
                 job_seconds: Mapping[str, float] | None = None):
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
        # each job's estimated seconds by label (camzoo.bench.estimate): the bar then counts them, so its
        # ETA is the run's remaining time; None: it counts jobs
        self.job_seconds = dict(job_seconds or {})
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
        """Store the run: its config (the only reader of ``plan.config``), where it ran, the content
        digests of its inputs and the cells it plans. When the store holds a run of the same config on
        other inputs (a checkpoint retrained in place, a corrected classes.txt), say which inputs changed:
        this run's cells are computed anew, never taken from that one."""
        plan = self.plan
        found = provenance(self.device_label, self.run_id, self.worker.world_size)
        found.update(config_hash=plan.config_hash, inputs=dict(plan.inputs))
        if isinstance(self.store, ResultsStore):
            self._say_changed_inputs(self.store)
        self.store.record_run(self.run_id, dict(plan.config), found, planned=plan.cell_keys())

    def _say_changed_inputs(self, store: ResultsStore) -> None:
        """One line naming the inputs that differ from the latest run of the same config, if any."""
        from .fingerprint import changed_inputs

        runs = store.runs()
        earlier = [run for run in runs if run["provenance"].get("config_hash", run["run_id"]) == self.plan.config_hash]
        if not earlier or any(run["run_id"] == self.run_id for run in runs):
            return  # a new config, or this run resumed
        before = earlier[-1]
        recorded = before["provenance"].get("inputs")
        changed = changed_inputs(recorded, self.plan.inputs) if recorded is not None else []
        said = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        self.echo(f"camzoo bench: inputs changed since run {before['run_id']} of the same config in {self.out_dir} "
                  f"({said or 'that run did not record the content of its inputs'}): this is run {self.run_id}, its "
                  f"cells are computed anew (the earlier run stays in the store: camzoo report {self.out_dir} --run "
                  f"{before['run_id']})")

    def run_models(self, jobs: Iterable[ModelJob]) -> None:
        """Train (or reuse, or load) each model and write its model and method cells, each as soon as it is
        computed; finished cells are skipped. ``jobs`` may be a list or an iterator that hands out jobs as
        they are claimed (several ranks). The bar counts cells (with ``job_seconds``: each job's estimated
        seconds shared among its cells), and its text says which job and what step is running, so it
        moves within a model."""
        from tqdm.auto import tqdm

        done = partial(self.store.is_done, self.run_id)
        write = partial(commit_cell, self.store, self.run_id, device=self.device_label, worker=self.worker.label)
        cells = JobCells(self.plan, self.device, self.out_dir / "models", self.echo)
        rank = f" [rank {self.worker.rank}/{self.worker.world_size}]" if self.worker.world_size > 1 else ""
        seconds = self.job_seconds  # estimated seconds of each job: the bar counts this rank's share of those left
        if seconds:
            total = sum(seconds.get(job.label, 0.0) for job in self.pending_jobs()) / self.worker.world_size
            bar = tqdm(total=total, desc=f"camzoo bench{rank}", disable=not self.progress, dynamic_ncols=True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, ~{remaining} left {postfix}")
        else:
            total = (sum(sum(not done(key) for key in job.cell_keys) for job in jobs)
                     if isinstance(jobs, Sized) else None)
            bar = tqdm(total=total, desc=f"camzoo bench{rank}", unit="cell", disable=not self.progress,
                       dynamic_ncols=True)
        try:
            for job in jobs:
                bar.set_postfix_str(job.label)
                pending = {key for key in job.cell_keys if not done(key)}
                # what the bar counts for this job: its estimated seconds, or its cells left
                share = seconds.get(job.label, 0.0) if seconds else len(pending)
                counted = 0.0
                if pending:
                    step = partial(_say_step, bar, job.label)
                    for key, cell, arrays in cells.compute(job, done, progress=step):
                        write(key, cell, arrays)
                        if key in pending:  # a cell of the job (not the dataset's gallery)
                            bar.update(share / len(pending) if seconds else 1)
                            counted += share / len(pending) if seconds else 1
                if share - counted > 1e-9:
                    bar.update(share - counted if seconds else int(round(share - counted)))
        finally:
            bar.close()

    def run_stability(self) -> None:
        """One stability cell per (dataset, backbone, kind, method): compares the stored maps of every
        model of the group (a group whose maps are not all there yet waits for a later run)."""
        write = partial(commit_cell, self.store, self.run_id, device=self.device_label, worker=self.worker.label)
        for group in self.plan.stability:
            for method in group.methods:
                if self.store.is_done(self.run_id, group.key(method)):
                    continue
                where = {"dataset": group.dataset.key, "backbone": group.backbone, "kind": group.kind, "method": method}
                maps, raw = ([array for _, array in self.store.arrays(self.run_id, name, **where)]
                             for name in ("maps", "raw_maps"))
                cell = stability_cell(method, maps, raw, self.device)
                if cell is not None:  # one model only: nothing to compare
                    write(group.key(method), cell)

    def pending_jobs(self) -> list[ModelJob]:
        """The plan's model jobs that still lack a cell, in plan order."""
        return [job for job in self.plan.jobs if not all(self.store.is_done(self.run_id, key) for key in job.cell_keys)]


def _say_step(bar: Any, label: str, step: str) -> None:
    """The bar's text: the job, and what it is doing now (redrawn, so the elapsed time moves too)."""
    bar.set_postfix_str(f"{label}: {step}")


def commit_cell(store: ResultsStore | ShardedStore, run_id: str, key: CellKey,
                metrics: Mapping[str, tuple[float | None, np.ndarray | None]],
                arrays: Mapping[str, np.ndarray] | None = None, *, device: str = "", worker: str = "") -> None:
    """Commit one cell. Every number must be an entry of the metrics table (camzoo.metrics.METRICS),
    so that the report knows its meaning, direction and range."""
    from ..metrics import METRICS

    unregistered = sorted(name for name in metrics if name not in METRICS)
    if unregistered:
        raise ValueError(f"cell {key.as_tuple()} holds numbers that are not in the metrics table: "
                         f"{unregistered}; register them with camzoo.metrics.register_metric")
    store.write_cell(run_id, key, metrics, arrays, code_version=__version__, device=device, worker=worker)


def provenance(device_label: str, run_id: str, world_size: int) -> dict[str, Any]:
    """Where and with what a run ran (stored with it; not part of its identity)."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # the installed version, without importing timm (4.5 s here; the CIFAR grids never use it)
        timm_version = version("timm")
    except PackageNotFoundError:
        timm_version = "not installed"
    return {
        "camzoo": __version__, "torch": torch.__version__, "timm": timm_version,
        "python": platform.python_version(), "device": device_label, "host": socket.gethostname(),
        "run_id": run_id, "world_size": world_size,
    }
