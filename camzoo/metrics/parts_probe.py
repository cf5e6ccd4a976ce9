"""One set of the part world and what a model does to it: the interventions behind the FunnyBirds protocol.

Why apart from the scores (camzoo.metrics.parts): the model's logits on every intervention and the
dilated part masks depend on the set (and the model), not on the method, so they are made once and
shared by every method row of a model. The reference (visinf/funnybirds-framework) renders and runs
one intervention at a time inside each protocol; here each set is run once, in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..modelutil import eval_mode, model_device
from ._model import class_scores
from ..data.parts_classes import NUM_SLOTS, SLOT_INDEX, SUBSET_SLOTS, SUBSETS

FIRST_SLOT_ID, FIRST_OBJECT_ID = 2, 7  # part-map ids: 0 background, 1 body, 2 + s slot s, 7 + k object k
Render = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PartsSet:
    """One split's images with what the protocol reads: labels, part maps, the class table, a renderer.

    ``render(positions (B,), removed_parts (B,5) bool, removed_background (B,max_background) bool)``
    returns the normalised images (B,3,H,W) of those positions re-drawn without the removed items.
    """

    images: torch.Tensor  # (N,3,H,W) normalised
    labels: torch.Tensor  # (N,) long
    part_maps: torch.Tensor  # (N,H,W) uint8 part ids
    background_counts: torch.Tensor  # (N,) long, objects drawn per image
    table: torch.Tensor  # (C,5) long, the variant of each slot of each class
    max_background: int
    render: Render


@dataclass
class PartsProbe:
    """What the model does to one set: logits unperturbed, per removed slot subset, per removed object."""

    logits: torch.Tensor  # (N,K)
    subset_logits: torch.Tensor  # (N,32,K): bit s of the subset index = slot s removed
    background_logits: torch.Tensor  # (N,max_background,K), NaN where k >= the image's count
    masks: torch.Tensor | None = None  # (N, 5 + max_background, H, W) bool: the dilated part masks, once per set


def _check_set(parts: PartsSet) -> None:
    n, size = parts.images.shape[0], tuple(parts.images.shape[-2:])
    if parts.images.dim() != 4 or parts.labels.shape != (n,) or parts.background_counts.shape != (n,):
        raise ValueError(f"a parts set needs images (N,3,H,W), labels (N,) and background_counts (N,); got "
                         f"{tuple(parts.images.shape)}, {tuple(parts.labels.shape)}, {tuple(parts.background_counts.shape)}")
    if tuple(parts.part_maps.shape) != (n, *size):
        raise ValueError(f"part_maps must be (N,H,W) = {(n, *size)} like the images; got {tuple(parts.part_maps.shape)}")
    if parts.table.dim() != 2 or parts.table.shape[1] != NUM_SLOTS:
        raise ValueError(f"the class table must be (classes, {NUM_SLOTS}); got {tuple(parts.table.shape)}")
    if n and int(parts.background_counts.max()) > parts.max_background:
        raise ValueError(f"an image has {int(parts.background_counts.max())} background objects but "
                         f"max_background is {parts.max_background}: raise max_background")


def _logits(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Logits of lazily made batches (a generator: a set's 31 x N interventions never sit in memory at once)."""
    outputs = [class_scores(model, batch.to(device), softmax=False).double().cpu() for batch in batches]
    return torch.cat(outputs) if outputs else torch.empty(0, 0, dtype=torch.float64)


def probe_parts(model: nn.Module, parts: PartsSet, batch_size: int) -> PartsProbe:
    """Run the model on a set's images and on every intervention the protocol reads, once.

    Interventions: each of the 31 non-empty subsets of the 5 slots removed (PC and DC remove any subset;
    single_deletion / distractibility / target_sensitivity_protocol read some), and each background
    object removed alone (distractibility_protocol, background_independence_protocol).

    Args:
        model: the classifier (put in eval mode for the call, its mode restored).
        parts: the set, its renderer included.
        batch_size: images per forward.

    Returns:
        A :class:`PartsProbe` on the CPU in float64.
    """
    _check_set(parts)
    n, extra = parts.images.shape[0], parts.max_background
    device = model_device(model)
    subset_image = torch.arange(n).repeat_interleave(SUBSETS - 1)
    subset = torch.arange(1, SUBSETS).repeat(n)
    counts = parts.background_counts.cpu().long()
    object_image, object_k = (torch.arange(extra)[None] < counts[:, None]).nonzero(as_tuple=True)
    positions = torch.cat([subset_image, object_image])
    removed_parts = torch.cat([SUBSET_SLOTS[subset], torch.zeros(len(object_image), NUM_SLOTS, dtype=torch.bool)])
    removed_background = torch.zeros(len(positions), extra, dtype=torch.bool)
    removed_background[torch.arange(len(subset), len(positions)), object_k] = True
    starts = range(0, len(positions), batch_size)
    with torch.no_grad(), eval_mode(model):
        logits = _logits(model, (parts.images[s:s + batch_size] for s in range(0, n, batch_size)), device)
        moved = _logits(model, (parts.render(positions[s:s + batch_size], removed_parts[s:s + batch_size],
                                             removed_background[s:s + batch_size]) for s in starts), device)
    classes = logits.shape[1]
    subset_logits = logits[:, None].repeat(1, SUBSETS, 1)
    subset_logits[subset_image, subset] = moved[:len(subset)]
    background_logits = torch.full((n, extra, classes), float("nan"), dtype=torch.float64)
    background_logits[object_image, object_k] = moved[len(subset):]
    return PartsProbe(logits, subset_logits, background_logits, dilated_masks(parts.part_maps, extra))


def part_importance(attribution: torch.Tensor, part_maps: torch.Tensor, max_background: int) -> torch.Tensor:
    """Each slot's and background object's importance: attribution summed over its dilated mask.

    explainer_wrapper.AbstractAttributionExplainer.get_part_importance: the mask is dilated by
    ``nn.MaxPool2d(5, stride=1, padding=2)``; signed attribution, summed over channels if it has them.

    Args:
        attribution: (N,H,W) or (N,C,H,W) attribution at the part maps' size.
        part_maps: (N,H,W) integer part ids (2 + s slot s, 7 + k background object k).
        max_background: how many background objects to score.

    Returns:
        (N, 5 + max_background) float64 on the attribution's device (0 for an absent item).
    """
    return masked_importance(attribution, dilated_masks(part_maps.to(attribution.device), max_background))


def dilated_masks(part_maps: torch.Tensor, max_background: int, chunk: int = 256) -> torch.Tensor:
    """(N, 5 + max_background, H, W) bool: each slot's and object's mask, max-pooled 5x5 (stride 1, pad 2).

    Why apart: the masks depend on the set alone, so :func:`probe_parts` makes them once for every method.

    Args:
        part_maps: (N,H,W) integer part ids.
        max_background: how many background objects to mask.
        chunk: images per pooling call (bounds the float copy).

    Returns:
        bool masks on the part maps' device.
    """
    ids = torch.cat([FIRST_SLOT_ID + SLOT_INDEX, FIRST_OBJECT_ID + torch.arange(max_background)]).to(part_maps.device)
    pieces = [F.max_pool2d((maps.long()[:, None] == ids[None, :, None, None]).float(), 5, stride=1, padding=2) > 0
              for maps in part_maps.split(chunk)]
    return torch.cat(pieces) if pieces else torch.zeros(0, len(ids), *part_maps.shape[1:], dtype=torch.bool)


def masked_importance(attribution: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, parts) float64: signed attribution (channels summed) over each of ``masks`` (N, parts, H, W)."""
    if attribution.dim() == 4:
        attribution = attribution.sum(1)
    if attribution.dim() != 3 or attribution.shape != (masks.shape[0], *masks.shape[2:]):
        raise ValueError(f"attribution must be (N,H,W) or (N,C,H,W) at the part maps' size "
                         f"{(masks.shape[0], *masks.shape[2:])}; got {tuple(attribution.shape)}")
    flat = attribution.double().flatten(1)[:, :, None]  # one batched product per 64 images (float64 masks stay small)
    masks = masks.to(attribution.device).flatten(2)
    sums = [torch.bmm(m.double(), a)[..., 0] for m, a in zip(masks.split(64), flat.split(64))]
    return torch.cat(sums) if sums else torch.zeros(0, masks.shape[1], dtype=torch.float64, device=flat.device)
