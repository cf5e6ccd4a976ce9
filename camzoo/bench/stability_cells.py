"""A stability cell from stored maps: how much one method's maps agree across the models (seeds and
variants) of one (dataset, backbone, kind), on the same evaluation images.

Why a function of its own: the runner fetches the maps and writes the cell; what the cell holds (every
pair of models compared image by image, and the official LFI-CAM script's IoU) is computed here from
arrays alone, so it can be checked without a store.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def lfi_script_sets(method: str, maps: Sequence[torch.Tensor], raw_sets: Sequence[np.ndarray],
                    device: torch.device | str) -> list[torch.Tensor]:
    """What the official LFI-CAM IoU script reads, per model: the raw maps resized, not re-normalised
    (``metrics.lfi_script_maps``). Stores written before raw maps were kept fall back to ``maps``."""
    from .. import metrics
    from ..methods import get_method

    if len(raw_sets) != len(maps):
        return list(maps)
    unit_scale = bool(getattr(get_method(method), "raw_unit_scale", False))
    size = tuple(maps[0].shape[-2:])
    return [metrics.lfi_script_maps(torch.from_numpy(raw).to(device), size, unit_scale) for raw in raw_sets]


def stability_cell(method: str, map_sets: Sequence[np.ndarray], raw_sets: Sequence[np.ndarray],
                   device: torch.device | str = "cpu") -> dict[str, tuple[float, np.ndarray | None]] | None:
    """The stability cell of one method from each model's stored ``maps`` (and ``raw_maps``): per-image
    values of every pair (pairs, images), so that CIs resample pairs, then images; None for fewer than
    two models (nothing to compare)."""
    from .. import metrics

    if len(map_sets) < 2:
        return None
    sets = [torch.from_numpy(m.astype(np.float32)).to(device) for m in map_sets]
    standard = metrics.pairwise_stability(sets)
    compat = metrics.pairwise_stability(lfi_script_sets(method, sets, raw_sets, device), lfi_compat=True)
    cell = {
        f"stability_{name}": (float(standard["mean"][name]), standard["per_image"][name].cpu().numpy())
        for name in standard["mean"]
    }
    cell["stability_iou_lfi_compat"] = (float(compat["mean"]["iou"]), compat["per_image"]["iou"].cpu().numpy())
    cell["stability_pairs"] = (float(len(standard["pairs"])), None)
    return cell
