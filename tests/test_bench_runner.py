"""The runner orchestrates and owns the store, nothing more: a handful of methods, no branch on trained
versus loaded models, and no config dict read after the plan was built (only stored with the run)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

import camzoo.bench.jobs
import camzoo.bench.runner
from camzoo.bench import specs, validate
from camzoo.bench.config import resolve_config
from camzoo.bench.plan import build_plan
from camzoo.bench.runner import BenchRunner
from camzoo.bench.store import ResultsStore
from helpers import write_folder

MAX_METHODS = 10  # the hard limit of issue 33 (methods, properties and dunder methods together)


def test_the_runner_keeps_few_methods():
    members = [name for name, value in vars(BenchRunner).items()
               if inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod))]
    assert len(members) <= MAX_METHODS, members
    public = {"store", "use_store", "run", "close", "record_run", "run_models", "run_stability", "pending_jobs"}
    assert public <= set(members)  # what the CLI, the distributed ranks and the tests call


@pytest.mark.parametrize("module", [camzoo.bench.runner, camzoo.bench.jobs])
def test_no_branch_on_where_a_model_comes_from(module):
    source = inspect.getsource(module)
    for branch in ("source is None", "source is not None", "train is None", "ModelSource", "TrainedSource",
                   "as_config", "split_options", ".validate", "config["):
        assert branch not in source, branch


class Counted(Mapping[str, Any]):
    """A config that counts how often its keys are read."""

    def __init__(self, data: Mapping[str, Any]):
        self.data, self.reads = dict(data), 0

    def __getitem__(self, key: str) -> Any:
        self.reads += 1
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the run went back to the config after the plan was built")


def loaded_config(tmp_path: Path, seeds: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    """resnet10t checkpoints (one per seed: a stability group) on a 4-class annotated folder, 4 images."""
    folder = write_folder(tmp_path / "photos", per_class=2, side=32)
    checkpoints = []
    for seed in seeds:
        torch.manual_seed(seed)
        checkpoints.append(str(tmp_path / f"{seed}.pth"))
        torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=4).state_dict(), checkpoints[-1])
    return resolve_config(None, overrides={
        "methods": ["gradcam", "random"], "device": "cpu",
        "models": [{"name": "resnet10t", "checkpoints": checkpoints, "image_size": 40}],
        "datasets": [{"name": "annotated", "root": str(folder), "image_size": 32, "options": {}}],
        "eval": {"images": 4, "batch_size": 4, "deletion_steps": 2, "substrates": [], "grid_games": [],
                 "sensitivity": [], "game_images": 4, "gallery_images": 1}})


@pytest.mark.slow
def test_a_run_reads_only_its_plan(tmp_path: Path, monkeypatch):
    """Two loaded checkpoints (a stability group) on an annotated folder: once the plan is built, the
    checker and the specs' parsers are never called, and the config is read once, to be stored."""
    config = loaded_config(tmp_path)
    plan = build_plan(config)
    counted = Counted(plan.config)
    plan = dataclasses.replace(plan, config=counted)
    for name, value in vars(validate).items():
        if inspect.isfunction(value) and value.__module__ == validate.__name__:
            monkeypatch.setattr(validate, name, _refuse)
    for spec in (specs.DatasetSpec, specs.Variant):
        monkeypatch.setattr(spec, "parse", classmethod(_refuse))
    BenchRunner(plan, tmp_path / "out", progress=False, echo=lambda _: None).run()
    assert counted.reads == len(counted)  # one copy, for the store
    with ResultsStore(tmp_path / "out") as store:
        cells = store.cells(plan.run_id)
        (maps,) = {array.shape for _, array in store.arrays(plan.run_id, "maps", method="gradcam")}
    assert {key.method for key in cells} == {"gallery", "model", "gradcam", "random"} and len(cells) == plan.cells
    assert maps == (4, 40, 40)  # the entry's own image size reached the maps


def test_given_each_jobs_estimate_the_bar_counts_seconds_and_shows_the_time_left(tmp_path: Path, capsys):
    """camzoo bench hands the runner each job's estimated seconds (camzoo.bench.estimate): the bar's total
    is the jobs left, so tqdm's ETA is the run's remaining time; finished jobs are not counted."""
    plan = build_plan(loaded_config(tmp_path, seeds=(0,)))
    (job,) = plan.jobs
    BenchRunner(plan, tmp_path / "out", progress=True, echo=lambda _: None, job_seconds={job.label: 42.0}).run()
    shown = capsys.readouterr().err
    assert "42/42" not in shown and "~" in shown and "left" in shown and "100%" in shown
    rerun = BenchRunner(plan, tmp_path / "out", progress=True, echo=lambda _: None, job_seconds={job.label: 42.0})
    assert rerun.pending_jobs() == []  # all finished: nothing is left to count


def test_the_launching_process_estimates_once_and_its_ranks_read_the_numbers(tmp_path: Path, monkeypatch):
    """camzoo bench's estimate for the bar: probed by the launching process only where a person watches
    (a terminal), handed to the ranks through the environment, never probed again by a rank."""
    import json
    import os
    import sys
    from types import SimpleNamespace

    from camzoo.bench import estimate
    from camzoo.cli.bench import _progress_estimate

    config = loaded_config(tmp_path, seeds=(0,))
    calls = []
    fake = SimpleNamespace(total=90.0, device_label="cpu", jobs=[SimpleNamespace(label="a", total=90.0)])
    monkeypatch.setattr(estimate, "estimate", lambda plan, nproc: calls.append(nproc) or fake)
    monkeypatch.delenv(estimate.JOB_SECONDS_ENV, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert _progress_estimate(config, 2, launching=True) is None and calls == []  # a log: no probe
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert _progress_estimate(config, 2, launching=True) == {"a": 90.0} and calls == [2]
    assert json.loads(os.environ[estimate.JOB_SECONDS_ENV]) == {"a": 90.0}
    assert _progress_estimate(config, 2, launching=False) == {"a": 90.0} and calls == [2]  # a rank reads it
