"""The one data path: batches ``(images, labels, targets)`` of any dataset, on a device.

The trainer, evaluation (``camzoo.inference``), the benchmark and the dataset preview all read data
through :class:`BatchLoader`, so a split is fed the same way everywhere. It takes the fastest route
a dataset offers:

* ``get_batch(indices, generator=None)`` (camzoo's in-memory datasets): one gather per batch, the
  dataset's own augmentation drawn from a seeded generator;
* tensor attributes ``images`` (N,3,H,W) float and ``labels`` (N,) that equal its items (e.g. a
  ``TensorDataset``): indexed directly, kept on the GPU when they fit;
* anything else: a ``DataLoader`` over items ``(image, label[, target])``, with workers and pinned
  memory on CUDA.

Why seeds per (seed, epoch, stream): the order of an epoch and its augmentation draws are a pure
function of the seed and the epoch number, so a resumed training run needs no sampler state and
every route yields the same batches in the same order.
"""

from __future__ import annotations

import inspect
import os
from typing import Any
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

Batch = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]

# Independent random streams of one epoch.
ORDER_STREAM, WORKER_STREAM, AUGMENT_STREAM, DATASET_STREAM = 0, 1, 2, 3


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Seed of one random stream of one epoch."""
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1)


def pad_boxes(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-image boxes (K_i,4) into (B,K,4), K = max K_i, the padding rows NaN."""
    k = max((b.shape[0] for b in boxes), default=0)
    out = torch.full((len(boxes), k, 4), float("nan"), dtype=torch.float32)
    for i, b in enumerate(boxes):  # a copy per image is unavoidable for ragged input; no maths here
        out[i, : b.shape[0]] = b
    return out


def collate(items: Sequence[tuple]) -> Batch:
    """Items ``(image, label)`` or ``(image, label, target)`` (data contract) -> one batch."""
    images = torch.stack([torch.as_tensor(it[0]) for it in items])
    labels = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
    if images.dim() != 4 or images.shape[1] not in (1, 3):  # 1: a grayscale model's view (bench.evaluation.Renormalised)
        raise ValueError(f"dataset items must be images of shape (3, H, W) or (1, H, W); got a batch of shape "
                         f"{tuple(images.shape)}")
    found = [it[2] if len(it) > 2 and isinstance(it[2], dict) else {} for it in items]
    targets: dict[str, torch.Tensor] = {}
    if all("mask" in t for t in found):
        targets["mask"] = torch.stack([t["mask"] for t in found])
    if all("boxes" in t for t in found):
        targets["boxes"] = pad_boxes([t["boxes"] for t in found])
    return images, labels, targets


def check_labels(labels: torch.Tensor, num_classes: int | None) -> None:
    if num_classes is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}); found {int(labels.min())}..{int(labels.max())}")


def _in_memory_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images, labels) when the dataset keeps them as tensors *and* its items are exactly those
    tensors (checked on the first and last item, so datasets that augment or normalise per item
    take the DataLoader route)."""
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


def _batch_getter(dataset: Dataset) -> Callable[[torch.Tensor, torch.Generator], Batch] | None:
    """The dataset's ``get_batch``, called with or without a generator as its signature allows."""
    get_batch = getattr(dataset, "get_batch", None)
    if not callable(get_batch):
        return None
    try:
        takes_generator = "generator" in inspect.signature(get_batch).parameters
    except (TypeError, ValueError):
        return None

    def fetch(indices: torch.Tensor, generator: torch.Generator) -> Batch:
        batch = get_batch(indices, generator=generator) if takes_generator else get_batch(indices)
        images, labels = batch[0], torch.as_tensor(batch[1]).long()
        targets = batch[2] if len(batch) > 2 and isinstance(batch[2], dict) else {}
        if images.dim() != 4 or images.shape[0] != len(indices) or labels.shape != (len(indices),):
            raise ValueError(f"dataset.get_batch returned images {tuple(images.shape)} and labels {tuple(labels.shape)} "
                             f"for {len(indices)} indices; expected (B,3,H,W) and (B,)")
        return images, labels, targets

    return fetch


def index_batches(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, drop_last: bool) -> list[torch.Tensor]:
    """Index batches of one epoch. ``drop_last`` drops the ragged tail only when the set is larger
    than a batch (a batch of one breaks BatchNorm in training; the tail changes every epoch anyway)."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, ORDER_STREAM)))
    else:
        order = torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last and n > batch_size else n
    return list(order[:stop].split(batch_size))


class EpochBatches:
    """One pass over a dataset: ``len()`` batches, iterated once or many times identically."""

    def __init__(self, batches: list[torch.Tensor], produce: Callable[[list[torch.Tensor]], Iterator[Batch]]) -> None:
        self.batches, self._produce = batches, produce

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        return self._produce(self.batches)


class BatchLoader:
    """Batches of one dataset on ``device`` (None: where the dataset keeps them)."""

    def __init__(self, dataset: Dataset, batch_size: int, device: str | torch.device | None = None, *,
                 num_classes: int | None = None, num_workers: int | None = None, fast_path: bool | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset, self.batch_size, self.num_classes = dataset, batch_size, num_classes
        self.device = torch.device(device) if device is not None else None
        cuda = self.device is not None and self.device.type == "cuda"
        self.num_workers = (min(8, os.cpu_count() or 1) if cuda else 0) if num_workers is None else num_workers
        self.get_batch = _batch_getter(dataset) if fast_path is not False else None
        self.tensors = _in_memory_tensors(dataset) if fast_path is not False and self.get_batch is None else None
        if fast_path and self.tensors is None and self.get_batch is None:
            raise ValueError("fast_path=True needs a dataset with get_batch(indices), or tensor attributes "
                             "images (N,3,H,W) float and labels (N,) matching its items")
        labels = getattr(dataset, "labels", None)
        if self.get_batch is not None and isinstance(labels, torch.Tensor) and labels.numel() == len(dataset):
            check_labels(labels, num_classes)
        if self.tensors is not None:
            images, labels = self.tensors
            check_labels(labels, num_classes)
            if cuda and images.numel() * images.element_size() < 2**31:
                images, labels = images.to(self.device), labels.to(self.device)  # whole set on the GPU once
            self.tensors = (images, labels)

    def epoch(self, shuffle: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool = False,
              rank: int = 0, world_size: int = 1) -> EpochBatches:
        """The batches of one epoch; order and the dataset's augmentation come from (seed, epoch).
        With ``world_size`` > 1 (distributed training) rank r gets rows r, r+W, ... of every batch:
        the ranks together see each batch exactly once, in the order one process would (equal shares
        need ``drop_last`` and a batch size divisible by ``world_size``, as the trainer ensures)."""
        batches = index_batches(len(self.dataset), self.batch_size, shuffle, seed, epoch, drop_last)
        if world_size > 1:
            batches = [b[rank::world_size] for b in batches]
        if self.get_batch is not None:
            return EpochBatches(batches, lambda b: self._from_get_batch(b, seed, epoch))
        if self.tensors is not None:
            return EpochBatches(batches, self._from_tensors)
        return EpochBatches(batches, lambda b: self._from_items(b, seed, epoch))

    def _to_device(self, batch: Batch) -> Batch:
        images, labels, targets = batch
        if self.device is None:
            return images, labels, targets
        move = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        return move(images), move(labels), {k: move(v) for k, v in targets.items()}

    def _from_get_batch(self, batches: list[torch.Tensor], seed: int, epoch: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, DATASET_STREAM))
        for indices in batches:
            yield self._to_device(self.get_batch(indices, generator))

    def _from_tensors(self, batches: list[torch.Tensor]) -> Iterator[Batch]:
        images, labels = self.tensors
        # One index copy per epoch (a host-to-device copy per step would be a sync per step).
        for indices in [b.to(images.device) for b in batches]:
            yield self._to_device((images[indices], labels[indices], {}))

    def _from_items(self, batches: list[torch.Tensor], seed: int, epoch: int) -> Iterator[Batch]:
        num_classes = self.num_classes

        def collate_checked(items: Sequence[tuple]) -> Batch:
            batch = collate(items)
            check_labels(batch[1], num_classes)
            return batch

        loader = DataLoader(
            self.dataset, batch_sampler=[b.tolist() for b in batches], collate_fn=collate_checked,
            num_workers=self.num_workers, pin_memory=self.device is not None and self.device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, WORKER_STREAM)),
        )
        for batch in loader:
            yield self._to_device(batch)


def loader(dataset: Dataset, batch_size: int, shuffle: bool = False, device: str | torch.device | None = None,
           seed: int | None = None, drop_last: bool = False, num_workers: int | None = None, **options: Any) -> EpochBatches:
    """One epoch of ``(images (B,3,H,W), labels (B,), targets)`` batches on ``device``.

    ``seed`` fixes the shuffle order and the augmentation draws of in-memory datasets (None: a
    fresh seed from torch's global generator). ``options``: see :class:`BatchLoader`.
    """
    if seed is None:  # only randomness needs a fresh seed; a plain pass leaves torch's generator alone
        random_draws = shuffle or getattr(dataset, "augment", False)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if random_draws else 0
    return BatchLoader(dataset, batch_size, device, num_workers=num_workers, **options).epoch(shuffle, seed, 0, drop_last)
