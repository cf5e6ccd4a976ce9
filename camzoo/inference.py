"""Predictions of a trained model over a whole dataset: what the trainer's evaluation and the
benchmark's accuracy cells both use, through camzoo's one data path."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .data.loading import BatchLoader
from .modelutil import eval_mode, model_device


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
            amp: bool = False, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float logits (N, classes) and labels (N,) of a whole dataset, in eval mode, batched on the device."""
    device = torch.device(device) if device is not None else model_device(model)
    data = BatchLoader(dataset, batch_size, device, num_classes=num_classes or getattr(model, "num_classes", None),
                       num_workers=0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    logits, labels = [], []
    with eval_mode(model), autocast:
        for x, y, _ in data.epoch(shuffle=False):
            logits.append(model(x).float())
            labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
             amp: bool = False, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``dataset`` (eval mode, batched)."""
    return scores(*predict(model, dataset, batch_size, device, amp, num_classes))


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """What :func:`evaluate` reports, from the logits and labels of a whole dataset."""
    return {
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "n": len(labels),
    }
