"""One trainer for baseline, ABN and LFI-CAM models.

    result = train(TrainConfig(kind="lfi", backbone="resnet20", epochs=30, seed=0),
                   train_set, out_dir="runs/lfi-s0", eval_dataset=test_set)

Why it looks like this:
* Kind-agnostic: every camzoo model has ``forward_train`` and ``loss`` (ABN's sum of two
  cross-entropies lives in the model), so there is one loop.
* Fast: losses and hits are summed on the device and read once per log interval and epoch (no
  per-step host sync); in-memory datasets are batched with their ``get_batch`` or by indexing
  their image tensor (no per-sample Python work); channels_last everywhere; CUDA gets autocast (bf16, or fp16 +
  GradScaler) and fused SGD.
* Reproducible: data order and augmentation come from generators seeded by (seed, epoch), global
  RNG states are checkpointed, and on CPU deterministic algorithms are enforced, so a run resumed
  after an interrupt ends bit-identical to an uninterrupted one.
* Safe: ``checkpoint.pt`` is written atomically after every epoch (model, optimizer, step, RNG
  states, history); on success ``model.pt`` (weights + config + class names) replaces it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .io import atomic_write_text
from .modelutil import eval_mode
from .models import build_model
from .models.checkpoint import load_state, read_checkpoint, save_model

SCHEDULES = ("cosine", "step", "constant")
AUGMENTS = ("none", "flip", "crop_flip")
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
LOG_NAME = "train_log.json"

# Fields that do not change the trained weights: a resume may change them freely.
_RUNTIME_FIELDS = ("device", "progress", "log_every", "num_workers", "eval_batch_size", "fast_path", "num_threads")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults follow the official CIFAR recipes
    (SGD, momentum 0.9, lr 0.1, weight decay 1e-4), with a cosine schedule."""

    kind: str = "baseline"  # "baseline" | "abn" | "lfi"
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
    augment: str = "none"  # "none" | "flip" | "crop_flip" (batched, on the device)
    num_classes: int | None = None  # default: len(dataset.classes)
    model_options: dict[str, Any] = field(default_factory=dict)  # passed to build_model
    device: str | None = None  # default: "cuda" when available, else "cpu"
    amp: bool | None = None  # default: on for CUDA (bf16 where supported, else fp16 + GradScaler)
    channels_last: bool | None = None  # default: on (measured 1.2-1.4x faster on CPU for CIFAR ResNets, too)
    deterministic: bool | None = None  # default: on for CPU
    num_workers: int = 0
    fast_path: bool | None = None  # default: on when the dataset has get_batch() or holds its images in one tensor
    num_threads: int | None = None  # CPU threads while training (default: torch's); 1 is fastest on a busy machine
    progress: bool | None = None  # default: on when stderr is a terminal
    log_every: int = 50  # steps between progress-bar updates (each one host sync)
    eval_batch_size: int = 256

    def validate(self) -> None:
        checks = [
            (self.kind in ("baseline", "abn", "lfi"), f"kind must be baseline, abn or lfi, got {self.kind!r}"),
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 2, f"batch_size must be an integer >= 2, got {self.batch_size!r}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr!r}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (all(0 < m < 1 for m in self.milestones), f"milestones are fractions of the run in (0, 1), got {self.milestones!r}"),
            (0 <= self.warmup < 1, f"warmup is a fraction of the run in [0, 1), got {self.warmup!r}"),
            (self.augment in AUGMENTS, f"augment must be one of {AUGMENTS}, got {self.augment!r}"),
            (isinstance(self.log_every, int) and self.log_every >= 1, f"log_every must be an integer >= 1, got {self.log_every!r}"),
            (isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that determine the trained weights (compared when resuming)."""
        d = dataclasses.asdict(self)
        for key in _RUNTIME_FIELDS:
            d.pop(key)
        d["milestones"] = list(d["milestones"])
        return json.loads(json.dumps(d, sort_keys=True, default=str))


@dataclass
class TrainResult:
    checkpoint: Path  # model.pt: load with camzoo.models.load_model
    train_loss: float  # mean over the last epoch
    train_accuracy: float  # top-1 over the last epoch (training mode, augmented batches)
    wall_time_s: float  # seconds spent in this call
    total_train_time_s: float  # training seconds over all calls (resumed runs included)
    epochs: int
    resumed_from_epoch: int  # 0 for a fresh run; epochs when the run was already finished
    eval_accuracy: float | None = None
    eval_loss: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- data


class _Batches:
    """Index batches of one epoch, from a generator seeded by (seed, epoch): the same order on
    both data paths, and reproducible after a resume without saving any sampler state."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, epoch: int) -> None:
        if shuffle:
            gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch, 0))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        # Drop the ragged tail only when shuffling a set larger than a batch: a batch of one
        # breaks BatchNorm in training, and the tail changes every epoch anyway.
        stop = (n // batch_size) * batch_size if shuffle and n > batch_size else n
        self.batches = list(order[:stop].split(batch_size))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1)


def _in_memory_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images, labels) when the dataset keeps them as tensors *and* its items are exactly those
    tensors (checked on the first and last item, so datasets that augment or normalise per item
    fall back to the DataLoader path)."""
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) >= 2:
        images, labels = dataset.tensors[0], dataset.tensors[1]
    else:
        images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        return None
    n = len(dataset)
    if images.dim() != 4 or images.shape[0] != n or labels.shape != (n,) or not images.is_floating_point():
        return None
    for i in {0, n - 1}:
        item = dataset[i]
        if not (torch.is_tensor(item[0]) and torch.equal(item[0], images[i]) and int(item[1]) == int(labels[i])):
            return None
    return images, labels.long()


def _collate_image_label(num_classes: int) -> Callable:
    """Stack images and labels; the data contract's target dicts are not needed for training."""

    def collate(items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([torch.as_tensor(item[0]) for item in items])
        labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"dataset items must be images of shape (3, H, W); got a batch of shape {tuple(images.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(f"labels must be in [0, {num_classes}); found {int(labels.min())}..{int(labels.max())}")
        return images, labels

    return collate


def _batch_getter(dataset) -> Callable | None:
    """camzoo's in-memory datasets serve whole batches: ``get_batch(indices, generator=None) ->
    (images (B,3,H,W) normalised, labels (B,), targets)``, one gather per batch, augmentation (if
    the dataset does any) drawn from ``generator``."""
    get_batch = getattr(dataset, "get_batch", None)
    if not callable(get_batch):
        return None
    try:
        params = inspect.signature(get_batch).parameters
    except (TypeError, ValueError):
        return None
    takes_generator = "generator" in params

    def fetch(indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        batch = get_batch(indices, generator=generator) if takes_generator else get_batch(indices)
        images, labels = batch[0], torch.as_tensor(batch[1])
        if images.dim() != 4 or images.shape[0] != len(indices) or labels.shape != (len(indices),):
            raise ValueError(f"dataset.get_batch returned images {tuple(images.shape)} and labels {tuple(labels.shape)} "
                             f"for {len(indices)} indices; expected (B,3,H,W) and (B,)")
        return images, labels.long()

    return fetch


class _Data:
    """Yields (images, labels) batches on the device for one epoch, by the fastest route the
    dataset offers: its own ``get_batch``, indexing its in-memory tensors, or a DataLoader."""

    def __init__(self, dataset, batch_size: int, num_classes: int, device: torch.device, num_workers: int,
                 fast_path: bool | None) -> None:
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset, self.batch_size, self.device, self.num_workers = dataset, batch_size, device, num_workers
        self.collate = _collate_image_label(num_classes)
        self.get_batch = _batch_getter(dataset) if fast_path is not False else None
        self.tensors = _in_memory_tensors(dataset) if fast_path is not False and self.get_batch is None else None
        if fast_path and self.tensors is None and self.get_batch is None:
            raise ValueError("fast_path=True needs a dataset with get_batch(indices), or tensor attributes "
                             "images (N,3,H,W) float and labels (N,) matching its items")
        labels = getattr(dataset, "labels", None)
        if self.get_batch is not None and isinstance(labels, torch.Tensor) and labels.numel() == len(dataset):
            if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
                raise ValueError(f"labels must be in [0, {num_classes}); found {int(labels.min())}..{int(labels.max())}")
        if self.tensors is not None:
            images, labels = self.tensors
            if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
                raise ValueError(f"labels must be in [0, {num_classes}); found {int(labels.min())}..{int(labels.max())}")
            if device.type == "cuda" and images.numel() * images.element_size() < 2**31:
                images, labels = images.to(device), labels.to(device)  # whole set on the GPU once
            self.tensors = (images, labels)

    def epoch(self, shuffle: bool, seed: int, epoch: int) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        batches = _Batches(len(self.dataset), self.batch_size, shuffle, seed, epoch)
        if self.get_batch is not None:
            gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch, 3))

            def batched() -> Iterator:
                for idx in batches:
                    x, y = self.get_batch(idx, gen)
                    yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

            return len(batches), batched()
        if self.tensors is not None:
            images, labels = self.tensors

            # One index copy per epoch (a host-to-device copy per step would be a sync per step).
            order = [b.to(images.device) for b in batches]

            def fast() -> Iterator:
                for idx in order:
                    yield images[idx].to(self.device, non_blocking=True), labels[idx].to(self.device, non_blocking=True)

            return len(batches), fast()
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[b.tolist() for b in batches], collate_fn=self.collate,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch, 1)),
        )

        def slow() -> Iterator:
            for x, y in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

        return len(batches), slow()


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and/or random crops with zero padding of H/8 (4 px at 32 px; zero
    is the mean colour of a normalised image), for the whole batch at once on its device."""
    if mode == "none":
        return x
    b, c, h, w = x.shape
    flip = torch.rand(b, generator=gen, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if mode == "crop_flip":
        pad = max(1, h // 8)
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    return x


# ----------------------------------------------------------------------------- schedule, RNG


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at a global step: a pure function, so resuming needs no scheduler state."""
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


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _runtime_settings(deterministic: bool, device: torch.device, num_threads: int | None) -> Iterator[None]:
    """Deterministic algorithms / cuDNN autotuning / thread count for the duration of training
    only, restored afterwards (the caller's process keeps its own settings)."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads())
    try:
        if num_threads:
            torch.set_num_threads(num_threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]
        torch.set_num_threads(previous[4])


# ----------------------------------------------------------------------------- the trainer


def train(config: TrainConfig, train_dataset, out_dir: str | Path, eval_dataset=None, resume: bool = True,
          callback: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train one model; checkpoint every epoch into ``out_dir``; return a :class:`TrainResult`.

    ``train_dataset`` items are ``(image, label, target)`` (data contract; ``target`` unused) or
    ``(image, label)``. With ``resume`` (default) an interrupted run in ``out_dir`` continues
    from its last finished epoch and a finished one is returned without training; a run there
    with a different config is an error. ``callback(epoch, stats)`` runs after each epoch's
    checkpoint is written.
    """
    start_time = time.perf_counter()
    config.validate()
    out_dir = Path(out_dir)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    is_cuda = device.type == "cuda"
    amp = is_cuda if config.amp is None else config.amp
    channels_last = True if config.channels_last is None else config.channels_last
    deterministic = (device.type == "cpu") if config.deterministic is None else config.deterministic
    num_classes = config.num_classes or len(getattr(train_dataset, "classes", None) or [])
    if num_classes < 2:
        raise ValueError("set TrainConfig.num_classes, or give a dataset with a .classes list of at least 2 names")

    finished = _finished_result(config, out_dir, start_time) if resume else None
    if finished is not None:
        return finished

    seed_everything(config.seed)
    model = build_model(config.kind, config.backbone, num_classes, **_model_options(config, train_dataset))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # fused SGD on CUDA: one kernel, and GradScaler's inf check needs no host sync with it
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov, fused=is_cuda or None)
    amp_dtype = torch.bfloat16 if (not is_cuda or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    data = _Data(train_dataset, config.batch_size, num_classes, device, config.num_workers, config.fast_path)

    start_epoch, history, past_time = 0, [], 0.0
    ckpt_path = out_dir / CHECKPOINT_NAME
    if resume and ckpt_path.exists():
        start_epoch, history, past_time = _restore(ckpt_path, config, model, optimizer, scaler, device)

    steps_per_epoch = len(_Batches(len(train_dataset), config.batch_size, True, 0, 0))
    total_steps = steps_per_epoch * config.epochs
    progress = sys.stderr.isatty() if config.progress is None else config.progress
    bar = _progress_bar(progress, total_steps, start_epoch * steps_per_epoch, f"{config.kind}/{config.backbone}")
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp else contextlib.nullcontext

    with _runtime_settings(deterministic, device, config.num_threads), contextlib.ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            model.train()
            aug_gen = torch.Generator(device=device).manual_seed(_epoch_seed(config.seed, epoch, 2))
            loss_sum = torch.zeros((), device=device)
            hits = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            n_steps, batches = data.epoch(True, config.seed, epoch)
            for i, (x, y) in enumerate(batches):
                step = epoch * steps_per_epoch + i
                lr = learning_rate(config, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = augment_batch(x, config.augment, aug_gen)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss, logits = train_step(model, optimizer, scaler, x, y, autocast)
                loss_sum += loss.float() * y.shape[0]
                hits += (logits.argmax(1) == y).sum()
                seen += y.shape[0]
                if bar is not None:
                    bar.update(1)
                    if (i + 1) % config.log_every == 0:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum.item() / seen:.4f}", acc=f"{hits.item() / seen:.3f}")
            stats = {"epoch": epoch + 1, "train_loss": loss_sum.item() / seen, "train_accuracy": hits.item() / seen,
                     "lr": lr, "seconds": time.perf_counter() - epoch_start, "steps": n_steps}
            if not math.isfinite(stats["train_loss"]):
                raise FloatingPointError(
                    f"training diverged: the loss is {stats['train_loss']} in epoch {epoch + 1}; "
                    "lower the learning rate (TrainConfig.lr) or disable amp"
                )
            history.append(stats)
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, loss=f"{stats['train_loss']:.4f}", acc=f"{stats['train_accuracy']:.3f}")
            past_time += stats["seconds"]
            _save_resume_state(ckpt_path, config, model, optimizer, scaler, epoch + 1, history, past_time)
            _write_log(out_dir, config, history, finished=False)
            if callback is not None:
                callback(epoch + 1, stats)
        result_stats = {}
        if eval_dataset is not None:
            result_stats = evaluate(model, eval_dataset, config.eval_batch_size, device, amp=amp, num_classes=num_classes)
    summary = {"config": config.fingerprint(), "history": history, "total_train_time_s": past_time,
               "eval": result_stats or None, "finished": True}
    model_path = save_model(model, out_dir / MODEL_NAME, train_summary=summary)
    _write_log(out_dir, config, history, finished=True, eval_stats=result_stats)
    ckpt_path.unlink(missing_ok=True)
    last = history[-1]
    return TrainResult(
        checkpoint=model_path, train_loss=last["train_loss"], train_accuracy=last["train_accuracy"],
        wall_time_s=time.perf_counter() - start_time, total_train_time_s=past_time, epochs=config.epochs,
        resumed_from_epoch=start_epoch, eval_accuracy=result_stats.get("accuracy"),
        eval_loss=result_stats.get("loss"), history=history,
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, autocast: Callable = contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step for any camzoo model; returns (loss, logits), detached, on the device."""
    with autocast():
        out = model.forward_train(x)
        loss = model.loss(out, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), out.logits.detach()


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
            amp: bool = False, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float logits (N, classes) and labels (N,) of a whole dataset, in eval mode, batched on the device."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    data = _Data(dataset, batch_size, num_classes or model.num_classes, device, 0, None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    _, batches = data.epoch(False, 0, 0)
    logits, labels = [], []
    with eval_mode(model), torch.no_grad(), autocast:
        for x, y in batches:
            logits.append(model(x).float())
            labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device | None = None,
             amp: bool = False, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``dataset`` (eval mode, batched)."""
    logits, labels = predict(model, dataset, batch_size, device, amp, num_classes)
    return {
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "n": len(dataset),
    }


# ----------------------------------------------------------------------------- helpers


def _model_options(config: TrainConfig, dataset) -> dict[str, Any]:
    """build_model options: the config's, completed with the dataset's classes and preprocessing."""
    options = dict(config.model_options)
    classes = getattr(dataset, "classes", None)
    if classes is not None and "class_names" not in options and len(classes) == (config.num_classes or len(classes)):
        options["class_names"] = list(classes)
    for key in ("mean", "std", "image_size"):
        value = getattr(dataset, key, None)
        if value is not None and key not in options:
            options[key] = list(value) if key != "image_size" else int(value)
    return options


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)


def _save_resume_state(path: Path, config: TrainConfig, model, optimizer, scaler, epoch: int,
                       history: list, past_time: float) -> None:
    state = {
        "config": config.fingerprint(), "epoch": epoch, "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": _rng_state(),
        "history": history, "train_time_s": past_time,
    }
    save_model(model, path, train_state=state)


def _restore(path: Path, config: TrainConfig, model, optimizer, scaler, device) -> tuple[int, list, float]:
    ckpt = read_checkpoint(path, map_location=device)
    state = ckpt.get("train_state")
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds no training state to resume from; delete it or pass resume=False")
    _check_same_run(path, state.get("config"), config)
    load_state(model, ckpt["state_dict"], repr(str(path)))
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["history"]), float(state["train_time_s"])


def _check_same_run(path: Path, saved: dict | None, config: TrainConfig) -> None:
    current = config.fingerprint()
    if saved != current:
        diff = sorted(k for k in set(current) | set(saved or {}) if (saved or {}).get(k) != current.get(k))
        raise ValueError(
            f"{str(path)!r} belongs to a run with a different config (differs in: {', '.join(diff)}); "
            "use another output directory, or pass resume=False (CLI: --no-resume) to start over"
        )


def _finished_result(config: TrainConfig, out_dir: Path, start_time: float) -> TrainResult | None:
    """The result of an already finished run in ``out_dir`` with the same config, else None."""
    model_path = out_dir / MODEL_NAME
    if not model_path.exists():
        return None
    summary = read_checkpoint(model_path).get("train_summary") or {}
    _check_same_run(model_path, summary.get("config"), config)
    history = summary.get("history") or [{}]
    eval_stats = summary.get("eval") or {}
    return TrainResult(
        checkpoint=model_path, train_loss=history[-1].get("train_loss", float("nan")),
        train_accuracy=history[-1].get("train_accuracy", float("nan")), wall_time_s=time.perf_counter() - start_time,
        total_train_time_s=float(summary.get("total_train_time_s", 0.0)), epochs=config.epochs,
        resumed_from_epoch=config.epochs, eval_accuracy=eval_stats.get("accuracy"), eval_loss=eval_stats.get("loss"),
        history=history,
    )


def _write_log(out_dir: Path, config: TrainConfig, history: list, finished: bool, eval_stats: dict | None = None) -> None:
    log = {"config": dataclasses.asdict(config), "finished": finished, "history": history, "eval": eval_stats or None}
    atomic_write_text(out_dir / LOG_NAME, json.dumps(log, indent=2, default=str) + "\n")


__all__ = ["TrainConfig", "TrainResult", "train", "train_step", "evaluate", "learning_rate", "augment_batch", "seed_everything"]
