"""The training loop: one for every model kind.

Why it looks like this:
* Kind-agnostic: every camzoo model has ``forward_train`` and ``loss`` (ABN's sum of two
  cross-entropies lives in the model), so there is one loop. A segmenter (``task ==
  "segmentation"``) differs only in its labels, the dataset's per-pixel class maps (moved with the
  pixels by ``augment``), its class count (the dataset's classes + background) and its accuracy (per
  pixel). A detector (``task == "detection"``) takes torchvision's targets (one dict of ``boxes`` and
  ``labels`` per image, each box re-read from its instance mask after ``augment``), the same class
  count, its loss is the sum of its losses, and it has no training accuracy (its score is AP50, on the
  eval split).
* Fast: losses and hits are summed on the device and read once per log interval and epoch (no
  per-step host sync); batches come from camzoo's one data path (:class:`camzoo.data.BatchLoader`,
  whole-batch gathers for in-memory datasets); channels_last everywhere; CUDA gets autocast (bf16,
  or fp16 + GradScaler) and fused SGD.
* Reproducible: data order and augmentation come from generators seeded by (seed, epoch), global
  RNG states are checkpointed, and on CPU deterministic algorithms are enforced (see ``state``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch
from torch import nn

from ..data.loading import AUGMENT_STREAM, BatchLoader, epoch_seed
from ..data.transforms import augment_batch
from ..inference import DETECTION, SEGMENTATION, detection_targets, detection_view, evaluate, segmentation_view
from ..models import build_model, get_kind
from ..models.checkpoint import save_model
from ..modelutil import cpu_has_native_bf16, resolve_device
from . import ddp
from .config import TrainConfig, TrainResult
from .schedule import learning_rate
from .state import (CHECKPOINT_NAME, MODEL_NAME, finished_result, restore, runtime_settings, save_resume_state,
                    seed_everything, write_log)


def train(config: TrainConfig, train_dataset, out_dir: str | Path, eval_dataset=None, resume: bool = True,
          callback: Callable[[int, dict[str, float]], None] | None = None, distributed: bool = False) -> TrainResult:
    """Train one model; checkpoint every epoch into ``out_dir``; return a :class:`TrainResult`.

    ``train_dataset`` items are ``(image, label, target)`` (data contract; ``target`` unused) or
    ``(image, label)``; a segmenter's dataset needs per-pixel class maps (``get_batch(indices,
    objects=True)`` with a "segmentation" target, as "scenes"), and its ``train_accuracy`` /
    ``eval_accuracy`` are pixel accuracies; a detector's needs per-object boxes and labels (and
    instance masks to augment), its ``train_accuracy`` is NaN, ``eval_accuracy`` None and
    ``eval_stats["ap50"]`` its score. With ``resume`` (default) an interrupted run in
    ``out_dir`` continues from its last finished epoch and a finished one is returned without training; a run there
    with a different config is an error. ``callback(epoch, stats)`` runs after each epoch's
    checkpoint is written. ``TrainResult.model`` is the trained model, in eval mode. ``distributed``:
    train one model over the initialised process group with DDP (camzoo.train.ddp; every rank calls
    this with the same arguments, ``batch_size`` is the global batch), as `camzoo train` does under
    torchrun; off by default, since a distributed benchmark trains different models on its ranks.
    """
    start_time = time.perf_counter()
    config.validate()
    if config.augment != "none" and getattr(train_dataset, "augment", False):
        raise ValueError(
            f"the dataset already augments its images (augment=True) and TrainConfig.augment is {config.augment!r}: "
            "that would augment twice; load the dataset with augment=False or set augment='none'"
        )
    out_dir = Path(out_dir)
    device = resolve_device(config.device or "auto")
    is_cuda = device.type == "cuda"
    amp = is_cuda if config.amp is None else config.amp
    if amp and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("amp=True on a CPU without native bfloat16 (AVX512-BF16 or AMX): bf16 autocast is emulated "
                      "and slower than float32 here; set amp=False (a bench config: train.amp = false)", stacklevel=2)
    channels_last = config.uses_channels_last
    deterministic = (device.type == "cpu") if config.deterministic is None else config.deterministic
    task = get_kind(config.kind).task
    segmenter, detector = task == SEGMENTATION, task == DETECTION
    if (segmenter or detector) and config.fast_path is False:
        raise ValueError(f"a {'segmenter' if segmenter else 'detector'} reads its objects through the dataset's "
                         "get_batch: leave TrainConfig.fast_path unset (or True)")
    num_classes = config.num_classes or len(_class_names(train_dataset, segmenter or detector))
    if num_classes < 2:
        raise ValueError("set TrainConfig.num_classes, or give a dataset with a .classes list of at least 2 names")
    rank, world_size = ddp.world() if distributed else (0, 1)
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} is the global batch: it must be divisible by the "
                         f"{world_size} processes")

    finished = finished_result(config, out_dir, start_time, device) if resume else None
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
    source = segmentation_view(train_dataset) if segmenter else detection_view(train_dataset) if detector \
        else train_dataset
    data = BatchLoader(source, config.batch_size, device, num_classes=num_classes, num_workers=config.num_workers,
                       fast_path=config.fast_path)
    step_model = ddp.wrap(model, device) if world_size > 1 else model

    start_epoch, history, past_time = 0, [], 0.0
    ckpt_path = out_dir / CHECKPOINT_NAME
    if resume and ckpt_path.exists():
        start_epoch, history, past_time = restore(ckpt_path, config, model, optimizer, scaler, device)

    steps_per_epoch = len(data.epoch(shuffle=True, drop_last=True))
    total_steps = steps_per_epoch * config.epochs
    progress = sys.stderr.isatty() if config.progress is None else config.progress
    bar = _progress_bar(progress, total_steps, start_epoch * steps_per_epoch, f"{config.kind}/{config.backbone}")
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp else contextlib.nullcontext

    with runtime_settings(deterministic, device, config.num_threads), contextlib.ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            model.train()
            # each rank draws its own augmentations (rank 0's are those of a single process)
            aug_gen = torch.Generator(device=device).manual_seed(epoch_seed(config.seed, epoch, AUGMENT_STREAM) + rank)
            loss_sum = torch.zeros((), device=device)
            hits = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            batches = data.epoch(shuffle=True, seed=config.seed, epoch=epoch, drop_last=True, rank=rank,
                                 world_size=world_size)
            for i, (x, y, targets) in enumerate(batches):
                step = epoch * steps_per_epoch + i
                lr = learning_rate(config, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if segmenter:
                    x, y = _augment_with_map(x, targets[SEGMENTATION], config.augment, aug_gen)
                elif detector:
                    x, y = _augment_with_boxes(x, targets, config.augment, aug_gen)
                else:
                    x = augment_batch(x, config.augment, aug_gen)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss, logits = train_step(step_model, optimizer, scaler, x, y, autocast)
                loss_sum += loss.float() * x.shape[0]
                if not detector:
                    per_image = y[0].numel()  # 1 label, or H x W pixels
                    hits += (logits.argmax(1) == y).sum()
                seen += x.shape[0]  # images; a segmenter's accuracy counts pixels: hits / (seen * per_image)
                if bar is not None:
                    bar.update(1)
                    if (i + 1) % config.log_every == 0:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum.item() / seen:.4f}",
                                        **({} if detector else {"acc": f"{hits.item() / (seen * per_image):.3f}"}))
            if world_size > 1:  # the epoch's numbers over every rank's share
                counts = torch.tensor(seen, device=device)
                ddp.all_sum(loss_sum, hits, counts)
                seen = int(counts.item())
            stats = {"epoch": epoch + 1, "train_loss": loss_sum.item() / seen,
                     **({} if detector else {"train_accuracy": hits.item() / (seen * per_image)}),
                     "lr": lr, "seconds": time.perf_counter() - epoch_start, "steps": len(batches)}
            if not math.isfinite(stats["train_loss"]):
                raise FloatingPointError(
                    f"training diverged: the loss is {stats['train_loss']} in epoch {epoch + 1}; "
                    "lower the learning rate (TrainConfig.lr) or disable amp"
                )
            history.append(stats)
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, loss=f"{stats['train_loss']:.4f}",
                                **({"acc": f"{stats['train_accuracy']:.3f}"} if "train_accuracy" in stats else {}))
            past_time += stats["seconds"]
            if rank == 0:  # one writer; the checkpoint holds nothing rank-specific
                save_resume_state(ckpt_path, config, model, optimizer, scaler, epoch + 1, history, past_time)
                write_log(out_dir, config, history, finished=False)
            if callback is not None:
                callback(epoch + 1, stats)
        result_stats = {}
        if eval_dataset is not None:
            evaluation = ddp.evaluate_sharded if world_size > 1 else evaluate  # sharded by image index
            result_stats = evaluation(model, eval_dataset, config.eval_batch_size, device, amp=amp, num_classes=num_classes)
    summary = {"config": config.fingerprint(), "history": history, "total_train_time_s": past_time,
               "eval": result_stats or None, "finished": True}
    model_path = out_dir / MODEL_NAME
    if rank == 0:
        model_path = save_model(model, model_path, train_summary=summary)
        write_log(out_dir, config, history, finished=True, eval_stats=result_stats)
        ckpt_path.unlink(missing_ok=True)
    # Every rank returns a checkpoint that exists. Only when this run is itself distributed: the ranks
    # of a distributed benchmark train different models, and a barrier here would pair with another
    # rank's unrelated collective (found by the kill -9 test: a rerun with uneven jobs failed).
    if world_size > 1:
        ddp.barrier()
    last = history[-1]
    # The same tensors the checkpoint holds, still in the layout training used (channels_last unless
    # turned off), which a loaded finished run gets too (state._as_trained): the benchmark's many
    # forwards are faster in it.
    model = model.eval()
    return TrainResult(
        checkpoint=model_path, train_loss=last["train_loss"], train_accuracy=last.get("train_accuracy", math.nan),
        wall_time_s=time.perf_counter() - start_time, total_train_time_s=past_time, epochs=config.epochs,
        resumed_from_epoch=start_epoch, eval_accuracy=result_stats.get("accuracy"),
        eval_loss=result_stats.get("loss"), eval_stats=dict(result_stats), history=history, model=model,
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor,
               autocast: Callable = contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step for any camzoo model; returns (loss, logits), detached, on the device."""
    with autocast():
        out = model.forward_train(x)
        loss = model.loss(out, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), out.logits.detach()


def _augment_with_map(x: torch.Tensor, segmentation: torch.Tensor, mode: str,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``augment_batch`` on the images and their class maps alike: the map rides along as a fourth
    channel, so it gets the very same flips and shifts (shifted-in pixels are 0, background)."""
    if mode == "none":
        return x, segmentation.long()
    stacked = augment_batch(torch.cat([x, segmentation.unsqueeze(1).to(x.dtype)], dim=1), mode, generator)
    return stacked[:, :3], stacked[:, 3].round().long()


def _augment_with_boxes(x: torch.Tensor, targets: dict[str, torch.Tensor], mode: str,
                        generator: torch.Generator) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``augment_batch`` on the images, and torchvision's detection targets of the result: the instance
    map rides along as a fourth channel (the same flips and shifts), and each object's box is re-read
    from its pixels there (tight boxes, as the dataset's; one shifted out of the image is dropped)."""
    if mode == "none":
        return x, detection_targets(targets)
    if "instances" not in targets:
        raise ValueError(f"augment={mode!r} moves each object's box with its instance mask, and this dataset gives "
                         "none (get_batch(objects=True) without 'instances'); set augment='none'")
    stacked = augment_batch(torch.cat([x, targets["instances"].unsqueeze(1).to(x.dtype)], dim=1), mode, generator)
    instances = stacked[:, 3].round().long()
    masks = instances[:, None] == torch.arange(1, targets["object_labels"].shape[1] + 1, device=x.device)[:, None, None]
    columns, rows = masks.any(2), masks.any(3)  # (B, M, W), (B, M, H)
    boxes = torch.stack([*_span(columns), *_span(rows)], dim=-1)[..., [0, 2, 1, 3]].float()
    boxes[~columns.any(-1)] = float("nan")
    return stacked[:, :3], detection_targets(targets, boxes)


def _span(lines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First index and one past the last index where ``lines`` (..., L) is True (pixel-edge coordinates)."""
    index = torch.arange(lines.shape[-1], device=lines.device)
    first = torch.where(lines, index, lines.shape[-1]).amin(-1)
    return first, torch.where(lines, index, -1).amax(-1) + 1


def _class_names(dataset, with_background: bool) -> list[str]:
    """The dataset's class names (none: []); a segmenter's or detector's start with "background" (class 0)."""
    classes = list(getattr(dataset, "classes", None) or [])
    return ["background", *classes] if with_background and classes else classes


def _model_options(config: TrainConfig, dataset) -> dict[str, Any]:
    """build_model options: the config's, completed with the dataset's classes and preprocessing."""
    options = dict(config.model_options)
    classes = _class_names(dataset, get_kind(config.kind).task in (SEGMENTATION, DETECTION)) or None
    if classes is not None and "class_names" not in options and len(classes) == (config.num_classes or len(classes)):
        options["class_names"] = classes
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
