"""The two dataset shapes camzoo uses: in-memory arrays and per-file records.

Both return items ``(image, label, target)`` as the data contract says: image float32 (3,H,W)
normalised with the dataset's ``mean``/``std``; label int; target a dict with "mask" (H,W) bool and/or
"boxes" (K,4) float32 x0,y0,x1,y1 in pixel-edge coordinates of the returned image.
In-memory datasets also serve whole batches at once (``get_batch``), so a training loop never pays
a Python call per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from . import transforms as T


class CamzooDataset(Dataset):
    """Common attributes of every camzoo dataset (see the data contract)."""

    name: str = ""
    split: str = ""
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    annotations: tuple[str, ...] = ()  # which of "mask", "boxes" the targets hold
    in_memory: bool = False


class ArrayDataset(CamzooDataset):
    """Images held as one uint8 tensor (N,3,S,S), with optional masks (N,S,S) and boxes (N,K,4).

    ``augment`` (train-time only, off by default so evaluation stays deterministic): random
    horizontal flips that move masks and boxes with the image; without annotations, also the
    standard CIFAR random translation (pad by size/8, crop back).
    """

    in_memory = True

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
        mean: Sequence[float], std: Sequence[float], masks: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None, augment: bool = False, name: str = "", split: str = "",
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N,3,H,W), got {tuple(images.shape)} {images.dtype}")
        if images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be square, got {tuple(images.shape[2:])}")
        n = images.shape[0]
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if masks is not None and masks.shape != (n, *images.shape[2:]):
            raise ValueError(f"masks must have shape {(n, *images.shape[2:])}, got {tuple(masks.shape)}")
        if boxes is not None and (boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4):
            raise ValueError(f"boxes must have shape ({n},K,4), got {tuple(boxes.shape)}")
        self.images, self.labels = images, labels.long()
        self.masks, self.boxes = masks, (None if boxes is None else boxes.float())
        self.classes = list(classes)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.image_size = int(images.shape[-1])
        self.augment, self.name, self.split = augment, name, split
        self.annotations = tuple(k for k, v in (("mask", masks), ("boxes", boxes)) if v is not None)
        self._mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name or 'dataset'} of size {len(self)}")
        images, labels, targets = self.get_batch(torch.tensor([index % len(self)]))
        target = {k: v[0] for k, v in targets.items()}
        return images[0], int(labels[0]), target

    def get_batch(
        self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Images (B,3,S,S) normalised, labels (B,), targets of the given indices: one gather, no loop."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._batch(idx, self._targets(idx), generator)

    def _targets(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The data contract's targets of the given images: "mask" and/or "boxes", as stored."""
        targets: dict[str, torch.Tensor] = {}
        if self.masks is not None:
            targets["mask"] = self.masks[idx]
        if self.boxes is not None:
            targets["boxes"] = self.boxes[idx].clone()
        return targets

    def _batch(self, idx: torch.Tensor, targets: dict[str, torch.Tensor], generator: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The images of ``idx`` with ``targets``, augmented together (``augment``), then normalised."""
        images = self.images[idx].float().div_(255.0)
        if self.augment:
            images, targets = self._augment(images, targets, generator)
        images = images.sub_(self._mean).div_(self._std)
        return images, self.labels[idx], targets

    def _augment(
        self, images: torch.Tensor, targets: dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
        images, mask, boxes = T.hflip_where(flip, images, targets.get("mask"), targets.get("boxes"))
        if mask is not None:
            targets["mask"] = mask
        if boxes is not None:
            targets["boxes"] = boxes
        if not targets:
            images = T.random_translate(images, max(1, self.image_size // 8), generator)
        return images, targets
