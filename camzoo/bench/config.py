"""What a benchmark run computes: presets, TOML overrides, validation and the run's identity.

A config is plain data (nested dicts of scalars and lists), so it can be printed, hashed, stored
with every result and read back by `camzoo report` without importing anything else.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any
from collections.abc import Mapping

_BASE: dict[str, Any] = {
    "preset": "custom",
    "device": "auto",
    "seeds": [0, 1, 2],
    "kinds": None,  # None: every registered model kind whose task one of the datasets has
    "backbones": ["resnet20"],
    # Explanation methods, then the reference (control) methods every table carries: what noise,
    # a centre prior, image edges and the ground truth score through the very same pipeline. Names or
    # selectors by the methods' declared facts (camzoo.methods.SELECTORS): "@one-pass" = every method
    # that shares one forward and backward, "@controls", "@family:NAME", "@cost:CLASS", "@all".
    "methods": ["@one-pass", "attention", "@controls"],
    "datasets": [{"name": "shapes", "root": "", "image_size": 32, "options": {}}],
    # Training; any field of camzoo.train.TrainConfig except kind/backbone/seed.
    "train": {"epochs": 10, "batch_size": 128, "lr": 0.1},
    # Optional hyper-parameter variants: [{"name": ..., "train": {...}, "model": {...}}]
    "variants": [],
    # Trained models to load instead of training (camzoo.bench.sources): [{"name": "resnet18",
    # "checkpoints": ["a.pth", "b.pth"], "label": ..., "options": {...}, "layer": ...}]. When given,
    # only these are scored (kinds, backbones, seeds, variants and [train] are not used).
    "models": [],
    # [eval]: the harness's own keys (below), then every scoring setting of camzoo.metrics.EvalSettings
    # at its field's default (resolve_config adds them: one copy of the defaults, documented there).
    "eval": {
        "images": 256,  # evaluation images per model (the first N of the test split)
        "batch_size": 128,  # images per explain() call
        # Streaming: the evaluation images go through each model in blocks of this many on the device
        # (peak memory does not grow with eval.images); per-image values are kept for every image,
        # maps only for the first keep_maps (the gallery, report.html and cross-seed stability read those).
        "block_images": 1000,
        "keep_maps": 1000,
        "gallery_images": 4,  # test images shown in the gallery plot
    },
}


def scoring_defaults() -> dict[str, Any]:
    """``EvalSettings``' field defaults as config values (TOML has lists, not tuples; "all" images is
    ``game_images = "all"``): what ``EvalSettings.from_config`` reads back as the same settings."""
    import dataclasses

    from ..metrics.settings import EvalSettings

    def value(field: dataclasses.Field) -> Any:
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
        if default is None:  # game_images, the one optional field: every image
            return "all"
        return list(default) if isinstance(default, tuple) else default

    return {field.name: value(field) for field in dataclasses.fields(EvalSettings)}


def _base() -> dict[str, Any]:
    """The config every preset starts from: ``_BASE`` with the scoring defaults in its [eval] (built when a
    config is resolved: reading them imports the metrics, which ``import camzoo.bench.config`` need not pay for)."""
    base = copy.deepcopy(_BASE)
    base["eval"].update(scoring_defaults())
    return base


PRESETS: dict[str, dict[str, Any]] = {
    # The README's main job: a 2-core CPU, a few minutes, numbers that mean something.
    "quick": {
        "preset": "quick",
        # Two seeds: one cross-seed pair per kind for stability, and seed-averaged per-image values for the
        # paired tests; the separations this preset must show hold (benchmarks/quick_separations.py).
        "seeds": [0, 1],
        "backbones": ["resnet8"],
        "datasets": [{
            "name": "shapes", "root": "", "image_size": 32,
            "options": {"num_classes": 10, "train": {"num_images": 4000}, "test": {"num_images": 1000}},
        }, {
            # the object track (docs/benchmark.md): a segmenter, each object of a scene explained in turn. It
            # needs many small steps: 3 epochs of batch 32 at lr 0.4 reach mIoU ~0.8 at 48 px
            # (docs/performance.md); at 32 px objects are 3-5 px across
            "name": "scenes", "task": "segmentation", "root": "", "image_size": 48,
            "options": {"train": {"num_images": 4000}, "test": {"num_images": 500}},
            "train": {"epochs": 3, "batch_size": 32, "lr": 0.4},
        }, {
            # a planted shortcut (docs/benchmark.md): digits relabelled at random, the label told only by a
            # watermark in 90 % of one class's images and 10 % of the other's; a baseline and LFI-CAM learn
            # it in seconds, and shortcut_share asks whether their maps point at it
            "name": "digits", "root": "", "image_size": 32, "kinds": ["baseline", "lfi"],
            "options": {"shortcut": "watermark"},
        }],
        # Short runs need a warm-up and a high peak rate (measured: docs/results.md). amp: bfloat16
        # autocast, on the CPU as on a GPU: 1.4-2.3x faster training where the CPU has native bf16
        # (AVX512-BF16/AMX; elsewhere camzoo warns: set train.amp = false); scoring stays float32.
        "train": {
            "epochs": 5, "batch_size": 64, "lr": 0.2, "nesterov": True, "weight_decay": 5e-4,
            "warmup": 0.25, "augment": "flip", "amp": True,
        },
        # The gradient family from one pass per model, the kinds' own maps, the controls.
        "methods": ["@one-pass", "attention", "@controls"],
        # 6 steps over the first 15 % of the pixels: ~26 px per step, a fifth of the mean object
        # (115 px), where 16 steps over all pixels removed 55 % of it in one step (docs/metrics.md).
        # Maps, localization and stability use all 96 images; the games (~50 forwards per image and
        # method) the first 48 (docs/performance.md).
        "eval": {"images": 96, "game_images": 48, "deletion_steps": 6, "deletion_fraction": 0.15,
                 # what tells the methods apart: the 2x2 Grid Pointing Game on the model and on
                 # DiFull, and the Random Logit test; cost per cell in docs/performance.md. Grid cells
                 # at confidence >= 0.9, not 0.99: two-seed runs of the 5-epoch baseline had 7-10 of
                 # 160 images at 0.99, often of fewer than 4 classes, and then no grids at all
                 "grid_games": ["gridpg_2x2", "difull_2x2"], "grid_count": 16, "grid_threshold": 0.9,
                 "sensitivity": ["random_logit_similarity"]},
    },
    # A GPU: larger images and a deeper CIFAR ResNet plus an ImageNet-style ResNet-18.
    "standard": {
        "preset": "standard",
        "seeds": [0, 1, 2, 3, 4],
        "backbones": ["resnet56", "resnet18"],
        # the whole zoo (every registered method and control), and the one-pass family again at an
        # intermediate layer, where Grad-CAM, XGrad-CAM and HiResCAM are no longer one map
        "methods": ["@one-pass", "@one-pass@layer2", "@all"],
        "datasets": [{"name": "shapes", "root": "", "image_size": 64, "options": {"train": {"num_images": 20000}}},
                     {"name": "digits", "root": "", "image_size": 32, "options": {}},
                     # what the model uses: FunnyBirds' protocol on the parts world, and a planted shortcut
                     {"name": "parts", "root": "", "image_size": 64, "options": {}},
                     {"name": "shapes", "root": "", "image_size": 64,
                      "options": {"shortcut": "watermark", "train": {"num_images": 20000}}},
                     {"name": "scenes", "task": "segmentation", "root": "", "image_size": 64,
                      "options": {"train": {"num_images": 20000}}, "train": {"batch_size": 32, "lr": 0.4}},
                     # FCOS learns the boxes first and the classes late: many small steps (docs/methods.md)
                     {"name": "scenes", "task": "detection", "root": "", "image_size": 64,
                      "options": {"train": {"num_images": 20000}}, "train": {"batch_size": 16, "lr": 0.05}}],
        "train": {"epochs": 30, "batch_size": 128, "lr": 0.1},
        "eval": {"images": 1000, "deletion_steps": 32, "chunk_size": 256,
                 "grid_games": ["gridpg_2x2", "gridpg_3x3", "difull_2x2", "dipart_2x2", "focus"], "grid_count": 250,
                 "sensitivity": ["random_logit_similarity", "randomisation_spearman"], "reliability": "full"},
    },
    # The LFI-CAM paper's CIFAR protocol (ResNet-110, 300 epochs, step schedule) on user data.
    "paper": {
        "preset": "paper",
        "seeds": [0, 1, 2, 3, 4],
        "backbones": ["resnet110"],
        "methods": ["@all"],  # the whole zoo: every registered method and control
        "datasets": [{"name": "cifar10", "root": "data/cifar-10-batches-py", "image_size": 32, "options": {}}],
        "train": {
            "epochs": 300, "batch_size": 64, "lr": 0.1, "schedule": "step", "milestones": [0.5, 0.75],
            "weight_decay": 1e-4, "augment": "crop_flip",
        },
        "eval": {"images": 1000, "deletion_steps": 32, "chunk_size": 256},
    },
}

# Keys that change how a run executes but not what it computes: excluded from the run's identity.
# Training's own list (camzoo.train.RUNTIME_FIELDS) is the one the trainer's resume check uses too.
_RUNTIME_KEYS = ("device", "preset")


def _merge(base: dict[str, Any], override: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Recursively overlay ``override`` on ``base``; unknown top-level or eval keys are errors."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if where in ("", "eval.") and key not in base:
            raise ValueError(f"unknown config key {path!r}; valid keys here: {', '.join(sorted(base))}")
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping) and key not in ("options",):
            merged[key] = _merge(base[key], value, f"{path}.") if key == "eval" else {**base[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_config(
    preset: str | None = "quick", file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Preset (or the file's ``preset`` key), then the TOML file, then ``overrides``, merged.

    Method selectors become method names here (so the run's identity, ``--print-config`` and the
    stored config say exactly what runs); everything else is checked by ``camzoo.bench.plan.build_plan``.
    """
    from_file: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            from_file = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {err}") from err
    preset_name = from_file.get("preset") or preset or "quick"
    if preset_name not in PRESETS and preset_name != "custom":
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    config = _merge(_base(), PRESETS.get(preset_name, {}))
    config = _merge(config, from_file)
    config = _merge(config, overrides or {})
    if config["kinds"] is None:  # every registered kind of a task some dataset has (a kind's ``task``)
        from ..models import get_kind, kind_names

        tasks = {d.get("task", "classification") for d in config["datasets"] if isinstance(d, dict)}
        config["kinds"] = [k for k in kind_names() if getattr(get_kind(k), "task", "classification") in tasks]
    for dataset in config["datasets"]:
        if isinstance(dataset, dict):
            dataset.setdefault("root", "")
            dataset.setdefault("image_size", 32)
            dataset.setdefault("options", {})
    if isinstance(config["methods"], list):
        from ..methods import select_methods

        try:
            config["methods"] = select_methods(config["methods"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid benchmark config: methods: {err}") from None
    return config


def run_id(config: Mapping[str, Any], inputs: Mapping[str, str] | None = None) -> str:
    """Identity of what a config computes (not of where or how it runs): 12 hex digits. ``inputs``:
    the content digests of the files it reads (camzoo.bench.fingerprint); none (a grid on generated
    data) leaves the id the config's alone."""
    identity = {k: v for k, v in config.items() if k not in _RUNTIME_KEYS}
    from ..train.config import RUNTIME_FIELDS

    identity["train"] = {k: v for k, v in config["train"].items() if k not in RUNTIME_FIELDS}
    if inputs:
        identity["inputs"] = dict(inputs)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:12]


def to_toml(config: Mapping[str, Any]) -> str:
    """Write a resolved config as TOML (scalars, lists, tables, arrays of tables), for --print-config."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{k} = {scalar(v)}" for k, v in value.items()) + "}"
        raise TypeError(f"cannot write {type(value).__name__} to TOML")

    lines: list[str] = []
    tables: list[str] = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            tables += ["", f"[{key}]"] + [f"{k} = {scalar(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for item in value:
                tables += ["", f"[[{key}]]"] + [f"{k} = {scalar(v)}" for k, v in item.items()]
        else:
            lines.append(f"{key} = {scalar(value)}")
    return "\n".join(lines + tables) + "\n"
