"""Map arithmetic shared by the trainable models and the CAM methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max each map over its last two dims to [0,1]; a constant map becomes zeros (never NaN).

    Why shared: LFI-CAM's attention map and every method's output must agree on what a
    normalised map is, degenerate maps included.
    """
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (maps - low) / safe_span, torch.zeros_like(maps))


def upsample_and_normalise(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (B,h,w) -> (B,H,W), then min-max per image to [0,1]; a constant map becomes zeros."""
    upsampled = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax_normalise(upsampled)
