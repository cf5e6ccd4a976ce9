"""What defines a training run (:class:`TrainConfig`, validated) and what one returns (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.transforms import AUGMENTS

SCHEDULES = ("cosine", "step", "constant")

# Fields that do not change the trained weights: a resume may change them freely, and the
# benchmark leaves them out of its run identity (camzoo.bench.config reads this tuple).
RUNTIME_FIELDS = ("device", "progress", "log_every", "num_workers", "eval_batch_size", "fast_path", "num_threads")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults follow the official CIFAR recipes
    (SGD, momentum 0.9, lr 0.1, weight decay 1e-4), with a cosine schedule."""

    kind: str = "baseline"  # a registered model kind: camzoo.models.kind_names()
    backbone: str = "resnet20"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "cosine"  # "cosine" | "step" | "constant", applied per step
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of the run (official 150/225 of 300)
    gamma: float = 0.1
    warmup: float = 0.0  # fraction of the run with a linear warm-up from lr/25 to lr (short runs need it)
    seed: int = 0
    augment: str = "none"  # "none" | "flip" | "crop_flip" (batched, on the device); not with a dataset's augment=True
    num_classes: int | None = None  # default: len(dataset.classes) (a segmenter: + 1 for background)
    model_options: dict[str, Any] = field(default_factory=dict)  # passed to build_model
    device: str | None = None  # default: "cuda" when available, else "cpu"
    amp: bool | None = None  # default: on for CUDA (bf16 where supported, else fp16 + GradScaler); True on CPU: bf16
    channels_last: bool | None = None  # default: on (measured 1.2-1.4x faster on CPU for CIFAR ResNets, too)
    deterministic: bool | None = None  # default: on for CPU
    num_workers: int = 0
    fast_path: bool | None = None  # default: on when the dataset has get_batch() or holds its images in one tensor
    num_threads: int | None = None  # CPU threads while training (default: torch's); 1 is fastest on a busy machine
    progress: bool | None = None  # default: on when stderr is a terminal
    log_every: int = 50  # steps between progress-bar updates (each one host sync)
    eval_batch_size: int = 256

    @property
    def uses_channels_last(self) -> bool:
        """Whether training (and so the returned or reloaded model) uses channels_last: on unless False."""
        return self.channels_last is not False

    def validate(self) -> None:
        from ..models import kind_names

        kinds = kind_names()
        checks = [
            (self.kind in kinds, f"kind must be one of {', '.join(kinds)}, got {self.kind!r}"),
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 2,
             f"batch_size must be an integer >= 2, got {self.batch_size!r}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr!r}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (all(0 < m < 1 for m in self.milestones), f"milestones are fractions of the run in (0, 1), got {self.milestones!r}"),
            (0 <= self.warmup < 1, f"warmup is a fraction of the run in [0, 1), got {self.warmup!r}"),
            (self.augment in AUGMENTS, f"augment must be one of {AUGMENTS}, got {self.augment!r}"),
            (isinstance(self.log_every, int) and self.log_every >= 1,
             f"log_every must be an integer >= 1, got {self.log_every!r}"),
            (isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that determine the trained weights (compared when resuming)."""
        d = dataclasses.asdict(self)
        for key in RUNTIME_FIELDS:
            d.pop(key)
        d["milestones"] = list(d["milestones"])
        return json.loads(json.dumps(d, sort_keys=True, default=str))


@dataclass
class TrainResult:
    checkpoint: Path  # model.pt: load with camzoo.models.load_model
    train_loss: float  # mean over the last epoch
    train_accuracy: float  # top-1 (a segmenter: pixel accuracy) over the last epoch (training mode, augmented batches)
    wall_time_s: float  # seconds spent in this call
    total_train_time_s: float  # training seconds over all calls (resumed runs included)
    epochs: int
    resumed_from_epoch: int  # 0 for a fresh run; epochs when the run was already finished
    eval_accuracy: float | None = None  # a segmenter's: pixel accuracy
    eval_loss: float | None = None
    eval_stats: dict[str, float] = field(default_factory=dict)  # all of camzoo.inference.evaluate's (mean_iou, ...)
    history: list[dict[str, float]] = field(default_factory=list)
    model: Any = None  # the trained model (eval mode, on the training device), equal to the checkpoint's
