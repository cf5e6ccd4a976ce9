"""A benchmark run as a frozen, typed plan: built (and so validated) once, before any work starts.

Why: the runner, ``camzoo bench --check`` and every distributed rank must agree on what a config
means — which datasets, which model jobs, which methods each model kind gets and in which one-pass
groups, how cells are scored. ``build_plan`` turns the merged config (``camzoo.bench.config``) and
the registries into that answer in one place; the runner only executes its cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from collections.abc import Mapping

from ..metrics import EvalSettings
from .config import run_id
from .store import ALL_SEEDS, CellKey
from .sources import SOURCE_KIND, ModelSource, load_problems, sources
from .validate import (
    ConfigError,
    dataset_probe,
    load_split,
    model_problems,
    shape_problems,
    split_shape,
    train_config,
)

MODEL_CELL = "model"
GALLERY_CELL = "gallery"
ALL_VARIANTS = "*"


@dataclass(frozen=True)
class DatasetSpec:
    """One ``[[datasets]]`` entry: what to load, at which size, with which loader options."""

    name: str
    root: str
    image_size: int
    options: Mapping[str, Any]
    annotated: bool  # masks or boxes: the localization metrics and the oracle control need them

    def as_config(self) -> dict[str, Any]:
        return {"name": self.name, "root": self.root, "image_size": self.image_size, "options": dict(self.options)}

    def load(self, split: str, **extra: Any):
        """One split (``extra`` overrides loader options)."""
        return load_split(self.as_config(), split, **extra)

    @property
    def gallery_key(self) -> CellKey:
        return CellKey(self.name, "-", "-", "-", ALL_SEEDS, GALLERY_CELL)


@dataclass(frozen=True)
class Variant:
    """A hyper-parameter variant (``[[variants]]``); a config without any has one, "default"."""

    name: str
    train: Mapping[str, Any]
    model: Mapping[str, Any]


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
    train: Any  # camzoo.train.TrainConfig; None for a model loaded from a checkpoint
    # the layer each method row explains ("gradcam@layer2" -> "layer2"); None: the method's default
    layers: Mapping[str, str | None] = field(default_factory=lambda: MappingProxyType({}))

    source: ModelSource | None = None  # a [[models]] checkpoint, loaded instead of trained

    def layer(self, method: str) -> str | None:
        """The layer a method row explains (None: the method's default)."""
        return self.layers.get(method)

    def key(self, method: str) -> CellKey:
        return CellKey(self.dataset.name, self.backbone, self.kind, self.variant.name, self.seed, method)

    @property
    def cells(self) -> tuple[str, ...]:
        return (MODEL_CELL, *self.methods)

    @property
    def label(self) -> str:
        variant = "" if self.variant.name == "default" else f"/{self.variant.name}"
        return f"{self.dataset.name}/{self.backbone}/{self.kind}{variant}/seed{self.seed}"


@dataclass(frozen=True)
class StabilityGroup:
    """The models of one (dataset, backbone, kind) across seeds and variants: one cell per method."""

    dataset: DatasetSpec
    backbone: str
    kind: str
    methods: tuple[str, ...]

    def key(self, method: str) -> CellKey:
        return CellKey(self.dataset.name, self.backbone, self.kind, ALL_VARIANTS, ALL_SEEDS, method)


@dataclass(frozen=True)
class BenchPlan:
    """Everything a run will do. ``config`` is the merged config the plan came from (stored with the
    run, hashed into ``run_id``); the rest is what the runner reads."""

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
    world_size: int = 1
    block_images: int = 1000  # evaluation images on the device at once (streamed in blocks)
    keep_maps: int = 1000  # maps stored for the first N evaluation images (gallery, report.html, stability)

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

    @property
    def per_rank(self) -> list[int]:
        return [len(range(rank, len(self.jobs), self.world_size)) for rank in range(self.world_size)]

    def text(self) -> str:
        """What ``camzoo bench --check`` prints."""
        lines = [
            f"config OK: device {self.device_label}; datasets {', '.join(d.name for d in self.datasets)}; "
            f"run {self.run_id}",
            f"{len(self.jobs)} model jobs (train or reuse one model each), {self.cells} cells: {len(self.jobs)} model, "
            f"{self.method_cells} method, {self.stability_cells} stability, {len(self.datasets)} gallery",
        ]
        seen: set[tuple[str, tuple]] = set()
        for job in self.jobs:
            if (job.kind, job.groups) not in seen:
                seen.add((job.kind, job.groups))
                groups = ", ".join("[" + " ".join(group) + "]" if len(group) > 1 else group[0] for group in job.groups)
                lines.append(f"  {job.dataset.name}/{job.kind}: {groups}")
        s = self.settings
        games = "every image" if s.game_images is None else f"the first {s.game_images}"
        blocks = -(-self.eval_images // self.block_images)
        lines.append(f"eval: {self.eval_images} images in {blocks} block(s) of up to {self.block_images}, batches of "
                     f"{self.batch_size}; maps kept for the first {min(self.keep_maps, self.eval_images)}; games on {games}, "
                     f"protocol {s.protocol}, {s.deletion_steps} steps over {s.deletion_fraction:g} of the pixels, "
                     f"target {s.deletion_target}; substrates {', '.join(s.substrates) or 'none'}")
        if s.discrimination:
            lines.append(f"discrimination: {', '.join(s.discrimination)}; {s.grid_count} grids per model of images "
                         f"with confidence >= {s.grid_threshold:g}")
        if self.world_size > 1:
            lines.append(f"{self.world_size} ranks: model jobs per rank {self.per_rank}; stability cells on rank 0 "
                         "after all ranks finish")
        return "\n".join(lines)


def build_plan(config: Mapping[str, Any], device: str | None = None, world_size: int = 1) -> BenchPlan:
    """Check everything a run needs and lay out its cells; a :class:`ConfigError` lists every problem.

    Args:
        config: a merged config (``camzoo.bench.config.resolve_config``).
        device: overrides the config's device ("auto", "cpu", "cuda", "cuda:N").
        world_size: the number of ranks that will share the model jobs (for the printed plan).

    Returns:
        the frozen :class:`BenchPlan`; nothing has been trained or written.
    """
    from ..modelutil import describe_device, resolve_device

    problems = shape_problems(config)
    if problems:  # the config's shape is wrong: nothing else can be checked
        raise ConfigError("invalid benchmark config (nothing was run or written):\n  - " + "\n  - ".join(problems))
    resolved = None
    try:
        resolved = resolve_device(device or config["device"])
    except ValueError as err:
        problems.append(f"device: {err}")
    probes: dict[str, Any] = {}  # dataset -> its test split (an on-disk index, or one generated image)
    for dataset in config["datasets"]:
        try:
            probes[dataset["name"]] = dataset_probe(dataset)
        except (ValueError, OSError) as err:
            problems.append(f"dataset {dataset['name']!r}: {err}")
    variants = [dict(v) for v in config["variants"]] or [{"name": "default", "train": {}, "model": {}}]
    if config["models"]:  # loaded, never trained: each checkpoint must load and fit each dataset
        problems += load_problems(config["models"], probes)
    else:
        shapes = {name: split_shape(split) for name, split in probes.items()}
        problems += model_problems(config, variants, shapes)
    if problems:
        raise ConfigError("invalid benchmark config (nothing was run or written):\n  - " + "\n  - ".join(problems))
    datasets = tuple(_dataset(entry, probes[entry["name"]]) for entry in config["datasets"])
    if config["models"]:
        jobs, stability = _loaded(config, datasets)
    else:
        jobs, stability = _grid(config, datasets, [_variant(v) for v in variants], str(resolved))
    evaluation = config["eval"]
    return BenchPlan(
        config=MappingProxyType(dict(config)), run_id=run_id(config), device=str(resolved),
        device_label=describe_device(resolved), datasets=datasets, jobs=jobs, stability=stability,
        settings=EvalSettings.from_config(evaluation), eval_images=evaluation["images"],
        batch_size=evaluation["batch_size"], gallery_images=evaluation["gallery_images"], world_size=world_size,
        block_images=evaluation["block_images"], keep_maps=evaluation["keep_maps"],
    )


def _dataset(entry: Mapping[str, Any], probe: Any) -> DatasetSpec:
    """A dataset entry; it is annotated when its loaded split holds masks or boxes (a folder may have
    neither: its localization columns and the oracle are then left out)."""
    from ..data import info

    annotations = getattr(probe, "annotations", None)
    annotated = bool(info(entry["name"]).annotations if annotations is None else annotations)
    return DatasetSpec(entry["name"], entry["root"], entry["image_size"], MappingProxyType(dict(entry["options"])),
                       annotated)


def _variant(entry: Mapping[str, Any]) -> Variant:
    return Variant(entry["name"], MappingProxyType(dict(entry.get("train", {}))),
                   MappingProxyType(dict(entry.get("model", {}))))


def _methods(config: Mapping[str, Any], dataset: DatasetSpec, kind: str) -> tuple[str, ...]:
    """The config's methods that apply to this kind (each method asks the kind's class: "attention"
    needs a kind that makes its own map; a loaded model is any nn.Module) and to this dataset (the
    oracle needs ground truth)."""
    from torch import nn

    from ..methods import get_method
    from ..models import get_kind

    model_class = nn.Module if kind == SOURCE_KIND else get_kind(kind)
    return tuple(m for m in config["methods"] if get_method(m).applies_to(model_class)
                 and (dataset.annotated or not get_method(m).needs_ground_truth))


def _grid(config: Mapping[str, Any], datasets: tuple[DatasetSpec, ...], variants: list[Variant],
          device: str) -> tuple[tuple[ModelJob, ...], tuple[StabilityGroup, ...]]:
    """dataset x backbone x kind x variant x seed, in that order; one stability group per (dataset,
    backbone, kind) with more than one model."""
    from ..methods import one_pass_groups, split_layer

    jobs: list[ModelJob] = []
    stability: list[StabilityGroup] = []
    models_per_group = len(config["seeds"]) * len(variants)
    for dataset in datasets:
        for backbone in config["backbones"]:
            for kind in config["kinds"]:
                methods = _methods(config, dataset, kind)
                groups = tuple(tuple(g) for g in one_pass_groups(methods))  # one group per layer
                layers = MappingProxyType({m: split_layer(m)[1] for m in methods})
                for variant in variants:
                    variant_config = {"name": variant.name, "train": dict(variant.train), "model": dict(variant.model)}
                    for seed in config["seeds"]:
                        trainer = train_config(config, kind, backbone, seed, variant_config, device)
                        jobs.append(ModelJob(dataset, backbone, kind, variant, seed, methods, groups, trainer, layers))
                if models_per_group > 1:
                    stability.append(StabilityGroup(dataset, backbone, kind, methods))
    return tuple(jobs), tuple(stability)


def _loaded(config: Mapping[str, Any], datasets: tuple[DatasetSpec, ...]
            ) -> tuple[tuple[ModelJob, ...], tuple[StabilityGroup, ...]]:
    """dataset x [[models]] entry x checkpoint (checkpoint i is seed i); one stability group per
    (dataset, entry) with more than one checkpoint."""
    from ..methods import one_pass_groups, split_layer

    jobs: list[ModelJob] = []
    stability: list[StabilityGroup] = []
    default = Variant("default", MappingProxyType({}), MappingProxyType({}))
    for dataset in datasets:
        methods = _methods(config, dataset, SOURCE_KIND)
        for entry in config["models"]:
            found = sources(entry)
            layers = MappingProxyType({m: split_layer(m)[1] or found[0].layer for m in methods})
            groups = tuple(tuple(g) for g in one_pass_groups(methods))
            for seed, source in enumerate(found):
                jobs.append(ModelJob(dataset, source.label, SOURCE_KIND, default, seed, methods, groups, None,
                                     layers, source))
            if len(found) > 1:
                stability.append(StabilityGroup(dataset, found[0].label, SOURCE_KIND, methods))
    return tuple(jobs), tuple(stability)


__all__ = ["ALL_VARIANTS", "GALLERY_CELL", "MODEL_CELL", "BenchPlan", "ConfigError", "DatasetSpec", "ModelJob",
           "StabilityGroup", "Variant", "build_plan"]
