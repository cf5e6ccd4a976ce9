"""Every check a benchmark config must pass before its first cell, in one place.

Why: a grid runs for hours; a typo in its last dataset's options, an unknown backbone or a CUDA
device that is not there must fail in seconds, before anything is trained or written (an aborted
start used to leave an empty run in the store). The config's shape is checked first (a wrong shape
stops there); then every check does the real thing on the cheapest input: datasets are loaded
(on-disk splits: their index; generated ones: one image with the same generator arguments), every
(kind, backbone, model options) is built and runs one image of the configured size forward, every
training config is built and validated. All problems are collected and reported together.
``camzoo.bench.plan.build_plan`` calls these. The shape of a ``[[datasets]]`` or ``[[variants]]``
entry is its spec's own business (camzoo.bench.specs); here are the checks that belong to no spec.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import torch

from .specs import SPLITS, DatasetSpec, Variant


class ConfigError(ValueError):
    """A benchmark config that cannot run; raised before anything is trained or written."""


def shape_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with the config's shape, without loading anything: :func:`config_problems`, then
    what the dataset and variant specs find in their entries (``camzoo bench --print-config``)."""
    return (config_problems(config) + eval_settings(config["eval"])[1] + DatasetSpec.parse_all(config["datasets"])[1]
            + Variant.parse_all(config["variants"])[1])


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with the shape of the config's parts that no spec parses: types, ranges and names
    (the scoring settings are :func:`eval_settings`'s)."""
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
    from .sources import entry_problems

    problems += entry_problems(config["models"])
    for key in ("kind", "backbone", "seed"):
        if key in config["train"]:
            problems.append(f"train.{key} is set by the grid (kinds/backbones/seeds), not in [train]")
    evaluation = config["eval"]
    for key in ("images", "batch_size", "block_images"):
        if not isinstance(evaluation[key], int) or isinstance(evaluation[key], bool) or evaluation[key] < 1:
            problems.append(f"eval.{key} must be a positive integer, got {evaluation[key]!r}")
    for key in ("gallery_images", "keep_maps"):
        if not isinstance(evaluation[key], int) or isinstance(evaluation[key], bool) or evaluation[key] < 0:
            problems.append(f"eval.{key} must be an integer >= 0, got {evaluation[key]!r}")
    device = config["device"]
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        problems.append(f"device must be auto, cpu or cuda, got {device!r}")
    return problems


def eval_settings(evaluation: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The scoring settings of the ``[eval]`` table (``camzoo.metrics.EvalSettings``, which checks
    itself with the config's key names), or None, and what is wrong with them."""
    from ..metrics.settings import EvalSettings, SettingsError

    try:
        return EvalSettings.from_config(evaluation), []
    except SettingsError as err:
        return None, err.problems
    except (TypeError, ValueError) as err:
        return None, [str(err)]


def split_shape(split: Any) -> tuple[int, int]:
    """(number of classes, image side) of a loaded split (:func:`dataset_probe`'s)."""
    return len(split.classes), int(split[0][0].shape[-1])


def dataset_probe(dataset: DatasetSpec):
    """Load what is cheap to load and return the test split: an on-disk dataset's index (both splits
    are loaded, so a missing one shows), a generated dataset's first image with the same arguments."""
    from ..data import info

    entry = info(dataset.name)
    found = None
    for split in SPLITS:
        if entry.needs_root:
            found = dataset.load(split)  # an on-disk split: its index (and, for array formats, its data)
            if len(found) == 0:
                raise ValueError(f"the {split} split is empty")
        else:
            count = dataset.split_options(split).get("num_images", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{split}.num_images must be a positive integer, got {count!r}")
            found = dataset.load(split, num_images=1, cache=False)  # the generator's arguments, one image
    return found


def model_problems(trainers: Sequence[tuple[str, Any]], methods: Sequence[str],
                   shapes: Mapping[str, tuple[int, int]]) -> list[str]:
    """Every model of the grid builds and runs one image forward (at each dataset's classes and image
    size; 10 classes at 32 px where no dataset loaded), and its ``NAME@LAYER`` rows find their layer.
    ``trainers``: (variant name, its TrainConfig, or None where it could not be built) for each
    (variant, kind, backbone): the model's options and classes are the TrainConfig's."""
    from ..models import build_model

    problems: list[str] = []
    built: set[tuple] = set()
    for variant, trainer in trainers:
        if trainer is None:  # an unknown [train] key: named where the TrainConfig was built
            continue
        where = "" if variant == "default" else f" (variant {variant!r})"
        kind, backbone, options = trainer.kind, trainer.backbone, trainer.model_options
        for classes, side in set(shapes.values()) or {(10, 32)}:
            classes = trainer.num_classes or classes
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
            problems += _layer_problems(methods, model, f"{kind}/{backbone}")
    return list(dict.fromkeys(problems))


def _layer_problems(methods: Sequence[str], model: torch.nn.Module, where: str) -> list[str]:
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


def used_images(dataset: DatasetSpec, probe: Any, images: int) -> int:
    """The evaluation images a run takes from the dataset: ``eval.images``, or fewer where its test split
    holds fewer (an on-disk split: the probe's length; a generated one: its ``num_images``, else its
    module's default size, else its length once generated: digits' test split holds 355)."""
    import importlib

    from ..data import info

    if info(dataset.name).needs_root:
        return min(images, len(probe))
    asked = dataset.split_options("test").get("num_images")
    if asked is None:
        try:
            module = importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.data.{dataset.name}")
            asked = getattr(module, "DEFAULT_SPLIT_SIZES", {}).get("test")
        except ImportError:
            asked = None
    return min(images, int(asked) if asked is not None else len(dataset.load("test")))


def dataset_notes(dataset: DatasetSpec, probe: Any, images: int) -> list[str]:
    """What a run will take from an on-disk dataset, for ``camzoo bench --check`` and the run's header
    (camzoo.bench.datasets.split_notes), each line led by the dataset's name."""
    from .datasets import split_notes

    notes = split_notes(probe, used_images(dataset, probe, images), images,
                        'options = {unannotated = "error"} in its [[datasets]] entry')
    return [f"{dataset.key}: {note}" for note in notes]


def ground_truth_problems(dataset: DatasetSpec, probe: Any, images: int, sides: Mapping[int, str]) -> list[str]:
    """The evaluation images whose box or mask covers no pixel at a side the run resizes them to
    (``sides``: side -> how the user sets it), named by file and row: the localisation metrics cannot
    score them, and a run would stop at them half-way."""
    from ..data.coverage import vanished
    from .datasets import class_order

    split = class_order(probe)
    indices = range(used_images(dataset, probe, images)) if getattr(split, "records", None) is not None else ()
    problems = []
    for side, how in sides.items():
        found = vanished(split, indices, side)
        if found:
            problems.append(f"dataset {dataset.name!r}: {found.text(how)}")
    return problems
