"""Running a classifier for a metric: eval mode restored afterwards, no autograd, bounded batches.

Why: metrics that query the model (deletion/insertion, average drop) must not leave it in another
mode than they found it, must not build autograd graphs, and must feed it batches of a size the
caller chose so memory stays bounded however many (image, step) pairs there are.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..modelutil import eval_mode, model_device, select_output  # noqa: F401  (eval_mode is re-exported for the metrics)


def check_same_device(model: nn.Module, images: torch.Tensor) -> None:
    device = model_device(model, images.device)
    if device != images.device:
        raise ValueError(
            f"the model is on {device} but the images are on {images.device}: move both to one device "
            "(metrics run where their inputs are)"
        )


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision when asked: float16 on CUDA, bfloat16 elsewhere; a no-op otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def class_scores(model: nn.Module, images: torch.Tensor, softmax: bool = True, autocast: bool = False) -> torch.Tensor:
    """All class scores (B,num_classes) float32 of one forward pass: softmax probabilities, or raw outputs."""
    with autocast_context(images.device, autocast):  # read as camzoo.explain reads it: a tuple's first item,
        outputs = select_output(model(images))  # a dict's or a dataclass's logits
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2 or outputs.shape[0] != images.shape[0]:
        raise ValueError(f"the model must return logits (B,num_classes); got {getattr(outputs, 'shape', type(outputs).__name__)}")
    outputs = outputs.float()
    return outputs.softmax(dim=1) if softmax else outputs


def target_probabilities(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                         softmax: bool = True, autocast: bool = False,
                         all_targets: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax probability (or raw output when ``softmax=False``) of each image's target class.

    The caller holds ``torch.no_grad()`` and ``eval_mode``; this is one forward pass. Callers in a
    loop pass ``all_targets`` (every target of the batch) on the first call only: checking them
    against the number of outputs reads from the device, and later calls must not wait on the host.
    """
    scores = class_scores(model, images, softmax, autocast)
    if all_targets is not None:
        check_targets_in_range(all_targets, scores)
    return scores.gather(1, targets[:, None])[:, 0]


def unperturbed_scores(model: nn.Module, images: torch.Tensor, softmax: bool, autocast: bool, chunk_size: int,
                       given: torch.Tensor | None = None) -> torch.Tensor:
    """All class scores (B,num_classes) of the unperturbed images: ``given`` when the caller already
    has them (checked), else one forward per chunk. The caller holds ``no_grad`` and ``eval_mode``.

    Why a parameter: every cell of one model scores the same images unperturbed (deletion's first
    point, MoRF's first point, Average Drop's reference), so the benchmark computes them once per
    model and passes them to each metric.
    """
    batch = images.shape[0]
    if given is not None:
        if not isinstance(given, torch.Tensor) or given.dim() != 2 or given.shape[0] != batch:
            raise ValueError(f"original_scores must be a (B,num_classes) tensor with B={batch}; got "
                             f"{tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__}")
        return given.to(images.device, torch.float32)
    parts = [class_scores(model, images[start:start + chunk_size], softmax, autocast)
             for start in range(0, batch, chunk_size)]
    return torch.cat(parts) if parts else torch.empty(0, 0, device=images.device)


def check_targets_in_range(targets: torch.Tensor, scores: torch.Tensor) -> None:
    """Targets must index the model's outputs (one host read, before any loop over chunks)."""
    if targets.numel() and int(targets.max()) >= scores.shape[1]:
        raise ValueError(f"targets reach class {int(targets.max())} but the model has {scores.shape[1]} outputs")
