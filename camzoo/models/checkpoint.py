"""Model checkpoints: weights + the config that rebuilds the architecture + class names.

Why the config travels with the weights: ``load_model(path)`` must give back the exact model
(kind, backbone, options, preprocessing) without the user repeating how it was built. Files are
written atomically and read with ``weights_only=True`` (``camzoo.io``), so they hold only plain
containers and tensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..io import load_torch, save_torch
from .build import build_model

FORMAT = "camzoo-model"
VERSION = 1


def model_checkpoint(model: nn.Module) -> dict[str, Any]:
    """The model part of a checkpoint (the trainer adds its own resume state next to it)."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "kind" not in config:
        raise TypeError(f"{type(model).__name__} is not a camzoo model built by build_model(); cannot checkpoint it")
    return {
        "format": FORMAT,
        "version": VERSION,
        "camzoo_version": __version__,  # which camzoo wrote it (files from before this entry lack it)
        "config": config,
        "class_names": model.class_names,
        "pretrained_cfg": dict(model.pretrained_cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_model(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model`` (and any extra plain entries) atomically to ``path``."""
    return save_torch({**model_checkpoint(model), **extra}, path)


def is_camzoo_checkpoint(payload: Any) -> bool:
    """Whether a loaded file is a camzoo model checkpoint (rather than, say, a plain state_dict)."""
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a camzoo checkpoint dict (clear errors for foreign or corrupt files)."""
    return validate_checkpoint(load_torch(path, map_location=map_location), path)


def validate_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Check a loaded checkpoint's format, version and entries; errors name the file."""
    if not is_camzoo_checkpoint(ckpt):
        raise ValueError(
            f"{str(path)!r} is not a camzoo model checkpoint (no format={FORMAT!r} entry); "
            "camzoo.models.load_model reads files written by camzoo's trainer or save_model()"
        )
    if ckpt.get("version") != VERSION:
        writer = f" (written by camzoo {ckpt['camzoo_version']})" if isinstance(ckpt.get("camzoo_version"), str) else ""
        raise ValueError(f"{str(path)!r} has checkpoint version {ckpt.get('version')!r}{writer}; this camzoo "
                         f"{__version__} reads version {VERSION}")
    for key in ("config", "state_dict", "pretrained_cfg"):
        if not isinstance(ckpt.get(key), dict):
            raise ValueError(f"{str(path)!r} is damaged: its {key!r} entry is missing or not a dict")
    return ckpt


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture a checkpoint describes (never downloads weights)."""
    try:
        return build_model(config["kind"], config["backbone"], config["num_classes"], **config.get("options", {}))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint config {config!r} cannot be rebuilt: {err}") from err


def load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says which architecture did not fit."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        first_lines = "; ".join(str(err).splitlines()[:4])
        raise ValueError(
            f"the weights in {source} do not fit the architecture "
            f"{getattr(model, 'config', type(model).__name__)!r}: {first_lines}"
        ) from err


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Restore a trained camzoo model (eval mode) with its config, class names and preprocessing."""
    return model_from_checkpoint(read_checkpoint(path, map_location=map_location), path, map_location)


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike,
                          map_location: str | torch.device = "cpu") -> nn.Module:
    """The model a validated checkpoint dict describes, with its weights, in eval mode."""
    model = build_from_config(ckpt["config"])
    load_state(model, ckpt["state_dict"], repr(str(path)))
    model.class_names = ckpt.get("class_names")
    cfg = dict(ckpt["pretrained_cfg"])
    for key in ("input_size", "mean", "std"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    model.pretrained_cfg = cfg
    return model.to(map_location).eval()
