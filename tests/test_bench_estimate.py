"""The time estimate of `camzoo bench --check`: a cost model of the plan (camzoo.bench.estimate) calibrated
by a bounded probe (camzoo.bench.probe). It must grow with the work, shrink with ranks, be printed with
every phase, stay a few seconds of probing, and land near a real run of the same plan."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from camzoo.bench.config import resolve_config
from camzoo.bench.estimate import PHASES, calibrate, duration, estimate, job_seconds, makespan
from camzoo.bench.plan import build_plan
from camzoo.cli import main
from helpers import TINY_RANKS


def tiny(cache: Path, seeds: tuple[int, ...] = (0,), epochs: int = 1, images: int = 16, size: int = 32,
         sizes: tuple[int, ...] = ()) -> dict:
    """One small model per seed on shapes: two methods, games of 4 steps, one substrate, no grids. ``sizes``:
    the same model on scenes (4 classes too, so the same model shape) at those sizes (a dataset is listed
    once per task)."""
    datasets = [{"name": name, "root": str(cache), "image_size": side,
                 "options": {"num_classes": 4, "train": {"num_images": 64}, "test": {"num_images": 32}}}
                for name, side in (("shapes", size), *(("scenes", side) for side in sizes))]
    return resolve_config("quick", overrides={
        "seeds": list(seeds), "kinds": ["baseline"], "backbones": ["resnet8"], "methods": ["gradcam", "random"],
        "device": "cpu", "datasets": datasets, "train": {"epochs": epochs, "batch_size": 32},
        "eval": {"images": images, "game_images": 8, "deletion_steps": 4, "substrates": ["zeros"], "grid_games": [],
                 "sensitivity": ["random_logit_similarity"]}})


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """The tiny plan and its calibration, probed once for the module (one thread: steady timings)."""
    cache = tmp_path_factory.mktemp("estimate-cache")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = build_plan(tiny(cache))
        yield cache, plan, calibrate(plan)
    finally:
        torch.set_num_threads(previous)


def test_more_work_takes_longer(probed):
    cache, plan, calibration = probed
    base = estimate(plan, calibration=calibration)
    assert all(base.process_seconds()[phase] > 0 for phase in ("train", "explain", "games", "grids", "report"))
    longer = estimate(build_plan(tiny(cache, epochs=3)), calibration=calibration)
    assert longer.process_seconds()["train"] > base.process_seconds()["train"] and longer.total > base.total
    more_images = estimate(build_plan(tiny(cache, images=32)), calibration=calibration).process_seconds()
    for phase in ("explain", "games", "grids"):
        assert more_images[phase] > base.process_seconds()[phase], phase
    seeds = estimate(build_plan(tiny(cache, seeds=(0, 1))), calibration=calibration)
    assert seeds.total > base.total and seeds.stability > 0 == base.stability
    bigger = copy.deepcopy(calibration)
    classes, train, test = bigger.datasets["shapes"]
    bigger.datasets["shapes"] = (classes, 4 * train, test)
    assert estimate(plan, calibration=bigger).process_seconds()["train"] > base.process_seconds()["train"]


def test_ranks_share_the_jobs(probed):
    cache, _, calibration = probed
    plan = build_plan(tiny(cache, seeds=(0, 1, 2, 3)))
    one, two = (estimate(plan, nproc, calibration) for nproc in (1, 2))
    total = sum(job.total for job in one.jobs)
    assert one.jobs_wall == pytest.approx(total)
    assert two.jobs_wall == pytest.approx(total / 2)  # four equal jobs on two ranks
    assert two.total < one.total
    assert makespan([3.0, 1.0, 1.0, 1.0], 2) == 3.0  # never below the largest job
    assert makespan([1.0, 1.0, 1.0], 2) == 2.0
    assert set(job_seconds(plan, calibration)) == {job.label for job in plan.jobs}
    assert sum(job_seconds(plan, calibration).values()) == pytest.approx(total)


def test_check_prints_each_phase_and_a_total(probed, tmp_path):
    cache, _, _ = probed
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_RANKS.format(cache=cache), encoding="utf-8")
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--check", "--nproc", "2"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("estimated wall time"))
    assert "with --nproc 2" in line and "total ~" in line and "probe took" in line
    assert all(f"{phase} ~" in line for phase in PHASES), line
    quiet = CliRunner().invoke(main, ["bench", "--config", str(config), "--check", "--no-estimate"])
    assert quiet.exit_code == 0 and "config OK" in quiet.output and "estimated" not in quiet.output


def test_the_probe_is_bounded(probed):
    cache, _, calibration = probed
    # one model shape: its training steps, forwards and explanations (batches double until a call is long
    # enough), the channels of no costly method; the metrics run on the stand-in model, not counted here
    assert 0 < calibration.forward_calls < 60, calibration.forward_calls
    # past the budget a second image size of an already timed model is scaled by its pixels, not timed
    plan = build_plan(tiny(cache, sizes=(64,)))
    scaled = calibrate(plan, budget_s=0.0)
    sides = {shape.size: units for shape, units in scaled.units.items()}
    assert sides[32].timed and not sides[64].timed
    assert sides[64].forward == pytest.approx(4 * sides[32].forward)
    assert scaled.forward_calls < calibration.forward_calls + 10


def test_the_estimate_is_near_a_real_run(probed, tmp_path):
    """Loose but real: a tiny run's cells take within a factor of 3 of the estimate (its fixed costs —
    building models, the dataset, first calls — weigh more than in a real run)."""
    from camzoo.bench.runner import BenchRunner

    _, plan, calibration = probed
    found = estimate(plan, calibration=calibration)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        begin = time.perf_counter()
        BenchRunner(plan, tmp_path / "run", progress=False).run()
        measured = time.perf_counter() - begin
    finally:
        torch.set_num_threads(previous)
    estimated = found.jobs_wall + found.stability
    assert measured / 3 < estimated < 3 * measured, (estimated, measured)


def test_durations_read_well():
    assert duration(42) == "42 s"
    assert duration(450) == "7.5 min"
    assert duration(3 * 3600) == "3.0 h"
    assert duration(2.5 * 86400) == "2.5 d"
