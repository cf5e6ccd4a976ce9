"""Check a whole benchmark config before its first cell, and say what the run will do.

Why: a grid runs for hours; a typo in its last dataset's options, an unknown backbone or a CUDA
device that is not there must fail in seconds, before anything is trained or written (an aborted
start used to leave an empty run in the store). Every check here does the real thing on the
cheapest input: datasets are loaded (on-disk splits: their index; generated ones: one image with
the same generator arguments), every (kind, backbone, model options) is built and runs one image
of the configured size forward, every training config is built and validated.
All problems are collected and reported together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .config import _validate, applicable_methods, variants

SPLITS = ("train", "test")


class ConfigError(ValueError):
    """A benchmark config that cannot run; raised before anything is trained or written."""


def split_options(dataset: Mapping[str, Any], split: str) -> dict[str, Any]:
    """A dataset entry's loader options for one split: the shared ones, then the split's own table."""
    options = {k: v for k, v in dataset["options"].items() if k not in SPLITS}
    options.update(dataset["options"].get(split, {}))
    return options


def load_split(dataset: Mapping[str, Any], split: str, **extra: Any):
    """One split of a config's dataset entry (``extra`` overrides options, e.g. a 1-image probe)."""
    from .. import data

    return data.load(dataset["name"], split, root=dataset["root"] or None, image_size=dataset["image_size"],
                     **{**split_options(dataset, split), **extra})


def methods_for(config: Mapping[str, Any], dataset: str, kind: str) -> list[str]:
    """The config's methods that apply to this model kind and this dataset (the oracle control
    needs ground truth: masks or boxes)."""
    from ..data import info
    from ..methods import get_method

    annotated = bool(info(dataset).annotations)
    return [m for m in applicable_methods(config, kind) if annotated or not get_method(m).needs_ground_truth]


def train_config(config: Mapping[str, Any], kind: str, backbone: str, seed: int, variant: Mapping[str, Any],
                 device: str):
    """The TrainConfig of one model of the grid ([train], then the variant's train/model tables)."""
    from ..train import TrainConfig

    settings = {**config["train"], **variant.get("train", {})}
    model_options = {**settings.pop("model_options", {}), **variant.get("model", {})}
    if "milestones" in settings:
        settings["milestones"] = tuple(settings["milestones"])
    try:
        return TrainConfig(kind=kind, backbone=backbone, seed=seed, device=device, model_options=model_options,
                           progress=False, **settings)
    except TypeError as err:
        raise ValueError(f"[train] in the benchmark config: {err}") from err


@dataclass
class Plan:
    """What a valid config will run: counts per cell type, for `camzoo bench --check`."""

    device: str
    datasets: list[str]
    jobs: int
    model_cells: int
    method_cells: int
    stability_cells: int
    gallery_cells: int
    per_rank: list[int] = field(default_factory=list)

    @property
    def cells(self) -> int:
        return self.model_cells + self.method_cells + self.stability_cells + self.gallery_cells

    def text(self) -> str:
        lines = [
            f"config OK: device {self.device}; datasets {', '.join(self.datasets)}",
            f"{self.jobs} model jobs (train or reuse one model each), {self.cells} cells: {self.model_cells} model, "
            f"{self.method_cells} method, {self.stability_cells} stability, {self.gallery_cells} gallery",
        ]
        if len(self.per_rank) > 1:
            lines.append(f"{len(self.per_rank)} ranks: model jobs per rank {self.per_rank}; stability cells on rank 0 "
                         "after all ranks finish")
        return "\n".join(lines)


def validate(config: Mapping[str, Any], device: str | None = None, world_size: int = 1) -> Plan:
    """Check everything a run needs before its first cell; a :class:`ConfigError` lists every problem."""
    from ..modelutil import describe_device, resolve_device

    problems: list[str] = []
    try:
        _validate(dict(config))
    except ValueError as err:
        raise ConfigError(str(err)) from None  # the config's shape is wrong: nothing else can be checked
    resolved = None
    try:
        resolved = resolve_device(device or config["device"])
    except ValueError as err:
        problems.append(f"device: {err}")
    shapes: dict[str, tuple[int, int]] = {}  # dataset -> (classes, image side)
    for dataset in config["datasets"]:
        try:
            shapes[dataset["name"]] = _check_dataset(dataset)
        except (ValueError, OSError) as err:
            problems.append(f"dataset {dataset['name']!r}: {err}")
    problems += _check_training(config, shapes)
    if problems:
        raise ConfigError("invalid benchmark config (nothing was run or written):\n  - " + "\n  - ".join(problems))
    return _plan(config, describe_device(resolved), world_size)


def _check_dataset(dataset: Mapping[str, Any]) -> tuple[int, int]:
    """Load what is cheap to load; (number of classes, image side) of the test split."""
    from ..data import info

    entry = info(dataset["name"])
    found = None
    for split in SPLITS:
        if entry.needs_root:
            found = load_split(dataset, split)  # an on-disk split: its index (and, for array formats, its data)
            if len(found) == 0:
                raise ValueError(f"the {split} split is empty")
        else:
            count = split_options(dataset, split).get("num_images", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{split}.num_images must be a positive integer, got {count!r}")
            found = load_split(dataset, split, num_images=1, cache=False)  # the generator's arguments, one image
    image = found[0][0]
    return len(found.classes), int(image.shape[-1])


def _check_training(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, int]]) -> list[str]:
    """Every model of the grid: its TrainConfig validates, and it builds and runs one image forward
    (at each dataset's classes and image size; 10 classes at 32 px where no dataset loaded)."""
    from ..models import build_model

    problems: list[str] = []
    built: set[tuple] = set()
    for variant in variants(config):
        where = "" if variant["name"] == "default" else f" (variant {variant['name']!r})"
        for kind in config["kinds"]:
            for backbone in config["backbones"]:
                try:
                    train_config(config, kind, backbone, config["seeds"][0], variant, "cpu").validate()
                except ValueError as err:
                    problems.append(f"train{where}: {err}")
                settings = {**config["train"], **variant.get("train", {})}
                options = {**settings.get("model_options", {}), **variant.get("model", {})}
                for classes, side in set(shapes.values()) or {(10, 32)}:
                    classes = settings.get("num_classes") or classes
                    key = (kind, backbone, repr(sorted(options.items())), classes, side)
                    if key in built:
                        continue
                    built.add(key)
                    try:  # on the CPU: the meta device cannot run autocast regions (LFI-CAM's attention)
                        model = build_model(kind, backbone, classes, image_size=side, **options).eval()
                        with torch.no_grad():
                            model(torch.zeros(1, 3, side, side))
                    except (ValueError, RuntimeError, TypeError) as err:
                        problems.append(f"model {kind}/{backbone}{where} at {side} px: {err}")
    return list(dict.fromkeys(problems))


def _plan(config: Mapping[str, Any], device: str, world_size: int) -> Plan:
    models = len(config["seeds"]) * len(variants(config))
    model_cells = method_cells = stability = 0
    for dataset in config["datasets"]:
        for kind in config["kinds"]:
            methods = len(methods_for(config, dataset["name"], kind))
            groups = len(config["backbones"])
            model_cells += groups * models
            method_cells += groups * models * methods
            stability += groups * methods if models > 1 else 0
    jobs = model_cells
    per_rank = [len(range(rank, jobs, world_size)) for rank in range(world_size)]
    return Plan(device, [d["name"] for d in config["datasets"]], jobs, model_cells, method_cells, stability,
                len(config["datasets"]), per_rank)

