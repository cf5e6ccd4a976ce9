"""Small facts about a model that every layer of camzoo needs: its device, input size and
normalisation, where its output keeps the logits (and which layer makes them), eval mode, sync.

Why one module: methods, metrics, the loader, the trainer and the harness must agree on these; a
second copy that restores modes differently is how hooks and train-mode leaks creep back in, and a
second rule for reading a model's output is how ``camzoo bench`` came to fail on models that
``camzoo explain`` takes.
"""

from __future__ import annotations

import contextlib
from typing import Any
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OutputSelector = int | str | Callable[[Any], torch.Tensor] | None
# torchvision's classifiers record no input size; the crop of their ImageNet weights' transforms is 224
# px, except Inception v3's 299 (a ViT keeps its own ``image_size``). Its other model families are
# fully convolutional or take other inputs: they run at the image's own size.
TORCHVISION_CROP = 224
TORCHVISION_CROPS = {"Inception3": 299}
_TORCHVISION_OTHER_TASKS = ("segmentation", "detection", "video", "optical_flow")


def model_device(model: nn.Module, fallback: torch.device | None = None) -> torch.device:
    """The device of the model's first parameter or buffer (``fallback``, else CPU, if it has none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback if fallback is not None else torch.device("cpu")


def model_in_channels(model: nn.Module) -> int:
    """The channel count the model's first convolution takes (3 where the model has none).

    Why from the layer: a grayscale classifier (timm ``in_chans=1``) keeps RGB values in its config."""
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return 3


def model_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the model expects, from its timm-style ``pretrained_cfg``; for a torchvision detector
    (it normalises inside its ``GeneralizedRCNNTransform`` and takes images in [0, 1]) mean 0, std 1;
    ImageNet's otherwise."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg and type(getattr(model, "transform", None)).__name__ == "GeneralizedRCNNTransform":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return mean, std


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) the model expects: its ``pretrained_cfg["input_size"]`` (timm, camzoo checkpoints,
    ``torchvision:NAME``); for a torchvision classifier built directly, :func:`torchvision_input_size`;
    None when the model does not say (its images then run at their own size).

    Why one rule: ``camzoo.explain`` and ``camzoo explain`` both size images by it, so one model and
    one photo give one map whichever way the model was built."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return (int(size[-2]), int(size[-1])) if size else torchvision_input_size(model)


def torchvision_input_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) of a torchvision classification model (its class defined in ``torchvision.models``): a
    ViT's ``image_size``, else the crop of its ImageNet weights' transforms (:data:`TORCHVISION_CROPS`,
    else 224); None for any other model, and for torchvision's segmenters, detectors and video models."""
    module = type(model).__module__
    if not module.startswith("torchvision.models") or any(f".{task}" in module for task in _TORCHVISION_OTHER_TASKS):
        return None
    side = getattr(model, "image_size", None)
    side = side if isinstance(side, int) and not isinstance(side, bool) else TORCHVISION_CROPS.get(
        type(model).__name__, TORCHVISION_CROP)
    return side, side


def describe_output(output: object) -> str:
    """A model output as messages name it: its type, and a mapping's first keys."""
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output)[:10]}"
    return f"a {type(output).__name__}"


def select_output(output: object, selector: OutputSelector = None) -> object:
    """The logits inside a model's output: the rule of ``camzoo.methods.outputs`` (``output=``),
    here so that the model loader, below the methods, reads an output exactly as they do.

    None picks by a fixed rule: a tensor is itself; a tuple or list gives its first item; a mapping
    its ``"logits"`` key; any other object its ``logits`` attribute (dataclasses, Hugging Face
    outputs). An int indexes a tuple/list, a str names a key or attribute, a callable gets the raw
    output and returns the logits."""
    try:
        if callable(selector):
            return selector(output)
        if isinstance(output, torch.Tensor) and selector is not None:
            raise TypeError(f"output={selector!r} selects from a tuple, list, dict or object, but the model "
                            "returned a tensor; drop output=")
        if isinstance(selector, bool):
            raise TypeError(f"output= must be None, an int, a str or a callable; got {selector!r}")
        if isinstance(selector, int):
            return output[selector]  # type: ignore[index]
        if isinstance(selector, str):
            return output[selector] if isinstance(output, Mapping) else getattr(output, selector)
        if selector is not None:
            raise TypeError(f"output= must be None, an int, a str or a callable; got {type(selector).__name__}")
    except (IndexError, KeyError, AttributeError, TypeError) as err:
        if "output= must be" in str(err) or "drop output=" in str(err):
            raise
        raise ValueError(f"output={selector!r} does not select anything in the model's output "
                         f"({describe_output(output)}): {err}") from err
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    if isinstance(output, Mapping):
        if "logits" in output:
            return output["logits"]
        raise ValueError(f"the model returned {describe_output(output)} and none is called 'logits'; pass "
                         "output='KEY' (or a callable) to say which holds the class logits")
    if hasattr(output, "logits"):
        return output.logits  # type: ignore[attr-defined]
    return output


def output_head(model: nn.Module, images: torch.Tensor, output: OutputSelector = None
                ) -> tuple[str | None, tuple[int, ...] | None]:
    """Which layer makes the model's logits, and their shape: one forward of ``images`` (no grad, eval
    mode), its output read by :func:`select_output`, matched to the Linear or convolution whose output
    holds the same values (the tensor itself or a view of it, e.g. flattened).

    Why: the last Linear is not always the classifier (an auxiliary head may be registered after it),
    so the class count and the messages about it come from the output itself. Returns (None, shape)
    when no such layer makes the logits (computed after the head), and (None, None) when the model
    cannot run on ``images`` or its output holds no tensor logits."""
    made: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                made[name] = out
        return hook

    heads = [(name, module) for name, module in model.named_modules()
             if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))]
    handles = [module.register_forward_hook(keep(name)) for name, module in heads]
    try:
        with torch.no_grad(), eval_mode(model):
            logits = select_output(model(images), output)
    except Exception:  # the user's model may raise anything; the caller falls back
        return None, None
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor):
        return None, None
    for name in reversed([name for name, _ in heads]):
        out = made.get(name)
        if out is not None and out.numel() == logits.numel() and out.data_ptr() == logits.data_ptr():
            return name, tuple(logits.shape)
    return None, tuple(logits.shape)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards, even on error."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N (any case, spaces ignored) -> a torch.device that exists here.

    Why the one resolver: the CLI, the bench plan, the trainer and every rank of a torchrun group
    must read a device name the same way, and a name that cannot work here (``gpu``, CUDA on a
    machine without it, ``cuda:9`` on one GPU) must fail before any work with a ValueError that says
    what exists, not deep inside a model's ``.to()``. "auto" is CUDA when torch sees one, else CPU.
    """
    text = name.strip().lower() if isinstance(name, str) else name
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device; use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r} does not exist: torch sees {count} CUDA device(s) "
                             f"(cuda:0..cuda:{count - 1})")
    return device


def describe_device(device: torch.device) -> str:
    """A device as results tables name it: the GPU model, or the CPU architecture and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings measure the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions and matmuls in hardware (AVX512-BF16 or AMX, as oneDNN
    reports). Where it does, bf16 autocast trains the small CNNs 1.4-2.3x faster than float32
    (docs/performance.md); where it does not, oneDNN emulates bf16 and autocast is slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN's bf16 query
        return False
