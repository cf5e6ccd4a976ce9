"""The perturbation games on the first N evaluation images (eval.game_images), the zero substrate's
MoRF curve taken from the deletion game instead of being played twice, and the unperturbed images'
scores computed once per model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dataclasses import replace

from camzoo.bench.config import resolve_config
from camzoo.bench.plan import build_plan
from camzoo.bench.record import RunRecord
from camzoo.bench.tables import causal_description, markdown_tables
from camzoo.metrics import faithfulness
from camzoo.metrics import EvalSettings
from camzoo.metrics.scoring import score_maps
from camzoo.models import build_model

SETTINGS = EvalSettings(protocol="default", deletion_steps=5, deletion_fraction=0.5, deletion_target="label",
                        substrates=("zeros", "blur", "road"), chunk_size=16, pointing_tolerance=15.0,
                        pointing_reference_size=224)


@pytest.fixture(scope="module")
def scored():
    torch.manual_seed(0)
    model = build_model("baseline", "resnet8", num_classes=4).eval()
    images = torch.randn(10, 3, 32, 32)
    # maps with structure and plateaus (ties), not noise: a blob per image, quantised
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    centres = torch.rand(10, 2) * 24 + 4
    maps = torch.exp(-((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) / 40)
    maps = (maps * 8).round() / 8
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    masks = maps > 0.5
    full = score_maps(model, images, maps, labels, masks, None, replace(SETTINGS, game_images=None))
    capped = score_maps(model, images, maps, labels, masks, None, replace(SETTINGS, game_images=4))
    return model, images, maps, labels, full, capped


def test_games_play_on_the_first_images_and_give_their_values(scored):
    *_, full, capped = scored
    for name in ("deletion", "insertion", "deletion_curve", "srg_zeros", "srg_blur", "srg_road"):
        assert capped[name][1].shape[0] == 4, name
        torch.testing.assert_close(torch.as_tensor(capped[name][1]), torch.as_tensor(full[name][1])[:4],
                                   atol=1e-6, rtol=0)
        assert capped[name][0] == pytest.approx(float(torch.as_tensor(capped[name][1]).float().mean()), abs=1e-6)
    # the metrics that need no games keep every image
    for name in ("pointing_game", "average_drop", "energy_pointing_game_mask", "pxap"):
        assert capped[name][1].shape[0] == 10, name
        torch.testing.assert_close(torch.as_tensor(capped[name][1]), torch.as_tensor(full[name][1]))
    assert full["deletion"][1].shape[0] == 10


def test_zero_substrate_morf_is_the_deletion_game(scored):
    """SRG zeros reuses the deletion curve (the same game); the numbers equal a MoRF played afresh."""
    model, images, maps, labels, full, _ = scored
    fresh = faithfulness.morf_lerf(model, images, maps, labels, substrate="zeros", steps=5, fraction=0.5)
    torch.testing.assert_close(torch.as_tensor(full["srg_zeros"][1]), fresh["srg"], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.as_tensor(full["deletion_curve"][1]), fresh["morf_curve"], atol=1e-6, rtol=0)


def test_a_given_morf_curve_is_not_played_again_and_must_fit():
    torch.manual_seed(1)
    model = build_model("baseline", "resnet8", num_classes=3).eval()
    images, maps, labels = torch.randn(3, 3, 32, 32), torch.rand(3, 32, 32), torch.tensor([0, 1, 2])
    fresh = faithfulness.morf_lerf(model, images, maps, labels, substrate="zeros", steps=4, fraction=1.0)
    calls = []
    handle = model.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    try:
        reused = faithfulness.morf_lerf(model, images, maps, labels, substrate="zeros", steps=4, fraction=1.0,
                                        morf_curve=fresh["morf_curve"])
    finally:
        handle.remove()
    assert sum(calls) == 3 * 3  # LeRF's inner points only (its ends are MoRF's first and last)
    torch.testing.assert_close(reused["lerf_curve"], fresh["lerf_curve"])
    with pytest.raises(ValueError, match=r"morf_curve must be \(B, steps\+1\)"):
        faithfulness.morf_lerf(model, images, maps, labels, substrate="zeros", steps=4, morf_curve=torch.zeros(3, 4))


def test_game_images_setting_is_validated_and_shown():
    with pytest.raises(ValueError, match="eval.game_images must be a positive integer or \"all\""):
        build_plan(resolve_config("quick", overrides={"eval": {"game_images": 0}}))
    with pytest.raises(ValueError, match="eval.game_images"):
        build_plan(resolve_config("quick", overrides={"eval": {"game_images": "some"}}))
    config = resolve_config("quick")
    quick = RunRecord.from_config(config)

    def games(value: object) -> RunRecord:
        return RunRecord.from_config({**config, "eval": {**config["eval"], "game_images": value}})

    assert causal_description(quick) == "label, 6 steps over first 15% px, first 48 images"
    assert causal_description(games("all")) == "label, 6 steps over first 15% px"
    assert causal_description(games(500)) == "label, 6 steps over first 15% px"
    frame = pd.DataFrame([{"dataset": "d", "backbone": "b", "kind": "baseline", "method": "gradcam",
                           "reference": False, "srg_zeros_mean": 0.1, "srg_zeros_std": 0.0}])
    assert "(SRG = LeRF − MoRF AUC, first 48 images)" in markdown_tables(frame, quick)


def test_identical_maps_share_max_box_acc_and_nothing_else(scored, monkeypatch):
    """The benchmark's exact reuse: identical maps (the centre, edges and oracle controls of every
    model) get MaxBoxAcc from the first computation; a different map is computed afresh, and every
    model-dependent metric is always computed."""
    model, images, maps, labels, full, _ = scored
    masks = maps > 0.5
    settings = replace(SETTINGS, game_images=None, substrates=())
    shared_maps, calls = {}, []
    from camzoo.metrics import table

    original = table.wsol.max_box_acc
    monkeypatch.setattr(table.wsol, "max_box_acc", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = score_maps(model, images, maps, labels, masks, None, settings, shared_maps)
    assert [key[0] for key in shared_maps] == ["max_box_acc"]
    forwards = []
    handle = model.register_forward_hook(lambda _m, inputs, _o: forwards.append(inputs[0].shape[0]))
    try:
        again = score_maps(model, images, maps.clone(), labels, masks, None, settings, shared_maps)
    finally:
        handle.remove()
    assert len(shared_maps) == 1 and len(calls) == 1
    np.testing.assert_array_equal(again["max_box_acc_v2"][1], first["max_box_acc_v2"][1])
    # again: the unperturbed images once (deletion's and Average Drop's reference), deletion +
    # insertion, Average Drop's masked images
    assert sum(forwards) == 10 + 10 * 2 * 5 + 10
    flipped = score_maps(model, images, maps.flip(-1), labels, masks, None, settings, shared_maps)
    fresh = score_maps(model, images, maps.flip(-1), labels, masks, None, settings)
    assert len(shared_maps) == 2 and len(calls) == 3  # a new map, and the call without a memo
    for name in ("max_box_acc_v1", "max_box_acc_v2", "deletion"):
        torch.testing.assert_close(torch.as_tensor(flipped[name][1]), torch.as_tensor(fresh[name][1]))
    torch.testing.assert_close(torch.as_tensor(first["max_box_acc_v2"][1]), torch.as_tensor(full["max_box_acc_v2"][1]))


def test_the_cells_of_one_model_share_its_unperturbed_scores(scored):
    """With ``model_memo`` the unperturbed images go through the model once per model, not once per
    cell, and every metric equals what a cell computes on its own."""
    model, images, maps, labels, _, _ = scored
    settings = replace(SETTINGS, game_images=6)
    alone = score_maps(model, images, maps, labels, maps > 0.5, None, settings)
    shared: dict = {}
    score_maps(model, images, maps.flip(-1), labels, maps > 0.5, None, settings, model_memo=shared)
    assert shared["unperturbed_scores"].shape[0] == images.shape[0]
    assert {key[0] for key in shared if key != "unperturbed_scores"} == {"causal", "srg_zeros", "srg_blur", "srg_road"}
    forwards = []
    handle = model.register_forward_hook(lambda _m, inputs, _o: forwards.append(inputs[0].shape[0]))
    try:
        second = score_maps(model, images, maps, labels, maps > 0.5, None, settings, model_memo=shared)
    finally:
        handle.remove()
    per_image = 2 * 5 + 5 + 2 * 5 + 2 * 5  # deletion + insertion; LeRF (zeros); blur and road MoRF/LeRF from point 1
    assert sum(forwards) == 6 * per_image + images.shape[0]  # + Average Drop's masked images, no unperturbed
    for name, (value, per_image_values) in alone.items():
        assert second[name][0] == pytest.approx(value, abs=1e-6), name
        if per_image_values is not None:
            np.testing.assert_allclose(second[name][1], per_image_values, atol=1e-6, err_msg=name)


def test_rows_whose_maps_order_the_pixels_alike_play_one_game(scored):
    """Maps that order the pixels the same way (squared: a monotone change, ties kept) play the same pixel
    games, so a model's second such row takes the first one's games from the model memo: no game forward,
    and per-image values equal to playing its own games; a map in another order plays its own."""
    model, images, maps, labels, _, _ = scored
    settings = replace(SETTINGS, game_images=6)
    shared: dict = {}
    first = score_maps(model, images, maps, labels, maps > 0.5, None, settings, model_memo=shared)
    forwards = []
    handle = model.register_forward_hook(lambda _m, inputs, _o: forwards.append(inputs[0].shape[0]))
    try:
        second = score_maps(model, images, maps ** 2, labels, maps > 0.5, None, settings, model_memo=shared)
    finally:
        handle.remove()
    assert sum(forwards) == images.shape[0]  # Average Drop's masked images only: the map's own
    alone = score_maps(model, images, maps ** 2, labels, maps > 0.5, None, settings)
    for name in ("deletion", "insertion", "srg_zeros", "srg_blur", "srg_road"):
        np.testing.assert_array_equal(second[name][1], alone[name][1], err_msg=name)
        np.testing.assert_array_equal(second[name][1], first[name][1], err_msg=name)
    assert second["average_drop"][1].tolist() != first["average_drop"][1].tolist()
    other = score_maps(model, images, maps.flip(-1), labels, maps > 0.5, None, settings, model_memo=shared)
    assert not np.array_equal(other["deletion"][1], first["deletion"][1])


def test_metrics_take_the_unperturbed_scores_instead_of_a_forward(scored):
    model, images, maps, labels, _, _ = scored
    with torch.no_grad():
        given = model(images).softmax(1)
    from camzoo.metrics import average_drop_increase, deletion_insertion, morf_lerf

    calls = [
        lambda **k: deletion_insertion(model, images, maps, labels, steps=4, fraction=0.5, **k),
        lambda **k: deletion_insertion(model, images, maps, None, steps=4, protocol="rise", **k),
        lambda **k: morf_lerf(model, images, maps, labels, substrate="blur", steps=4, fraction=0.5, **k),
        lambda **k: average_drop_increase(model, images, maps, labels, **k),
    ]
    for call in calls:
        played, read = call(), call(original_scores=given)
        for key, value in played.items():
            torch.testing.assert_close(read[key], value, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="original_scores must be a"):
        deletion_insertion(model, images, maps, labels, steps=4, original_scores=given[:3])
    with pytest.raises(ValueError, match="targets reach class 7"):
        average_drop_increase(model, images, maps, torch.full((10,), 7), original_scores=given)
