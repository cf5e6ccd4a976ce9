"""Scores of a map explaining one object of a scene that holds others: how much of its positive
attribution lies on that object rather than on the distractors.

Why a metric of its own: the pointing game and the energy pointing game ask whether a map finds *an*
object; in a scene of several objects of distinct classes the question is whether it finds *the*
object it explains. The share of positive attribution on the target object, of what lies on any
object, answers it, and its chance level is known exactly: a map spread evenly over the objects
puts the target's share of the objects' area there.
"""

from __future__ import annotations

import torch

from ._checks import check_maps


def object_share(maps: torch.Tensor, target_masks: torch.Tensor, other_masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The share of positive attribution on the target object, of that on all objects, per map.

    Args:
        maps: (N,H,W) saliency in [0,1] (camzoo's maps).
        target_masks: (N,H,W) bool, the object each map explains.
        other_masks: (N,H,W) bool, the other objects of the same image (disjoint from the target).

    Returns:
        ``object_share`` (N,): target mass / (target + other mass), 0 where a map has no mass on any
        object; ``object_share_chance`` (N,): target area / (target + other area), the share of a map
        spread evenly over the objects (of any constant map).

    Raises:
        ValueError: shapes that differ, or a target mask that is empty or overlaps the others.
    """
    maps = check_maps(maps)
    if target_masks.shape != maps.shape or other_masks.shape != maps.shape:
        raise ValueError(f"maps, target_masks and other_masks must share one (N,H,W) shape; got "
                         f"{tuple(maps.shape)}, {tuple(target_masks.shape)}, {tuple(other_masks.shape)}")
    target, other = target_masks.bool(), other_masks.bool()
    if not target.flatten(1).any(1).all():
        raise ValueError("every map needs a non-empty target mask (an object the map explains)")
    if (target & other).any():
        raise ValueError("target and other-object masks overlap; an object is either the target or a distractor")
    positive = maps.float()
    on_target = (positive * target).flatten(1).sum(1)
    on_objects = on_target + (positive * other).flatten(1).sum(1)
    share = torch.where(on_objects > 0, on_target / on_objects.clamp_min(1e-12), torch.zeros_like(on_target))
    areas = target.flatten(1).sum(1).float()
    chance = areas / (areas + other.flatten(1).sum(1).float())
    return {"object_share": share, "object_share_chance": chance}
