"""How long a benchmark run will take on this machine: a cost model of the plan, calibrated by a probe.

Why: the standard preset is 60 model jobs and ~1,600 cells; before starting it a user must know whether
it takes minutes or days. ``camzoo bench --check`` prints :meth:`Estimate.text`; the progress bar of a
run can count each job's estimated seconds (:func:`job_seconds`), so its ETA is the remaining time.

The model (docs/performance.md, "Estimating a run's time"), per model job, with the unit costs the probe
timed (:mod:`camzoo.bench.probe`) for the job's model shape:

* train: epochs x training images x seconds per training image, plus the accuracy pass (test images x
  a forward);
* explain: evaluation images x the sum over the job's one-pass groups of seconds per image (a costly
  method: its time on the probed shape, scaled by its declared unit — channels x forward for
  "per-channel", a forward and backward for "iterative");
* games: per method cell, evaluation images x (the metrics' own seconds + their forwards x a forward)
  for the per-image metrics, and the same per game image for deletion/insertion and MoRF/LeRF;
* grids: per method cell, the new inputs its discrimination metrics explain (grid_count x N^4
  image-equivalents per N x N grid game, 4 x grid_count for Focus, 2 per image for the Random Logit test,
  2 x draws per image for randomisation) x the method's seconds per image;
* ``eval.reliability = "full"`` multiplies explain, games and grids by 1 + 4K (the perturbed passes);
* stability: pairs of models x maps kept x seconds per (pair, map); report: a fixed part and a part per
  method cell and image, scaled by the machine's NumPy speed.

Ranks claim jobs in plan order as they finish (camzoo.bench.distributed), so the jobs' wall time is
that schedule's makespan — about max(sum / nproc, the largest job); stability and report follow on
rank 0. Left out: process start-up and imports, generating a dataset the cache does not hold yet.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

import torch

from .objects import BACKGROUND_CLASSES
from .plan import BenchPlan, DatasetSpec, ModelJob
from .probe import (BUDGET_S, COSTLY, Calibration, Counter, Scoring, Shape, Units, cpu_speed, eval_set,
                    explain_rate, forward_rate, layer_channels, rank_threads, scoring_rate, stability_rate, threads,
                    training_rate)

PHASES = ("train", "explain", "games", "grids", "stability", "report")
# each job's estimated seconds (JSON, by job label), from the process that launches the ranks to the ranks
JOB_SECONDS_ENV = "CAMZOO_JOB_SECONDS"
# The report (tables, bootstrap CIs, paired tests, plots, report.html, then the command's exit), measured
# on the development VM with probe.cpu_speed at REFERENCE_CPU_SPEED s: write_report took 8.2 s on 46 method
# cells x 32 images and 12.7-14.8 s on the quick preset's 70 x 96 (1.05 s per method cell and 1,000 images);
# the quick preset's report phase (last cell to exit) ran ~4.5 s longer than write_report alone.
REFERENCE_CPU_SPEED = 0.0083
REPORT_FIXED_S = 11.0
REPORT_PER_CELL_S = 1.05
OBJECTS_PER_IMAGE = 3.0  # the object track's pairs per image: 2-4 objects, equally often, in "scenes"


def _train_config(job: ModelJob) -> Any:
    """The job's camzoo.train.TrainConfig, or None for a model loaded from a checkpoint (the one place
    that reads how a job gets its model)."""
    return getattr(job.source, "config", None)  # a TrainedSource's; a [[models]] ModelSource has none


def _method_class(method: str) -> type:
    from ..methods import get_method

    return get_method(method)


def _costly(method: str) -> bool:
    return _method_class(method).cost in COSTLY


def _free(group: tuple[str, ...]) -> bool:
    return all(_method_class(m).cost == "free" for m in group)


def shape_of(job: ModelJob, calibration: Calibration) -> Shape:
    """The model shape whose unit costs a job's work is charged at."""
    config = _train_config(job)
    classes = getattr(config, "num_classes", None) or calibration.datasets[job.dataset.key][0]
    classes += BACKGROUND_CLASSES if job.dataset.task != "classification" and not getattr(config, "num_classes", None) else 0
    if config is None:
        return Shape(job.kind, job.backbone, job.source.image_size or job.dataset.image_size, classes)
    return Shape(job.kind, job.backbone, job.dataset.image_size, classes, repr(sorted(config.model_options.items())))


def _build(job: ModelJob, shape: Shape, device: torch.device) -> torch.nn.Module:
    from ..models import build_model

    config = _train_config(job)
    if config is None:
        return job.source.load(device)
    return build_model(job.kind, job.backbone, shape.classes, image_size=shape.size, **config.model_options).to(device)


def dataset_counts(spec: DatasetSpec) -> tuple[int, int, int]:
    """(classes, training images, test images) of a dataset entry, loading as little as possible: an
    on-disk split's index, a generated dataset's first image (the plan's probes did the same)."""
    import importlib

    from ..data import info

    on_disk = info(spec.name).needs_root
    counts, test = [], None
    for split in ("train", "test"):
        asked = spec.split_options(split).get("num_images")
        if on_disk:  # an on-disk split: its index is cheap
            loaded = spec.load(split)
            test = loaded
            counts.append(len(loaded) if asked is None else min(int(asked), len(loaded)))
            continue
        if asked is None:  # a generated dataset's default size (its module's), without generating it
            try:
                module = importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.data.{spec.name}")
                asked = getattr(module, "DEFAULT_SPLIT_SIZES", {}).get(split)
            except ImportError:
                asked = None
        counts.append(int(asked) if asked is not None else len(spec.load(split)))
    if test is None:
        test = spec.load("test", num_images=1, cache=False)
    return len(test.classes), counts[0], counts[1]


def calibrate(plan: BenchPlan, nproc: int = 1, budget_s: float = BUDGET_S) -> Calibration:
    """Time the plan's unit costs on its device with the threads each rank will have (the probe)."""
    from ..modelutil import describe_device

    begin = time.perf_counter()
    device = torch.device(plan.device)
    count = rank_threads(device, nproc)
    counter = Counter()
    with threads(count):
        calibration = Calibration(describe_device(device), count)
        calibration.datasets = {spec.key: dataset_counts(spec) for spec in plan.datasets}
        jobs: dict[Shape, ModelJob] = {}
        for job in plan.jobs:
            jobs.setdefault(shape_of(job, calibration), job)
        models = {}
        for shape, job in sorted(jobs.items(), key=lambda item: (item[0].size, repr(item[0]))):
            models[shape] = counter.watch(_build(job, shape, device))
            late = time.perf_counter() - begin > budget_s
            calibration.units[shape] = _units(plan, calibration, job, shape, models[shape], device, late, counter)
        for method in dict.fromkeys(m for job in plan.jobs for m in job.methods if _costly(m)):
            # a costly method: timed once, on the cheapest shape that explains it, and scaled to the others
            for shape in sorted((s for s, job in jobs.items() if method in calibration.units[s].channels),
                                key=lambda s: method_unit(calibration.units[s], method)):
                job = jobs[shape]
                images = eval_set(plan.batch_size, shape.size, shape.classes, job.dataset.annotated, device, job.dataset.task)
                seconds = _explain(calibration, job, shape, models[shape], (method,), images, plan.batch_size,
                                   device, costly=True)
                if seconds is not None:
                    calibration.costly[method] = (shape, seconds)
                    break
        for job in plan.jobs:
            for method in job.methods:
                key = scoring_key(plan, calibration, job, method)
                if key not in calibration.scoring:
                    classes = calibration.datasets[job.dataset.key][0]
                    calibration.scoring[key] = scoring_rate(plan.settings_for(method), key[0], classes, key[1],
                                                            device, warm=not calibration.scoring, objects=key[-1])
        for size in sorted({spec.image_size for spec in plan.datasets}):  # cheap: every size, stability or not
            calibration.stability[size] = stability_rate(size, device)
        calibration.cpu_speed = cpu_speed()
    calibration.seconds = time.perf_counter() - begin
    calibration.forward_calls = counter.calls
    return calibration


def _units(plan: BenchPlan, calibration: Calibration, job: ModelJob, shape: Shape, model: torch.nn.Module,
           device: torch.device, late: bool, counter: Counter) -> Units:
    """One shape's units: timed, or (past the budget, with the same model timed at another size) scaled
    by pixels. The channels of each costly method's layer are always read (one forward)."""
    from ..batchnorm_folding import fold_batchnorm

    channels = {m: layer_channels(model.eval(), m, job.layer(m), shape.size, device) for m in job.methods if _costly(m)}
    same = [(s, u) for s, u in calibration.units.items() if u.timed and
            (s.kind, s.backbone, s.classes, s.options) == (shape.kind, shape.backbone, shape.classes, shape.options)]
    if late and same:
        source, timed = same[0]
        scale = (shape.size / source.size) ** 2
        return Units(timed.train * scale, timed.forward * scale, {g: v * scale for g, v in timed.explain.items()},
                     channels, timed=False)
    config = _train_config(job)
    train = training_rate(model, config, shape, device) if config is not None else 0.0
    model.eval()
    scorer = counter.watch(fold_batchnorm(model))
    units = Units(train, forward_rate(scorer, shape.size, plan.settings.chunk_size, device), channels=channels)
    images = eval_set(plan.batch_size, shape.size, shape.classes, job.dataset.annotated, device, job.dataset.task)
    for group in job.groups:
        if not _free(group) and not (len(group) == 1 and _costly(group[0])):
            seconds = _explain(calibration, job, shape, model, group, images, plan.batch_size, device)
            units.explain[group] = seconds or 0.0
    return units


def _explain(calibration: Calibration, job: ModelJob, shape: Shape, model: torch.nn.Module, group: tuple[str, ...],
             images: Any, batch: int, device: torch.device, costly: bool = False) -> float | None:
    """A group's seconds per image; None for a group the model cannot explain, a problem the run would
    meet too: it is listed (``Calibration.problems``) and costs nothing here."""
    try:
        return explain_rate(model, group, images, batch, device, job.layers, costly)
    except (ValueError, RuntimeError) as err:
        calibration.problems.append(f"{job.dataset.key}/{shape.backbone}/{shape.kind} at {shape.size} px, "
                                    f"{' '.join(group)}: {err}")
        return None


def scoring_key(plan: BenchPlan, calibration: Calibration, job: ModelJob, method: str) -> tuple:
    """What a cell's per-image metric costs depend on: image size, annotations, the games' settings, and
    whether the maps are scored alone (the object track: no games)."""
    s = plan.settings_for(method)
    return (shape_of(job, calibration).size, job.dataset.annotated, s.protocol, s.deletion_steps, s.deletion_fraction,
            s.deletion_target, s.substrates, s.chunk_size, job.dataset.task != "classification")


def _fwd_bwd(units: Units) -> float:
    """A forward and backward per image: the training step's, or three forwards for a loaded model."""
    return units.train or 3.0 * units.forward


def method_unit(units: Units, method: str) -> float:
    """A costly method's declared unit on a shape: channels x a forward ("per-channel": one masked or
    ablated pass per channel), a forward and backward ("iterative": one per optimisation step)."""
    if _method_class(method).cost == "per-channel":
        return units.channels[method] * units.forward
    return _fwd_bwd(units)


def method_seconds(calibration: Calibration, shape: Shape, method: str, group: tuple[str, ...]) -> float:
    """Seconds per image of explaining with one method (or its one-pass group) on a shape."""
    units = calibration.units[shape]
    cls = _method_class(method)
    if cls.cost in COSTLY:
        if method not in calibration.costly or method not in units.channels:
            return 0.0  # no shape could run it (Calibration.problems says why)
        probed, seconds = calibration.costly[method]
        return seconds * method_unit(units, method) / method_unit(calibration.units[probed], method)
    # a control ("free") still runs the model once, for the logits its Explanation carries
    return units.forward if cls.cost == "free" else units.explain.get(group, 0.0)


def discrimination_images(settings: Any, method: str, layer: str | None, first_block: int) -> float:
    """Image-equivalents (pixels of one evaluation image) a method cell's discrimination metrics explain."""
    from ..metrics.grid_models import GridWrapper

    cls = _method_class(method)
    total = 0.0
    for game in settings.grid_games:
        if game == "focus":
            total += 4 * settings.grid_count  # 2x2 mosaics, one explanation each
            continue
        name, size = game.rsplit("_", 1)
        n = int(size.split("x")[0])
        if name != "gridpg" and (layer is not None or not cls.applies_to(GridWrapper)):
            continue  # the wrappers explain their own stitched map: no value, no cost
        total += settings.grid_count * n ** 4  # every cell of every grid, each an N x N grid
    if "random_logit_similarity" in settings.sensitivity:
        total += 2 * first_block
    if "randomisation_spearman" in settings.sensitivity:
        total += 2 * settings.randomisation_draws * first_block
    return total


@dataclass(frozen=True)
class JobCost:
    """A model job's estimated process-seconds by phase."""

    label: str
    train: float
    explain: float
    games: float
    grids: float

    @property
    def total(self) -> float:
        return self.train + self.explain + self.games + self.grids


def job_cost(plan: BenchPlan, calibration: Calibration, job: ModelJob) -> JobCost:
    """One model job's seconds by phase (see the module docstring)."""
    shape = shape_of(job, calibration)
    units = calibration.units[shape]
    _, train_images, test_images = calibration.datasets[job.dataset.key]
    evaluated = min(plan.eval_images, test_images)
    objects = job.dataset.task != "classification"
    config = _train_config(job)
    train = test_images * units.forward  # the accuracy pass
    if objects:  # the object track explains and scores one entry per (image, object): no games, no grids
        evaluated *= OBJECTS_PER_IMAGE
    if config is not None:
        train += config.epochs * (train_images // config.batch_size) * config.batch_size * units.train
    explain = evaluated * sum(method_seconds(calibration, shape, group[0], group) for group in job.groups)
    games = grids = 0.0
    group_of = {m: group for group in job.groups for m in group}
    for method in job.methods:
        settings = plan.settings_for(method)
        score: Scoring = calibration.scoring[scoring_key(plan, calibration, job, method)]
        played = evaluated if settings.game_images is None else min(evaluated, settings.game_images)
        games += evaluated * (score.images_s + score.images_forwards * units.forward)
        games += played * (score.games_s + score.games_forwards * units.forward)
        if not objects:
            new_inputs = discrimination_images(settings, method, job.layer(method), min(evaluated, plan.block_images))
            grids += new_inputs * method_seconds(calibration, shape, method, group_of[method])
    if plan.settings.reliability == "full":  # every method cell explained and scored again 4 x K times
        passes = 1 + 4 * plan.settings.perturbation_draws
        explain, games, grids = explain * passes, games * passes, grids * passes
    return JobCost(job.label, train, explain, games, grids)


def job_seconds(plan: BenchPlan, calibration: Calibration) -> dict[str, float]:
    """Each model job's estimated seconds, by its label: what a progress bar counts so that its ETA is
    the remaining time."""
    return {job.label: job_cost(plan, calibration, job).total for job in plan.jobs}


def makespan(seconds: list[float], nproc: int) -> float:
    """Wall time of jobs claimed in order by ``nproc`` ranks, each taking the next job when it is free."""
    free = [0.0] * max(1, nproc)
    for cost in seconds:
        heapq.heappush(free, heapq.heappop(free) + cost)
    return max(free)


@dataclass(frozen=True)
class Estimate:
    """A run's estimated time: each job's seconds, the stability cells and the report."""

    device_label: str
    nproc: int
    jobs: tuple[JobCost, ...]
    stability: float
    report: float
    probe_seconds: float
    problems: tuple[str, ...] = ()

    @property
    def jobs_wall(self) -> float:
        return makespan([job.total for job in self.jobs], self.nproc)

    def process_seconds(self) -> dict[str, float]:
        """Each phase's process-seconds (summed over the ranks)."""
        found = {phase: sum(getattr(job, phase) for job in self.jobs) for phase in PHASES[:4]}
        return {**found, "stability": self.stability, "report": self.report}

    def phases(self) -> dict[str, float]:
        """Each phase's share of the wall time: the jobs' phases scaled to the schedule's makespan."""
        spent = self.process_seconds()
        total = sum(spent[phase] for phase in PHASES[:4])
        scale = self.jobs_wall / total if total > 0 else 0.0
        return {phase: seconds * (scale if phase in PHASES[:4] else 1.0) for phase, seconds in spent.items()}

    @property
    def total(self) -> float:
        return self.jobs_wall + self.stability + self.report

    def text(self) -> str:
        """What ``camzoo bench --check`` prints after the plan."""
        phases = ", ".join(f"{phase} ~{duration(seconds)}" for phase, seconds in self.phases().items())
        largest = max(self.jobs, key=lambda job: job.total, default=None)
        lines = [f"estimated wall time on {self.device_label} with --nproc {self.nproc}: {phases}; "
                 f"total ~{duration(self.total)} (probe took {self.probe_seconds:.1f} s)"]
        if largest is not None:
            lines.append(f"  {len(self.jobs)} model jobs, {duration(sum(j.total for j in self.jobs))} of process time; "
                         f"the largest {largest.label} ~{duration(largest.total)}")
        if self.problems:
            lines.append(f"  the probe could not run {len(self.problems)} piece(s) of the plan (the run would fail "
                         "there; not counted):")
            lines += [f"    {problem}" for problem in self.problems[:3]]
            lines += [f"    ... and {len(self.problems) - 3} more"] if len(self.problems) > 3 else []
        return "\n".join(lines)


def duration(seconds: float) -> str:
    """Seconds as a reader wants them: "42 s", "7.5 min", "3.2 h", "2.1 d"."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 1.5 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def estimate(plan: BenchPlan, nproc: int = 1, calibration: Calibration | None = None) -> Estimate:
    """The plan's estimated time with ``nproc`` ranks (probing this machine unless given a calibration)."""
    calibration = calibration or calibrate(plan, nproc)
    jobs = tuple(job_cost(plan, calibration, job) for job in plan.jobs)
    stability = 0.0
    for group in plan.stability:
        models = sum(1 for job in plan.jobs if (job.dataset, job.backbone, job.kind) ==
                     (group.dataset, group.backbone, group.kind))
        kept = min(plan.keep_maps, plan.eval_images, calibration.datasets[group.dataset.key][2])
        rate = calibration.stability[group.dataset.image_size]
        stability += len(group.methods) * models * (models - 1) / 2 * kept * rate
    images = sum(len(job.methods) * min(plan.eval_images, calibration.datasets[job.dataset.key][2])
                 for job in plan.jobs)
    report = calibration.cpu_speed / REFERENCE_CPU_SPEED * (REPORT_FIXED_S + REPORT_PER_CELL_S * images / 1000)
    return Estimate(calibration.device_label, nproc, jobs, stability, report, calibration.seconds,
                    tuple(calibration.problems))


__all__ = ["JOB_SECONDS_ENV", "PHASES", "Estimate", "JobCost", "calibrate", "discrimination_images", "duration", "estimate",
           "job_cost", "job_seconds", "makespan", "method_seconds", "method_unit", "shape_of"]
