"""Small facts about a model that every layer of camzoo needs: its device, input size and
normalisation, eval mode, sync.

Why one module: methods, metrics, the trainer and the harness must agree on these; a second copy
that restores modes differently is how hooks and train-mode leaks creep back in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_device(model: nn.Module, fallback: torch.device | None = None) -> torch.device:
    """The device of the model's first parameter or buffer (``fallback``, else CPU, if it has none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback if fallback is not None else torch.device("cpu")


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
    """(H, W) the model expects, from its ``pretrained_cfg``; None when it does not say."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return (int(size[-2]), int(size[-1])) if size else None


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
