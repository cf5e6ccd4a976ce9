"""DistributedDataParallel training under torchrun, for one model on several devices.

Why this shape: the trainer stays one loop. Under an initialised process group it wraps the model
in DDP (gradients averaged over ranks in the backward), feeds each rank its share of every global
batch (``BatchLoader.epoch(rank=, world_size=)``: the same shuffled order on every rank, split by
position, so W ranks see exactly the images one process would), sums the epoch statistics over
ranks, and lets rank 0 alone write checkpoints (atomically, as always). A checkpoint holds nothing
rank-specific, so a run resumes on any number of processes. Batch statistics of BatchNorm are per
rank (DDP's default), the one reason W ranks differ slightly from one process. Evaluation is
sharded by image index (rank r predicts images r, r+W, ...; no sampler padding, so no duplicates)
and the logits are gathered back into index order: exactly the numbers of one process. A segmenter's
shards sum their confusion matrices instead (per-pixel logits are too large to gather); a detector's
gather their matched detections (AP sorts them all by score, ties in image order, as one process does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..world import barrier, join, place_from_env, rank_device
from ..world import current as world

# The trainer's loop reaches the group through this module: its world() and barrier() are camzoo.world's.
__all__ = ["DistributedModel", "all_sum", "barrier", "evaluate_detection_sharded", "evaluate_segmentation_sharded",
           "evaluate_sharded",
           "init_from_env", "predict_sharded", "world", "wrap"]


def init_from_env(device: str) -> str:
    """Under torchrun (a rank of several, camzoo.world): join the group and return this rank's device
    (``camzoo.world.rank_device``: cuda:LOCAL_RANK for "cuda"/"auto" with CUDA, else as given).
    Without torchrun, or once joined: ``device`` as is."""
    import torch.distributed as dist

    place = place_from_env()
    if place is None or dist.is_initialized():
        return device
    resolved = rank_device(device, place.local_rank)
    join(resolved)
    return str(resolved)


class _TrainForward(nn.Module):
    """DDP calls ``forward``; training needs ``forward_train`` (logits and the attention map)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model.forward_train(x)


class DistributedModel(DistributedDataParallel):
    """A camzoo model in DDP that ``train_step`` can drive like the model itself."""

    def forward_train(self, x: torch.Tensor) -> Any:
        return self(x)

    def loss(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        return self.module.model.loss(out, y)


def wrap(model: nn.Module, device: torch.device) -> DistributedModel:
    return DistributedModel(_TrainForward(model), device_ids=[device.index or 0] if device.type == "cuda" else None)


def all_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over ranks, in place (a no-op without a process group)."""
    import torch.distributed as dist

    if world()[1] > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)


@torch.no_grad()
def predict_sharded(model: nn.Module, dataset, batch_size: int, device: torch.device, amp: bool = False,
                    num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``camzoo.inference.predict`` over the ranks: each predicts its images, all gather by index.
    Every rank first takes rank 0's buffers (BatchNorm's running statistics are updated per rank in
    training), so all shards are predicted by the one model rank 0 saves."""
    import torch.distributed as dist

    from ..inference import predict

    rank, size = world()
    if size == 1:
        return predict(model, dataset, batch_size, device, amp, num_classes)
    _take_rank0_buffers(model)
    mine = list(range(rank, len(dataset), size))
    logits, labels = predict(model, torch.utils.data.Subset(dataset, mine), batch_size, device, amp, num_classes) \
        if mine else (torch.empty(0, 0), torch.empty(0, dtype=torch.long))
    shares: list[Any] = [None] * size
    dist.all_gather_object(shares, (mine, logits.cpu(), labels.cpu()))
    width = max(share[1].shape[1] for share in shares if share[0])
    all_logits, all_labels = torch.empty(len(dataset), width), torch.empty(len(dataset), dtype=torch.long)
    for indices, part_logits, part_labels in shares:
        if indices:
            all_logits[indices], all_labels[indices] = part_logits, part_labels
    return all_logits.to(device), all_labels.to(device)


def _take_rank0_buffers(model: nn.Module) -> None:
    import torch.distributed as dist

    for buffer in model.buffers():  # BatchNorm's running statistics differ per rank (DDP keeps the weights equal)
        dist.broadcast(buffer.data, src=0)


def evaluate_sharded(model: nn.Module, dataset, batch_size: int, device: torch.device, amp: bool = False,
                     num_classes: int | None = None) -> dict[str, float]:
    """``camzoo.inference.evaluate``'s numbers (accuracy, loss, n) from :func:`predict_sharded`; a
    segmenter's from :func:`evaluate_segmentation_sharded`, a detector's from :func:`evaluate_detection_sharded`."""
    from ..inference import is_detector, is_segmenter, scores

    if is_segmenter(model):
        return evaluate_segmentation_sharded(model, dataset, batch_size, device, amp)
    if is_detector(model):
        return evaluate_detection_sharded(model, dataset, batch_size, device, amp)
    logits, labels = predict_sharded(model, dataset, batch_size, device, amp, num_classes)
    return scores(logits, labels)


@torch.no_grad()
def evaluate_segmentation_sharded(model: nn.Module, dataset, batch_size: int, device: torch.device,
                                  amp: bool = False) -> dict[str, float]:
    """``camzoo.inference.evaluate_segmentation`` over the ranks: each scores images r, r+W, ... into a
    confusion matrix and a loss sum, which add up over the ranks to exactly one process's."""
    from ..inference import evaluate_segmentation, segmentation_confusion, segmentation_scores

    rank, size = world()
    if size == 1:
        return evaluate_segmentation(model, dataset, batch_size, device, amp)
    _take_rank0_buffers(model)
    mine = torch.arange(rank, len(dataset), size)
    k = int(model.num_classes)
    if len(mine):
        confusion, loss_sum = segmentation_confusion(model, dataset, batch_size, device, amp, indices=mine)
    else:
        confusion = torch.zeros(k, k, dtype=torch.long, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    all_sum(confusion, loss_sum)
    return segmentation_scores(confusion, loss_sum, len(dataset))


def evaluate_detection_sharded(model: nn.Module, dataset, batch_size: int, device: torch.device,
                               amp: bool = False) -> dict[str, float]:
    """``camzoo.inference.evaluate_detection`` over the ranks: each matches the detections of images r,
    r+W, ... to their objects; the matches, gathered, give exactly one process's AP."""
    import torch.distributed as dist

    from ..inference import detection_matches, detection_scores, evaluate_detection

    rank, size = world()
    if size == 1:
        return evaluate_detection(model, dataset, batch_size, device, amp)
    _take_rank0_buffers(model)
    mine = torch.arange(rank, len(dataset), size)
    matches = detection_matches(model, dataset, batch_size, device, amp, indices=mine) if len(mine) else None
    shares: list[Any] = [None] * size
    dist.all_gather_object(shares, matches)
    shares = [share for share in shares if share is not None]
    merged = {key: torch.cat([share[key] for share in shares]) for key in shares[0]}
    return detection_scores(merged, int(model.num_classes), len(dataset))
