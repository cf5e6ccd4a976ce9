"""The learning-rate schedule: a pure function of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math

from .config import TrainConfig


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at a global step: linear warm-up from lr/25, then cosine, step or constant."""
    progress = step / max(1, total_steps)
    if progress < config.warmup:
        start = config.lr / 25
        return start + (config.lr - start) * progress / config.warmup
    if config.schedule == "cosine":
        after_warmup = (progress - config.warmup) / (1 - config.warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * after_warmup))
    if config.schedule == "step":
        return config.lr * config.gamma ** sum(progress >= m for m in config.milestones)
    return config.lr
