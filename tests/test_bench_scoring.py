"""A model's method cells and a stability cell are computed from a model and its images, or from stored
maps, alone: no store, no runner, no plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camzoo.bench.evaluation import EvalSet, explain_block, score_block
from camzoo.bench.scoring import score_model
from camzoo.bench.stability_cells import stability_cell
from camzoo.metrics import EvalSettings, combine_blocks, pairwise_stability
from helpers import quadrant_batch

SETTINGS = EvalSettings(deletion_steps=2, deletion_fraction=0.5, substrates=(), game_images=4, grid_games=(),
                        chunk_size=16)


@pytest.fixture(scope="module")
def tiny() -> dict:
    """A 4-class camzoo ResNet-8 (untrained) and 6 quadrant images with masks, as two blocks of 4 and 2."""
    from camzoo.models import build_model

    torch.manual_seed(0)
    model = build_model("baseline", "resnet8", 4, image_size=32).eval()
    images, labels, masks = quadrant_batch(6, size=32, seed=1)
    mean, std = (0.5,) * 3, (0.25,) * 3
    blocks = [EvalSet(images[a:b], labels[a:b], masks[a:b], None, mean, std, ["a", "b", "c", "d"], start=a)
              for a, b in ((0, 4), (4, 6))]
    return {"model": model, "blocks": blocks, "images": images, "labels": labels, "masks": masks}


def test_score_model_makes_one_cell_per_method_from_blocks_alone(tiny):
    groups = [["gradcam", "eigencam"], ["random"]]
    cells = list(score_model(tiny["model"], tiny["model"], tiny["blocks"], groups, lambda _method: SETTINGS,
                             layers={}, reshape=None, batch_size=4, device=torch.device("cpu"), keep_maps=5))
    assert [method for method, _, _ in cells] == ["gradcam", "eigencam", "random"]  # group by group
    for method, numbers, arrays in cells:
        assert numbers["pointing_game"][1].shape == (6,), method  # every image's value, over both blocks
        assert numbers["ms_per_image"][0] > 0 and numbers["peak_memory_mb"][1] is None
        assert arrays["maps"].shape == (5, 32, 32) and arrays["maps"].dtype == np.float16  # the first keep_maps
        assert arrays["raw_maps"].shape[0] == 5
        assert len(arrays["metric_names"]) == len(arrays["metric_seconds"]) > 0
        assert not any(name.startswith("perturbed_") for name in arrays)  # reliability "quick": no passes
    # the cell is the blocks' rows joined: the same as scoring each block by hand
    (_, gradcam, arrays), = [cell for cell in cells if cell[0] == "gradcam"]
    parts, maps = [], []
    for block in tiny["blocks"]:
        explained, _ = explain_block(tiny["model"], block, ["gradcam"], 4, torch.device("cpu"), warm_up=False)
        maps.append(explained["gradcam"][0])
        parts.append(score_block(tiny["model"], block, "gradcam", explained["gradcam"][0], SETTINGS, {}, None, None,
                                 None))
    joined = combine_blocks(parts, tiny["labels"])
    np.testing.assert_array_equal(gradcam["pointing_game"][1], joined["pointing_game"][1])
    np.testing.assert_allclose(gradcam["deletion"][1], joined["deletion"][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["maps"].astype(np.float32), torch.cat(maps)[:5].half().float().numpy())


def test_keep_maps_zero_keeps_no_maps_but_every_value(tiny):
    (method, numbers, arrays), = score_model(tiny["model"], tiny["model"], tiny["blocks"], [["centre"]],
                                             lambda _method: SETTINGS.without_substrates(), layers={}, reshape=None,
                                             batch_size=4, device=torch.device("cpu"), keep_maps=0)
    assert method == "centre" and "maps" not in arrays and "raw_maps" not in arrays
    assert numbers["pointing_game"][1].shape == (6,)


def test_a_stability_cell_compares_every_pair_of_models():
    rng = np.random.default_rng(0)
    maps = [rng.random((5, 8, 8)).astype(np.float16) for _ in range(3)]
    raw = [rng.random((5, 2, 2)).astype(np.float32) for _ in range(3)]
    cell = stability_cell("gradcam", maps, raw)
    expected = pairwise_stability([torch.from_numpy(m.astype(np.float32)) for m in maps])
    assert cell["stability_pairs"] == (3.0, None)
    for name, value in expected["mean"].items():
        assert cell[f"stability_{name}"][0] == pytest.approx(float(value))
        assert cell[f"stability_{name}"][1].shape == (3, 5)  # (pairs, images)
    # the LFI-CAM script's IoU reads the raw maps; without one per model it falls back to the maps
    fallback = stability_cell("gradcam", maps, raw[:2])
    compat = pairwise_stability([torch.from_numpy(m.astype(np.float32)) for m in maps], lfi_compat=True)
    assert fallback["stability_iou_lfi_compat"][0] == pytest.approx(float(compat["mean"]["iou"]))
    assert stability_cell("gradcam", maps[:1], raw[:1]) is None  # one model: nothing to compare


def test_a_reshape_rule_reaches_exactly_the_methods_that_take_one():
    """One public answer per method class (``base_options``), read once for explaining and scoring."""
    from camzoo.bench.evaluation import method_options
    from camzoo.methods import get_method

    def flip(output: torch.Tensor) -> torch.Tensor:
        return output.flip(-1)

    assert get_method("gradcam").base_options() == {"output", "reshape", "eigen_smooth", "aug_smooth"}
    assert get_method("attention").base_options() == frozenset()  # reads its model's own map
    assert method_options("gradcam", flip) == {"reshape": flip} and method_options("gradcam", None) == {}
    assert method_options("attention", flip) == {}
