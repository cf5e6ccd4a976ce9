"""DataLoader helper: batches ``(images, labels, targets)`` with NaN-padded boxes (data contract)."""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .base import ArrayDataset, BatchView

Batch = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


def pad_boxes(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-image boxes (K_i,4) into (B,K,4), K = max K_i, the padding rows NaN."""
    k = max((b.shape[0] for b in boxes), default=0)
    out = torch.full((len(boxes), k, 4), float("nan"), dtype=torch.float32)
    for i, b in enumerate(boxes):  # a copy per image is unavoidable for ragged input; no maths here
        out[i, : b.shape[0]] = b
    return out


def collate(items: Sequence[tuple[torch.Tensor, int, dict[str, torch.Tensor]]]) -> Batch:
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items], dtype=torch.long)
    targets: dict[str, torch.Tensor] = {}
    if all("mask" in it[2] for it in items):
        targets["mask"] = torch.stack([it[2]["mask"] for it in items])
    if all("boxes" in it[2] for it in items):
        targets["boxes"] = pad_boxes([it[2]["boxes"] for it in items])
    return images, labels, targets


class DeviceLoader:
    """Iterates a DataLoader and moves every batch to ``device`` (non-blocking from pinned memory)."""

    def __init__(self, loader: DataLoader, device: torch.device | None) -> None:
        self.loader, self.device = loader, device
        self.dataset = getattr(loader.dataset, "dataset", loader.dataset)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, targets in self.loader:
            if self.device is not None:
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
            yield images, labels, targets


def loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, device: str | torch.device | None = None,
    seed: int | None = None, drop_last: bool = False, num_workers: int | None = None, **kwargs: Any,
) -> DeviceLoader:
    """Batches of ``(images (B,3,H,W), labels (B,), targets)`` on ``device``.

    In-memory datasets ("shapes", CIFAR, STL-10) are served a whole batch per fetch, in the main
    process; file datasets decode per image, with worker processes and pinned memory on CUDA.
    ``seed`` fixes the shuffle order (and the augmentation draws of in-memory datasets).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = torch.device(device) if device is not None else None
    cuda = dev is not None and dev.type == "cuda"
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if isinstance(dataset, ArrayDataset):
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        aug_gen = torch.Generator().manual_seed(seed + 1) if seed is not None else None
        dl = DataLoader(BatchView(dataset, aug_gen), batch_size=None,
                        sampler=BatchSampler(sampler, batch_size, drop_last), num_workers=0, pin_memory=cuda,
                        **kwargs)
    else:
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1) if cuda else 0
        dl = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                        num_workers=num_workers, pin_memory=cuda, collate_fn=collate,
                        persistent_workers=num_workers > 0, **kwargs)
    return DeviceLoader(dl, dev)
