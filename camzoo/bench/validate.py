"""Every check a benchmark config must pass before its first cell, in one place.

Why: a grid runs for hours; a typo in its last dataset's options, an unknown backbone or a CUDA
device that is not there must fail in seconds, before anything is trained or written (an aborted
start used to leave an empty run in the store). The config's shape is checked first (a wrong shape
stops there); then every check does the real thing on the cheapest input: datasets are loaded
(on-disk splits: their index; generated ones: one image with the same generator arguments), every
(kind, backbone, model options) is built and runs one image of the configured size forward, every
training config is built and validated. All problems are collected and reported together.
``camzoo.bench.plan.build_plan`` calls these and is their only caller.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import torch

SPLITS = ("train", "test")
DATASET_KEYS = ("name", "root", "image_size", "options")
VARIANT_KEYS = ("name", "train", "model")
# [eval] keys that are the harness's own (how many images, batching, the gallery), not scoring settings
HARNESS_EVAL_KEYS = ("images", "batch_size", "gallery_images", "block_images", "keep_maps")


class ConfigError(ValueError):
    """A benchmark config that cannot run; raised before anything is trained or written."""


def shape_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with the config's shape: types, ranges and names, without loading anything."""
    from ..methods import get_method
    from ..models import kind_names

    problems: list[str] = []
    seeds = config["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        problems.append(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    elif len(set(seeds)) != len(seeds):
        problems.append(f"seeds must be distinct, got {seeds!r}")
    kinds = kind_names()
    if not isinstance(config["kinds"], list) or not config["kinds"] or set(config["kinds"]) - set(kinds):
        problems.append(f"kinds must be a non-empty subset of {kinds}, got {config['kinds']!r}")
    backbones = config["backbones"]
    if not isinstance(backbones, list) or not backbones or not all(isinstance(b, str) for b in backbones):
        problems.append(f"backbones must be a non-empty list of names, got {backbones!r}")
    methods = config["methods"]
    if not isinstance(methods, list) or not methods:
        problems.append(f"methods must be a non-empty list of method names or selectors, got {methods!r}")
    else:
        for method in methods:
            try:
                get_method(method)
            except (TypeError, ValueError) as err:
                problems.append(str(err))
    problems += _dataset_problems(config["datasets"])
    from .sources import entry_problems

    problems += entry_problems(config["models"])
    for key in ("kind", "backbone", "seed"):
        if key in config["train"]:
            problems.append(f"train.{key} is set by the grid (kinds/backbones/seeds), not in [train]")
    names = [v.get("name") if isinstance(v, Mapping) else None for v in config["variants"]]
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        problems.append(f"every variant needs a distinct non-empty name, got {names!r}")
    for variant in config["variants"]:
        extra = set(variant) - set(VARIANT_KEYS) if isinstance(variant, Mapping) else set()
        if extra:
            problems.append(f"variant {variant['name']!r} has unknown keys {sorted(extra)} (valid: name, train, model)")
    evaluation = config["eval"]
    for key in ("images", "batch_size", "block_images"):
        if not isinstance(evaluation[key], int) or isinstance(evaluation[key], bool) or evaluation[key] < 1:
            problems.append(f"eval.{key} must be a positive integer, got {evaluation[key]!r}")
    for key in ("gallery_images", "keep_maps"):
        if not isinstance(evaluation[key], int) or isinstance(evaluation[key], bool) or evaluation[key] < 0:
            problems.append(f"eval.{key} must be an integer >= 0, got {evaluation[key]!r}")
    problems += _settings_problems(evaluation)
    device = config["device"]
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        problems.append(f"device must be auto, cpu or cuda, got {device!r}")
    return problems


def _dataset_problems(datasets: object) -> list[str]:
    if not isinstance(datasets, list) or not datasets:
        return ["datasets must name at least one dataset"]
    problems = []
    for dataset in datasets:
        if not isinstance(dataset, Mapping) or "name" not in dataset:
            problems.append(f"each dataset needs a name, got {dataset!r}")
            continue
        extra = set(dataset) - set(DATASET_KEYS)
        if extra:
            problems.append(f"dataset {dataset['name']!r} has unknown keys {sorted(extra)} "
                            "(valid: name, root, image_size, options)")
    return problems


def _settings_problems(evaluation: Mapping[str, Any]) -> list[str]:
    """The scoring settings' own checks (camzoo.metrics.EvalSettings), with the config's key names."""
    from ..metrics.settings import EvalSettings, SettingsError

    try:
        EvalSettings.from_config(evaluation)
    except SettingsError as err:
        return err.problems
    except (TypeError, ValueError) as err:
        return [str(err)]
    return []


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


def split_shape(split: Any) -> tuple[int, int]:
    """(number of classes, image side) of a loaded split (:func:`dataset_probe`'s)."""
    return len(split.classes), int(split[0][0].shape[-1])


def dataset_probe(dataset: Mapping[str, Any]):
    """Load what is cheap to load and return the test split: an on-disk dataset's index (both splits
    are loaded, so a missing one shows), a generated dataset's first image with the same arguments."""
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
    return found


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


def model_problems(config: Mapping[str, Any], variants: list[Mapping[str, Any]],
                   shapes: Mapping[str, tuple[int, int]]) -> list[str]:
    """Every model of the grid: its TrainConfig validates, and it builds and runs one image forward
    (at each dataset's classes and image size; 10 classes at 32 px where no dataset loaded)."""
    from ..models import build_model

    problems: list[str] = []
    built: set[tuple] = set()
    for variant in variants:
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
                        continue
                    problems += _layer_problems(config["methods"], model, f"{kind}/{backbone}")
    return list(dict.fromkeys(problems))


def _layer_problems(methods: list[str], model: torch.nn.Module, where: str) -> list[str]:
    """Rows ``NAME@LAYER``: the layer exists in the model and the method explains a layer."""
    from ..methods import get_method, split_layer
    from ..methods.layers import get_layer

    problems = []
    for method in methods:
        name, layer = split_layer(method)
        if layer is None or not get_method(name).applies_to(type(model)):
            continue
        try:
            get_layer(model, layer)
            get_method(name)(model, layer=layer)
        except (ValueError, TypeError) as err:
            problems.append(f"method {method!r} on {where}: {err}")
    return problems
