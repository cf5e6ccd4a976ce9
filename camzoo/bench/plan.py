"""A benchmark run as a frozen, typed plan: built (and so validated) once, before any work starts.

Why: the runner, ``camzoo bench --check`` and every distributed rank must agree on what a config
means — which datasets, which model jobs (each with the source of its model), which methods each
model kind gets and in which one-pass groups, how cells are scored. ``build_plan`` turns the merged
config (``camzoo.bench.config``) and the registries into that answer in one place; the runner only
executes its cells, and the ranks of a distributed run receive the plan rank 0 built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from ..metrics import EvalSettings
from .config import run_id
from .fingerprint import fingerprint_inputs
from .specs import GALLERY_CELL, DatasetSpec, Frozen, Variant
from .store import ALL_SEEDS, CellKey
from .sources import SOURCE_KIND, ModelSource, TrainedSource, load_problems, sources
from .validate import (ConfigError, config_problems, dataset_notes, dataset_probe, eval_settings, ground_truth_problems,
                       model_problems, split_shape, used_images)

MODEL_CELL = "model"
ALL_VARIANTS = "*"


@dataclass(frozen=True)
class ModelJob:
    """One model to train (or reuse) and score: its model cell, then one cell per method."""

    dataset: DatasetSpec
    backbone: str
    kind: str
    variant: Variant
    seed: int
    methods: tuple[str, ...]  # the methods that apply to this kind and dataset, in the config's order
    groups: tuple[tuple[str, ...], ...]  # the same methods in one-pass groups (camzoo.methods.one_pass_groups)
    source: TrainedSource | ModelSource  # where the model comes from: trained (or reused), or a [[models]] checkpoint

    @property
    def layers(self) -> Mapping[str, str | None]:
        """The layer each method row explains ("gradcam@layer2" -> "layer2"; None: the method's default)."""
        return {method: self.source.layer_for(method) for method in self.methods}

    def layer(self, method: str) -> str | None:
        """The layer a method row explains (None: the method's default)."""
        return self.source.layer_for(method)

    def key(self, method: str) -> CellKey:
        return CellKey(self.dataset.key, self.backbone, self.kind, self.variant.name, self.seed, method)

    @property
    def cells(self) -> tuple[str, ...]:
        return (MODEL_CELL, *self.methods)

    @property
    def cell_keys(self) -> tuple[CellKey, ...]:
        """The keys of every cell the job writes (the model cell first)."""
        return tuple(self.key(cell) for cell in self.cells)

    @property
    def label(self) -> str:
        return job_label(self.dataset.key, self.backbone, self.kind, self.variant.name, self.seed)


def job_label(dataset: str, backbone: str, kind: str, variant: str, seed: int) -> str:
    """How a model job is named (progress bar, checkpoint directory): dataset/backbone/kind[/variant]/seedN."""
    return f"{dataset}/{backbone}/{kind}{'' if variant == 'default' else f'/{variant}'}/seed{seed}"


@dataclass(frozen=True)
class StabilityGroup:
    """The models of one (dataset, backbone, kind) across seeds and variants: one cell per method."""

    dataset: DatasetSpec
    backbone: str
    kind: str
    methods: tuple[str, ...]

    def key(self, method: str) -> CellKey:
        return CellKey(self.dataset.key, self.backbone, self.kind, ALL_VARIANTS, ALL_SEEDS, method)


@dataclass(frozen=True)
class BenchPlan:
    """Everything a run will do, typed: nothing after :func:`build_plan` reads a config dict. ``config``
    is the merged config the plan came from, kept only to be stored with the run (it is hashed into
    ``run_id``); the rest is what the runner reads. It pickles: a distributed run builds it once and
    sends it to every rank."""

    config: Mapping[str, Any]
    run_id: str
    device: str
    device_label: str
    datasets: tuple[DatasetSpec, ...]
    jobs: tuple[ModelJob, ...]
    stability: tuple[StabilityGroup, ...]  # empty when each group has a single model
    settings: EvalSettings
    eval_images: int  # the first N test images every method of every model explains
    batch_size: int  # images per explain call and per accuracy forward
    gallery_images: int
    world_size: int = 1  # the ranks that share the model jobs (for the printed plan)
    block_images: int = 1000  # evaluation images on the device at once (streamed in blocks)
    keep_maps: int = 1000  # maps stored for the first N evaluation images (gallery, report.html, stability)
    # content digests of the files the run reads (camzoo.bench.fingerprint): part of run_id
    inputs: Mapping[str, str] = field(default_factory=Frozen)
    config_hash: str = ""  # the run id of the config alone: runs of one config on other inputs share it
    used_images: Mapping[str, int] | None = None  # dataset -> the evaluation images it has (<= eval_images)
    notes: tuple[str, ...] = ()  # what the datasets give the run: images chosen, images left out and why

    def settings_for(self, method: str) -> EvalSettings:
        """How a method's cell is scored. Controls skip the MoRF/LeRF substrates: those columns exist
        to rank explanation methods across substrates (Kendall's tau), and on the quick preset they
        were two thirds of a cell's cost."""
        from ..methods import get_method

        return self.settings.without_substrates() if get_method(method).reference else self.settings

    @property
    def method_cells(self) -> int:
        return sum(len(job.methods) for job in self.jobs)

    @property
    def stability_cells(self) -> int:
        return sum(len(group.methods) for group in self.stability)

    @property
    def cells(self) -> int:
        return len(self.jobs) + self.method_cells + self.stability_cells + len(self.datasets)

    def cell_keys(self) -> list[CellKey]:
        """Every cell the run writes once it is finished: each dataset's gallery, each job's cells, and the
        stability cells (those need stored maps: none with ``keep_maps = 0``)."""
        keys = [dataset.gallery_key for dataset in self.datasets] + [key for job in self.jobs for key in job.cell_keys]
        if self.keep_maps > 0:
            keys += [group.key(method) for group in self.stability for method in group.methods]
        return keys

    def text(self) -> str:
        """What ``camzoo bench --check`` prints."""
        lines = [
            f"config OK: device {self.device_label}; datasets {', '.join(d.key for d in self.datasets)}; "
            f"run {self.run_id}",
            f"{len(self.jobs)} model jobs (train or reuse one model each), {self.cells} cells: {len(self.jobs)} model, "
            f"{self.method_cells} method, {self.stability_cells} stability, {len(self.datasets)} gallery",
        ]
        seen: set[tuple[str, tuple]] = set()
        for job in self.jobs:
            if (job.kind, job.groups) not in seen:
                seen.add((job.kind, job.groups))
                groups = ", ".join("[" + " ".join(group) + "]" if len(group) > 1 else group[0] for group in job.groups)
                lines.append(f"  {job.dataset.key}/{job.kind}: {groups}")
        s = self.settings
        used = dict(self.used_images or {})
        images = max(used.values(), default=self.eval_images)
        count = f"{images} images" if len(set(used.values())) <= 1 else (
            f"up to {images} images ({', '.join(f'{key} {n}' for key, n in used.items())})")
        games = "every image" if s.game_images is None or s.game_images >= images else f"the first {s.game_images}"
        blocks = -(-images // self.block_images)
        lines.append(f"eval: {count} in {blocks} block(s) of up to {self.block_images}, batches of "
                     f"{self.batch_size}; maps kept for the first {min(self.keep_maps, images)}; games on {games}, "
                     f"protocol {s.protocol}, {s.deletion_steps} steps over {s.deletion_fraction:g} of the pixels, "
                     f"target {s.deletion_target}; substrates {', '.join(s.substrates) or 'none'}")
        if s.discrimination:
            lines.append(f"discrimination: {', '.join(s.discrimination)}; {s.grid_count} grids per model of images "
                         f"with confidence >= {s.grid_threshold:g}")
        lines += list(self.notes)
        if self.world_size > 1:
            lines.append(f"{self.world_size} ranks: each takes the next model job when it is free; stability cells "
                         "on rank 0 after all ranks finish")
        return "\n".join(lines)


def build_plan(config: Mapping[str, Any], device: str | None = None, world_size: int = 1,
               cache_dir: str | Path | None = None, write_cache: bool = True) -> BenchPlan:
    """Check everything a run needs and lay out its cells; a :class:`ConfigError` lists every problem.

    Every spec is parsed from the config here, once: the scoring settings, the datasets, the variants,
    each model's TrainConfig (validated once, and the model probes read it) or each ``[[models]]``
    checkpoint.

    Args:
        config: a merged config (``camzoo.bench.config.resolve_config``).
        device: overrides the config's device ("auto", "cpu", "cuda", "cuda:N").
        world_size: the number of ranks that will share the model jobs (for the printed plan).
        cache_dir: where the input files' hashes are cached (the results directory; None: not cached),
            ``write_cache``: whether that cache may be created or updated (camzoo.bench.fingerprint).

    Returns:
        the frozen :class:`BenchPlan`; nothing has been trained or written.
    """
    from ..modelutil import describe_device, resolve_device

    problems = config_problems(config)
    settings, found = eval_settings(config["eval"])
    problems += found
    datasets, found = DatasetSpec.parse_all(config["datasets"])
    problems += found
    variants, found = Variant.parse_all(config["variants"])
    problems += found
    _stop(problems)  # the config's shape is wrong: nothing else can be checked
    resolved = None
    try:
        resolved = resolve_device(device or config["device"])
    except ValueError as err:
        problems.append(f"device: {err}")
    probes: dict[str, Any] = {}  # dataset -> its test split (an on-disk index, or one generated image)
    for dataset in datasets:
        try:
            probes[dataset.key] = dataset_probe(dataset)
        except (ValueError, OSError) as err:
            problems.append(f"dataset {dataset.name!r}: {err}")
    datasets = tuple(d.with_annotations(probes[d.key]) if d.key in probes else d for d in datasets)
    problems += task_problems(datasets, probes, [] if config["models"] else config["kinds"])
    images = config["eval"]["images"]
    if config["models"]:  # loaded, never trained: each checkpoint must load and fit each dataset
        entries = [sources(entry) for entry in config["models"]]
        problems += load_problems(entries, probes)
        problems += _truth_problems(datasets, probes, images, entries)
        _stop(problems)
        inputs = fingerprint_inputs(datasets, probes, entries, False, cache_dir, write_cache)
        jobs, stability = _loaded(config["methods"], datasets, entries)
    else:
        trainers = {}  # (dataset, variant, kind, backbone, seed) -> its TrainConfig, built and validated once
        for dataset in datasets:
            table = {**config["train"], **dataset.train}  # the dataset's own [train] keys win
            for variant in variants:
                for kind in kinds_for(config["kinds"], dataset):
                    for backbone in config["backbones"]:
                        for seed in config["seeds"]:
                            trainer, found = variant.train_config(table, kind, backbone, seed, str(resolved))
                            trainers[dataset.key, variant.name, kind, backbone, seed] = trainer
                            problems += found
        first = [(name, trainer) for (_, name, _, _, seed), trainer in trainers.items() if seed == config["seeds"][0]]
        shapes = {name: split_shape(split) for name, split in probes.items()}
        problems += model_problems(first, config["methods"], shapes)
        problems += _truth_problems(datasets, probes, images, [])
        _stop(problems)
        inputs = fingerprint_inputs(datasets, probes, (), True, cache_dir, write_cache)
        jobs, stability = _grid(config, datasets, variants, trainers, inputs.trained)
    evaluation = config["eval"]
    return BenchPlan(
        config=Frozen(config), run_id=run_id(config, inputs.digests), config_hash=run_id(config), device=str(resolved),
        device_label=describe_device(resolved), datasets=datasets, jobs=jobs, stability=stability,
        settings=settings, eval_images=evaluation["images"],
        batch_size=evaluation["batch_size"], gallery_images=evaluation["gallery_images"], world_size=world_size,
        block_images=evaluation["block_images"], keep_maps=evaluation["keep_maps"], inputs=Frozen(inputs.digests),
        used_images=Frozen({d.key: used_images(d, probes[d.key], images) for d in datasets}),
        notes=tuple(note for d in datasets for note in dataset_notes(d, probes[d.key], images)),
    )


def _truth_problems(datasets: Sequence[DatasetSpec], probes: Mapping[str, Any], images: int,
                    entries: Sequence[Sequence[ModelSource]]) -> list[str]:
    """Evaluation images whose object covers no pixel at a side the run uses: the dataset's, and each
    ``[[models]]`` entry's own (camzoo.bench.validate.ground_truth_problems)."""
    problems = []
    for dataset in datasets:
        if dataset.key not in probes:
            continue
        sides = {dataset.image_size: "--image-size {side} (image_size = {side} in its [[datasets]] entry)"}
        for source in (s for entry in entries for s in entry[:1] if s.image_size):
            sides.setdefault(source.image_size, "image_size = {side} in its [[models]] entry")
        problems += ground_truth_problems(dataset, probes[dataset.key], images, sides)
    return problems


def task_problems(datasets: Sequence[DatasetSpec], probes: Mapping[str, Any], kinds: Sequence[str]) -> list[str]:
    """A dataset whose task no kind of the grid has, or a segmentation or detection dataset without every
    object's mask and box (``get_objects``: the object track scores each object against the others)."""
    problems = []
    for dataset in datasets:
        if kinds and not kinds_for(kinds, dataset):
            listed = list(dataset.kinds or kinds)
            problems.append(f"dataset {dataset.name!r} has task {dataset.task!r}, but none of the kinds {listed} "
                            f"trains for it; add a kind of that task to kinds (camzoo train --help lists the kinds), or "
                            "leave the dataset out")
        probe = probes.get(dataset.key)
        if dataset.task != "classification" and probe is not None and not callable(getattr(probe, "get_objects", None)):
            problems.append(f"dataset {dataset.name!r} has task {dataset.task!r} but no per-object masks and boxes "
                            "(get_objects); use the built-in 'scenes' dataset")
    return problems


def _stop(problems: list[str]) -> None:
    """Raise one ConfigError listing every problem (each once), if there is any."""
    if problems:
        listed = "\n  - ".join(dict.fromkeys(problems))
        raise ConfigError(f"invalid benchmark config (nothing was run or written):\n  - {listed}")


def _methods(methods: Sequence[str], dataset: DatasetSpec, kind: str) -> tuple[str, ...]:
    """The config's methods that apply to this kind (each method asks the kind's class: "attention"
    needs a kind that makes its own map; a loaded model is any nn.Module) and to this dataset (the
    oracle needs ground truth)."""
    from torch import nn

    from ..methods import get_method
    from ..models import get_kind

    model_class = nn.Module if kind == SOURCE_KIND else get_kind(kind)
    return tuple(m for m in methods if get_method(m).applies_to(model_class)
                 and (dataset.annotated or not get_method(m).needs_ground_truth))


def kinds_for(kinds: Sequence[str], dataset: DatasetSpec) -> list[str]:
    """The kinds the dataset trains: its entry's own ``kinds``, else the config's, those whose task is the
    dataset's (a segmenter trains on a segmentation dataset only)."""
    from ..models import get_kind

    return [kind for kind in (dataset.kinds or kinds) if getattr(get_kind(kind), "task", "classification") == dataset.task]


def _grid(config: Mapping[str, Any], datasets: tuple[DatasetSpec, ...], variants: tuple[Variant, ...],
          trainers: Mapping[tuple, Any], trained: Mapping[str, str]
          ) -> tuple[tuple[ModelJob, ...], tuple[StabilityGroup, ...]]:
    """dataset x backbone x kind x variant x seed, in that order; one stability group per (dataset,
    backbone, kind) with more than one model. ``trained``: dataset key -> the digest of an on-disk
    train split (in each model's directory name)."""
    from ..methods import one_pass_groups

    jobs: list[ModelJob] = []
    stability: list[StabilityGroup] = []
    models_per_group = len(config["seeds"]) * len(variants)
    for dataset in datasets:
        for backbone in config["backbones"]:
            for kind in kinds_for(config["kinds"], dataset):
                methods = _methods(config["methods"], dataset, kind)
                groups = tuple(tuple(g) for g in one_pass_groups(methods))  # one group per layer
                for variant in variants:
                    for seed in config["seeds"]:
                        label = job_label(dataset.key, backbone, kind, variant.name, seed)
                        source = TrainedSource.for_job(trainers[dataset.key, variant.name, kind, backbone, seed],
                                                       label, trained.get(dataset.key, ""))
                        jobs.append(ModelJob(dataset, backbone, kind, variant, seed, methods, groups, source))
                if models_per_group > 1:
                    stability.append(StabilityGroup(dataset, backbone, kind, methods))
    return tuple(jobs), tuple(stability)


def _loaded(methods: Sequence[str], datasets: tuple[DatasetSpec, ...], entries: Sequence[Sequence[ModelSource]]
            ) -> tuple[tuple[ModelJob, ...], tuple[StabilityGroup, ...]]:
    """dataset x [[models]] entry x checkpoint (checkpoint i is seed i); one stability group per
    (dataset, entry) with more than one checkpoint."""
    from ..methods import one_pass_groups

    jobs: list[ModelJob] = []
    stability: list[StabilityGroup] = []
    for dataset in datasets:
        applied = _methods(methods, dataset, SOURCE_KIND)
        groups = tuple(tuple(g) for g in one_pass_groups(applied))
        for found in entries:
            for seed, source in enumerate(found):
                jobs.append(ModelJob(dataset, source.label, SOURCE_KIND, Variant("default"), seed, applied, groups,
                                     source))
            if len(found) > 1:
                stability.append(StabilityGroup(dataset, found[0].label, SOURCE_KIND, applied))
    return tuple(jobs), tuple(stability)


__all__ = ["ALL_VARIANTS", "GALLERY_CELL", "MODEL_CELL", "BenchPlan", "ConfigError", "DatasetSpec", "ModelJob",
           "StabilityGroup", "Variant", "build_plan"]
