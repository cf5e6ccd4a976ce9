"""Any model a user points camzoo at: a camzoo checkpoint, a timm or a torchvision architecture
with local weights.

Why in ``models``: the CLI, and any script, need the same rules — a camzoo ``model.pt`` rebuilds
itself (a ``--model`` that contradicts it is refused, not ignored); otherwise a timm name (``resnet18``
or ``timm:resnet18``), a torchvision name (``torchvision:resnet18``; segmenters and detectors:
``torchvision_models``) or the user's own module
(``package.module:factory``, any callable returning an ``nn.Module``) with an optional local
state_dict (.pth / .safetensors). Never downloads: a model without weights keeps its random
initialisation. Errors are :class:`ModelSpecError` (a ValueError) naming the option, the file and
the problem; a state_dict that does not fit names its first missing / unexpected / mis-shaped keys.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from typing import Any
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..io import load_torch
from .checkpoint import is_camzoo_checkpoint, model_from_checkpoint, validate_checkpoint
from .torchvision_models import PREFIX as TORCHVISION_PREFIX, UnknownArchitecture, UnknownOption
from .torchvision_models import factory as torchvision_factory

TIMM_PREFIX = "timm:"
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
DOWNLOAD_KWARGS = ("pretrained", "weights", "weights_backbone")  # timm / torchvision arguments that fetch weights


class ModelSpecError(ValueError):
    """The model name, checkpoint or class count does not describe a loadable model; ``param``
    names the user-facing option at fault ("model", "checkpoint" or "num-classes")."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def state_dict_mismatch(model: nn.Module, state: Mapping[str, Any], shown: int = 3) -> str | None:
    """None when ``state`` fits ``model`` exactly; else one line naming the first missing,
    unexpected and mis-shaped keys (torch's own message lists all of them over many lines)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches (file vs model)", shapes)):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{label}: {', '.join(keys[:shown])}{more}")
    return "; ".join(parts) or None


def _one_line(err: Exception, path: str | os.PathLike) -> str:
    """``load_torch``'s error, without the many lines torch adds when it refuses a pickle."""
    text = str(err)
    if "\n" not in text.strip() and len(text) <= 400:
        return text
    cause = " ".join(str(err.__cause__ or "").split())
    found = re.search(r"Unpickler error:\s*(.+?)(?:\s+Check the documentation|$)", cause)
    reason = found.group(1) if found else cause
    said = f" (torch: {reason[:160]})" if reason else ""
    return (f"cannot load {str(path)!r} as a torch checkpoint: it is truncated or corrupt, or it holds pickled "
            f"objects other than tensors, which camzoo refuses to unpickle (weights_only=True){said}")


def is_import_path(name: str) -> bool:
    """Whether ``name`` names the user's own factory, ``package.module:factory`` (not timm: / torchvision:)."""
    return ":" in name and not name.startswith((TORCHVISION_PREFIX, TIMM_PREFIX))


def _import_factory(name: str) -> Callable[..., Any]:
    """The callable ``package.module:attr`` names. The working directory is tried last, so a
    ``camzoo`` console script finds a module next to the user as ``python -m`` would."""
    if not _IMPORT_PATH.fullmatch(name):
        hub = (" Hugging Face Hub names are not supported (camzoo never downloads): give the architecture's timm name "
               "and a local checkpoint." if name.startswith(("hf-hub:", "hf_hub:")) else "")
        raise ModelSpecError(f"{name!r} is not an import path; expected package.module:factory (e.g. mynets.models:build)."
                             f"{hub}", "model")
    module_name, attr = name.split(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything while it imports
        raise ModelSpecError(f"cannot import {module_name!r} for model {name!r}: {type(err).__name__}: {err} "
                             "(is it on PYTHONPATH, or in the working directory?)", "model") from err
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelSpecError(f"module {module_name!r} has no attribute {attr!r} (model {name!r})", "model")
        target = getattr(target, part)
    if not callable(target):
        raise ModelSpecError(f"{name!r} is a {type(target).__name__}, not a callable returning an nn.Module", "model")
    return target


def _takes(factory: Callable[..., Any], parameter: str) -> bool:
    """Whether ``factory`` accepts the keyword ``parameter`` (or any keyword)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == parameter or p.kind is p.VAR_KEYWORD for p in params)


def _user_factory(name: str, kwargs: Mapping[str, Any]) -> tuple[str, Callable[..., nn.Module]]:
    """``_factory`` for ``package.module:factory``: num_classes and in_chans are passed only if it takes them."""
    factory = _import_factory(name)

    def build_user(num_classes: int | None = None, in_chans: int | None = None) -> nn.Module:
        extra = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans))
                 if v is not None and _takes(factory, k)}
        model = factory(**kwargs, **extra)
        if not isinstance(model, nn.Module):
            raise TypeError(f"it returned a {type(model).__name__}, not an nn.Module")
        return model

    build_user.takes_num_classes = _takes(factory, "num_classes")  # type: ignore[attr-defined]
    return f"model {name!r}", build_user


def _make(build: Callable[..., nn.Module], label: str, *args: Any, **kwargs: Any) -> nn.Module:
    """``build(*args, **kwargs)``; whatever the constructor raises (a bad keyword argument, the user's
    own code) becomes one line naming the model."""
    try:
        return build(*args, **kwargs)
    except ModelSpecError:
        raise
    except Exception as err:
        text = " ".join(str(err).split())
        raise ModelSpecError(f"cannot build {label}: {type(err).__name__}: {text[:300]}", "model") from err


def _factory(name: str, kwargs: Mapping[str, Any] | None = None) -> tuple[str, Callable[..., nn.Module]]:
    """(description for messages, ``build(num_classes=None, in_chans=None) -> model``) for a timm or
    torchvision name or an import path; ``kwargs`` go to the architecture's constructor."""
    kwargs = dict(kwargs or {})
    if is_import_path(name):
        return _user_factory(name, kwargs)
    refused = [k for k in DOWNLOAD_KWARGS if k in kwargs]
    if refused:
        raise ModelSpecError(f"model argument {refused[0]!r} is not allowed: camzoo never downloads weights; pass a "
                             "local checkpoint instead", "factory-kwargs")
    if name.startswith(TORCHVISION_PREFIX):
        try:
            return torchvision_factory(name[len(TORCHVISION_PREFIX):], kwargs)
        except UnknownArchitecture as err:
            raise ModelSpecError(str(err), "model") from err
        except UnknownOption as err:
            raise ModelSpecError(str(err), "factory-kwargs") from err
    import timm

    arch = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:5]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        tv = " Prefix torchvision: for a torchvision model (e.g. torchvision:resnet18)."
        raise ModelSpecError(f"{arch!r} is not a timm model name.{hint}{tv}", "model")
    return f"timm model {arch!r}", lambda num_classes=None, in_chans=None: timm.create_model(
        arch, pretrained=False, **kwargs, **({} if num_classes is None else {"num_classes": num_classes}),
        **({} if in_chans is None else {"in_chans": in_chans}))


def _stem_channels(model: nn.Module, state: Mapping[str, Any]) -> int | None:
    """Input channels of a state_dict: what the model's first convolution's weight takes (1 for a
    grayscale model trained with timm's ``in_chans=1``)."""
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1), None)
    weight = state.get(f"{first}.weight") if first else None
    return int(weight.shape[1]) if hasattr(weight, "shape") and len(weight.shape) == 4 else None


def _head_classes(model: nn.Module, state: Mapping[str, Any], output: Any = None) -> tuple[int | None, str | None]:
    """Class count of a state_dict and the layer it was read from: the rows of the weight that the
    layer making the model's logits loads (``modelutil.output_head``: one probe forward of ``model``,
    its output read as ``camzoo.explain`` reads it, ``output`` the selector); else, when the probe
    cannot tell, the last Linear (or 1x1 conv). Why not always the last: an auxiliary head may be
    registered after the classifier."""
    from ..modelutil import model_in_channels, model_input_size, output_head

    probe = torch.zeros(1, model_in_channels(model), *(model_input_size(model) or (64, 64)))
    head = output_head(model, probe, output)[0]
    if head is None:
        heads = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        head = heads[-1] if heads else None
    weight = state.get(f"{head}.weight") if head else None
    return (int(weight.shape[0]) if hasattr(weight, "shape") and len(weight.shape) >= 1 else None), head


def _unwrap_state(payload: Any, checkpoint: str | os.PathLike | None) -> dict[str, torch.Tensor] | None:
    """The state_dict in a loaded file: the file itself, or its ``state_dict`` entry (timm, Lightning)
    or ``model`` entry (torchvision's reference training scripts, DeiT); None without a file."""
    if payload is None:
        return None
    state = payload
    if isinstance(state, dict):
        state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSpecError(f"{str(checkpoint)!r} does not hold a state_dict of tensors", "checkpoint")
    return state


def _with_batch_counters(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus the model's own BatchNorm ``num_batches_tracked`` where the file has none.

    Why: torchvision builds a pretrained detector's backbone with FrozenBatchNorm2d, which has no
    such counter, but camzoo builds it without weights, so with BatchNorm2d; the counter only
    matters in training, and both layers compute the same in eval mode."""
    missing = {k: v for k, v in model.state_dict().items() if k.endswith(".num_batches_tracked") and k not in state}
    return {**state, **missing} if missing else state


def _camzoo_model(payload: dict, checkpoint: str | os.PathLike, name: str | None, num_classes: int | None) -> nn.Module:
    try:
        ckpt = validate_checkpoint(payload, checkpoint)
        config = ckpt["config"]
        if name is not None and name.split(":")[-1] != config.get("backbone"):
            raise ModelSpecError(
                f"{str(checkpoint)!r} is a camzoo {config.get('kind')} model on backbone {config.get('backbone')!r}, "
                f"not {name!r}; drop --model (a camzoo checkpoint rebuilds its own architecture)", "model")
        if num_classes is not None and num_classes != config.get("num_classes"):
            raise ModelSpecError(f"{str(checkpoint)!r} has {config.get('num_classes')} classes, not {num_classes}; "
                                 "drop --num-classes", "num-classes")
        return model_from_checkpoint(ckpt, checkpoint)
    except ModelSpecError:
        raise
    except ValueError as err:
        raise ModelSpecError(str(err), "checkpoint") from err


def load_any_model(name: str | None, checkpoint: str | os.PathLike | None, num_classes: int | None = None,
                   factory_kwargs: Mapping[str, Any] | None = None, output: Any = None) -> nn.Module:
    """A camzoo checkpoint as saved, or an architecture with optional local weights, in eval mode.

    Args:
        name: a timm name (``resnet18``, ``timm:resnet18``), ``torchvision:NAME``, or the user's
            ``package.module:factory`` (any callable returning an nn.Module; the working directory is
            searched last); not needed for a camzoo checkpoint, and if given it must match it.
        checkpoint: a camzoo ``model.pt`` or a state_dict ``.pth`` / ``.safetensors`` (or a dict holding
            it as ``state_dict`` or ``model``, as torchvision's reference scripts save it), loaded with
            ``weights_only=True`` (a pickle of other objects is refused); None keeps random weights.
        num_classes: the classifier's size (>= 1; 1 = a single-logit model, explained with a sigmoid
            score); default: read from the weights, else the architecture's default (1000; torchvision
            segmenters 21, detectors 91, background included). A factory
            gets ``num_classes`` (and ``in_chans`` read from the weights) only if it has such a parameter.
        factory_kwargs: keyword arguments for the constructor (timm.create_model, torchvision's
            get_model or the factory), e.g. ``{"in_chans": 1}`` or ``{"img_size": 64}``.
        output: where the model's output keeps the logits (``camzoo.explain``'s ``output=``): the
            class count is read from the weights of the layer that makes them.

    Returns:
        The model. Errors are :class:`ModelSpecError`, one line, ``param`` naming the option at fault.
    """
    if factory_kwargs is not None and (not isinstance(factory_kwargs, Mapping)
                                       or not all(isinstance(k, str) for k in factory_kwargs)):
        raise ModelSpecError(f"model arguments must be a mapping of names to values; got {factory_kwargs!r}",
                             "factory-kwargs")
    kwargs = dict(factory_kwargs or {})
    if "num_classes" in kwargs:
        given = kwargs.pop("num_classes")
        if num_classes is not None and given != num_classes:
            raise ModelSpecError(f"num_classes={given!r} in the model arguments contradicts num_classes={num_classes!r}",
                                 "num-classes")
        num_classes = given
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ModelSpecError(f"the number of classes must be an integer >= 1; got {num_classes!r} (0 would "
                             "build a model without a classifier head)", "num-classes")
    payload = None
    if checkpoint is not None:
        try:  # torchvision's reference scripts save their argparse.Namespace next to the weights: a safe type
            with torch.serialization.safe_globals([argparse.Namespace]):
                payload = load_torch(checkpoint)
        except (ValueError, FileNotFoundError) as err:
            raise ModelSpecError(_one_line(err, checkpoint), "checkpoint") from err
        if is_camzoo_checkpoint(payload):
            if kwargs:
                raise ModelSpecError(f"{str(checkpoint)!r} is a camzoo model, which rebuilds its own architecture; drop "
                                     f"the model arguments {sorted(kwargs)}", "factory-kwargs")
            return _camzoo_model(payload, checkpoint, name, num_classes)
    if name is None:
        raise ModelSpecError("a model name is needed unless the checkpoint is a camzoo model (from camzoo train or bench)",
                             "model")
    label, build = _factory(name, kwargs)
    if num_classes is not None and not getattr(build, "takes_num_classes", True):
        raise ModelSpecError(f"{label} takes no num_classes parameter; drop the class count (or add the parameter "
                             "to the factory)", "num-classes")
    state = _unwrap_state(payload, checkpoint)
    if state is None:
        return _make(build, label, num_classes).eval()
    reader = getattr(build, "read_state", None)  # torchvision segmenters / detectors: their own head rule
    read_from = ""  # where a class count read from the weights came from, for a state_dict that does not fit
    if reader is not None:
        found, implied = reader(state)
        model = _make(build, label, found if num_classes is None else num_classes, None, **implied)
    else:
        default = _make(build, label)
        if num_classes is None:
            num_classes, head = _head_classes(default, state, output)
            if num_classes is not None:
                read_from = f" (the class count {num_classes} is the rows of {head}.weight, the layer that makes " \
                            "the model's output)"
        in_chans = _stem_channels(default, state)
        in_chans = None if in_chans in (None, 3) or label.startswith("torchvision") or "in_chans" in kwargs else in_chans
        model = _make(build, label, num_classes, in_chans)
    state = _with_batch_counters(model, state)
    problem = state_dict_mismatch(model, state)
    if problem:
        raise ModelSpecError(f"{str(checkpoint)!r} does not fit {label}: {problem}{read_from}",
                             "checkpoint")
    model.load_state_dict(state)
    return model.eval()
