"""object_share: the target object's share of the positive attribution on a scene's objects, and its chance."""

from __future__ import annotations

import pytest
import torch

from camzoo.metrics import object_share, score_maps


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A target of 4 pixels and another object of 12 on an 8x8 image (chance 4/16)."""
    target = torch.zeros(1, 8, 8, dtype=torch.bool)
    target[0, :2, :2] = True
    other = torch.zeros(1, 8, 8, dtype=torch.bool)
    other[0, 4:6, 2:8] = True
    return target, other


def test_object_share_closed_forms():
    target, other = scene()
    on_target = target.float()
    uniform = torch.full((1, 8, 8), 0.5)
    on_other = other.float()
    split = on_target * 0.3 + on_other * 0.1  # 4 * 0.3 on the target, 12 * 0.1 on the other
    maps = torch.cat([on_target, uniform, on_other, split, torch.zeros(1, 8, 8)])
    result = object_share(maps, target.expand(5, -1, -1), other.expand(5, -1, -1))
    assert torch.allclose(result["object_share"], torch.tensor([1.0, 0.25, 0.0, 0.5, 0.0]))
    assert torch.allclose(result["object_share_chance"], torch.full((5,), 0.25))


def test_object_share_refuses_an_empty_target_and_overlapping_masks():
    target, other = scene()
    with pytest.raises(ValueError, match="non-empty target"):
        object_share(torch.rand(1, 8, 8), torch.zeros_like(target), other)
    with pytest.raises(ValueError, match="overlap"):
        object_share(torch.rand(1, 8, 8), target, target | other)


def test_score_maps_scores_objects_without_a_model():
    """The object track's scoring: the maps alone (no model: no games), localization against the
    target object, and the share against the other objects."""
    target, other = scene()
    maps = target.float() * 0.9 + 0.05
    rows = score_maps(None, torch.zeros(1, 3, 8, 8), maps, torch.tensor([0]), target, None, other_masks=other)
    assert rows["object_share"][0] > rows["object_share_chance"][0] == 0.25
    assert rows["pointing_game"][0] == 1.0 and "deletion" not in rows
