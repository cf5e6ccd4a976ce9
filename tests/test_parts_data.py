"""The built-in "parts" dataset: the class table's FunnyBirds properties, exact part maps, the train
split's removed parts, exact re-rendered interventions, determinism, caching and the preview."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import camzoo.data as data
from camzoo.cli import main
from camzoo.data import parts_gen as gen
from camzoo.data import parts_world as world
from camzoo.data.parts import MEAN, STD, PartsDataset

N, SLOTS = 48, len(world.SLOTS)


@pytest.fixture(scope="module")
def test_split() -> PartsDataset:
    return data.load("parts", "test", image_size=64, num_images=N, cache=False)


@pytest.fixture(scope="module")
def train_split() -> PartsDataset:
    return data.load("parts", "train", image_size=64, num_images=2 * N, cache=False)


def test_hand_made_table_sets_and_pair():
    # Class 0 shares slots {0,1} with class 1, {2,3} with class 2 and {0,2,4} with class 3 (worked by hand).
    table = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 1], [0, 1, 0, 1, 0]])
    assert world.minimal_sufficient_sets(table, 0) == [(0, 3), (1, 2), (1, 3), (1, 4), (3, 4)]
    assert world.target_sensitivity_pair(table, 0) == (1, 2)  # class 3 shares three slots: not at distance 3
    assert world.target_sensitivity_pair(table, 3) == (1, 2)  # sharing {0,3} and {1,2}
    assert world.target_sensitivity_pair(table[:2], 0) is None
    # only class 1 has variant 1 on slot 2, so (2,) is sufficient alone and no larger set holds slot 2
    assert world.minimal_sufficient_sets(table, 1) == [(2,), (0, 4), (1, 3), (1, 4), (3, 4)]


def test_class_table_has_funnybirds_properties():
    table = world.class_parts()
    assert table.shape == (world.NUM_CLASSES, SLOTS) and table.dtype == torch.long
    assert len({tuple(r) for r in table.tolist()}) == world.NUM_CLASSES, "classes are not unique combinations"
    assert ((table >= 0) & (table < torch.tensor(world.VARIANTS))).all()
    assert torch.equal(table, world.class_parts())  # a fixed choice
    joint = 0
    for c in range(world.NUM_CLASSES):
        c1, c2 = world.target_sensitivity_pair(table, c)
        shared1, shared2 = table[c1] == table[c], table[c2] == table[c]
        assert int(shared1.sum()) == int(shared2.sum()) == 2 and not (shared1 & shared2).any()
        sets = world.minimal_sufficient_sets(table, c)
        for s in sets:  # sufficient: no other class carries class c's variants on all of s
            others = torch.cat([table[:c], table[c + 1:]])
            assert not (others[:, list(s)] == table[c, list(s)]).all(1).any()
        joint += min(len(s) for s in sets) >= 2
    assert joint >= 10, f"only {joint} classes have minimal sufficient sets of 2+ slots only"


def test_labels_variants_and_part_ids(test_split):
    ds, sc = test_split, test_split.scenes
    assert torch.equal(torch.from_numpy(sc.variant), ds.class_table[ds.labels])
    assert ds.present.all() and ds.class_table.shape == (50, SLOTS) and len(ds.classes) == 50
    counts = ds.background_counts
    assert counts.min() >= 0 and counts.max() <= world.MAX_BACKGROUND and len(set(counts.tolist())) > 3
    ids = ds.part_maps.long()
    for i in range(N):
        present = set(ids[i].unique().tolist())
        objects = {k - world.FIRST_OBJECT_ID for k in present if k >= world.FIRST_OBJECT_ID}
        assert objects <= set(range(int(counts[i]))), (i, objects)
        # the body and every slot are visible at 64 px in a full bird
        assert set(range(world.BODY_ID, world.FIRST_OBJECT_ID)) <= present, (i, present)
    assert torch.equal(ds.masks, (ids >= world.BODY_ID) & (ids < world.FIRST_OBJECT_ID))
    x0, y0, x1, y1 = ds.boxes[:, 0].long().unbind(1)
    cols, rows = ds.masks.any(1), ds.masks.any(2)
    for i in range(4):
        assert cols[i].nonzero().min() == x0[i] and cols[i].nonzero().max() + 1 == x1[i]
        assert rows[i].nonzero().min() == y0[i] and rows[i].nonzero().max() + 1 == y1[i]


def test_train_split_misses_random_parts_in_half_the_images(train_split):
    present = train_split.present
    full = present.all(1)
    assert 0.3 < float(full.float().mean()) < 0.7
    block = gen.draw_scenes(gen.sgen.BLOCK, 50, 0, "train", 8).present.all(1)
    assert int(block.sum()) == gen.sgen.BLOCK // 2  # exactly half of each block
    assert (~present[~full]).any(1).all()
    assert len({tuple(r) for r in present[~full].tolist()}) > 8  # random subsets, not a fixed one
    ids = train_split.part_maps.long()
    for s in range(SLOTS):
        drawn = (ids == world.FIRST_SLOT_ID + s).flatten(1).any(1)
        assert not drawn[~present[:, s]].any(), f"slot {s} drawn although removed"


def test_render_with_nothing_removed_is_the_stored_image(train_split):
    idx = torch.tensor([3, 0, 50, 3, 95])
    images, maps = train_split.render(idx)
    assert torch.equal(images, train_split.images[idx]) and torch.equal(maps, train_split.part_maps[idx])
    images, maps = train_split.render(idx.numpy(), np.zeros((5, SLOTS), bool), torch.zeros(5, world.MAX_BACKGROUND,
                                                                                          dtype=torch.bool))
    assert torch.equal(images, train_split.images[idx])


def test_removing_a_slot_changes_only_its_pixels(test_split):
    ds, idx = test_split, torch.arange(N)
    stored, old = ds.images, ds.part_maps
    for s in range(SLOTS):
        removed = torch.zeros(N, SLOTS, dtype=torch.bool)
        removed[:, s] = True
        images, maps = ds.render(idx, removed)
        own = old == world.FIRST_SLOT_ID + s
        changed = (images != stored).any(1)
        assert not changed[~own].any(), f"removing {world.SLOTS[s]} changed other pixels"
        assert changed[own].float().mean() > 0.5  # the part's pixels show what lay beneath
        assert torch.equal(maps[~own], old[~own]) and not (maps == world.FIRST_SLOT_ID + s).any()


def test_removing_a_distractor_changes_only_its_pixels(test_split):
    ds = test_split
    have = torch.nonzero(ds.background_counts >= 2)[:, 0]
    for k in (0, 1):
        removed = torch.zeros(len(have), world.MAX_BACKGROUND, dtype=torch.bool)
        removed[:, k] = True
        images, maps = ds.render(have, removed_background=removed)
        own = ds.part_maps[have] == world.FIRST_OBJECT_ID + k
        changed = (images != ds.images[have]).any(1)
        assert own.any() and not changed[~own].any() and changed[own].any()
        assert not (maps == world.FIRST_OBJECT_ID + k).any()


def test_removing_a_part_over_the_body_reveals_the_body_as_drawn(test_split):
    ds, idx = test_split, torch.arange(N)
    wing, eye = world.SLOTS.index("wing"), world.SLOTS.index("eye")
    body_only, body_maps = ds.render(idx, torch.ones(N, SLOTS, dtype=torch.bool))
    for s in (wing, eye):
        removed = torch.zeros(N, SLOTS, dtype=torch.bool)
        removed[:, s] = True
        images, maps = ds.render(idx, removed)
        over_body = (ds.part_maps == world.FIRST_SLOT_ID + s) & (body_maps == world.BODY_ID)
        assert over_body.flatten(1).any(1).all(), "the part does not sit over the body"
        assert (maps[over_body] == world.BODY_ID).all()
        assert torch.equal(images.permute(0, 2, 3, 1)[over_body], body_only.permute(0, 2, 3, 1)[over_body])


def test_same_scene_at_two_sizes_and_deterministic_prefix():
    small = gen.render(gen.draw_scenes(20, 50, 0, "val", 8), 32)
    large = gen.render(gen.draw_scenes(40, 50, 0, "val", 8), 64)
    agree = (large["part_maps"][:20, 1::2, 1::2] == small["part_maps"]).mean()
    assert agree > 0.95, f"only {agree:.3f} of part ids agree between 32 and 64 px"
    again = gen.render(gen.draw_scenes(20, 50, 0, "val", 8), 64)
    np.testing.assert_array_equal(again["images"], large["images"][:20])
    other = gen.render(gen.draw_scenes(20, 50, 0, "test", 8), 64)
    assert (other["images"] != again["images"]).any(axis=(1, 2, 3)).all()


def test_normalisation_constants_match_generated_data():
    images = gen.render(gen.draw_scenes(256, 50, 0, "train", 8), 64)["images"].astype(np.float64) / 255.0
    np.testing.assert_allclose(images.mean(axis=(0, 2, 3)), MEAN, atol=0.03)
    np.testing.assert_allclose(images.std(axis=(0, 2, 3)), STD, atol=0.03)


def test_get_batch_and_normalise_agree(test_split):
    idx = torch.tensor([1, 7])
    images, labels, targets = test_split.get_batch(idx)
    torch.testing.assert_close(test_split.normalise(test_split.images[idx]), images)
    assert torch.equal(labels, test_split.labels[idx]) and set(targets) == {"mask", "boxes"}


def test_cache_round_trip_keeps_render_exact(tmp_path):
    first = data.load("parts", "train", root=tmp_path, image_size=32, num_images=12, max_background=3)
    (path,) = (tmp_path / "parts").glob("*.npz")
    assert f"v{gen.GENERATOR_VERSION}" in path.name and "-b3-" in path.name
    again = data.load("parts", "train", root=tmp_path, image_size=32, num_images=12, max_background=3)
    assert torch.equal(again.images, first.images) and torch.equal(again.present, first.present)
    images, maps = again.render(torch.arange(12))
    assert torch.equal(images, first.images) and torch.equal(maps, first.part_maps)
    assert again.max_background == 3 and again.background_counts.max() <= 3
    path.write_bytes(path.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        third = data.load("parts", "train", root=tmp_path, image_size=32, num_images=12, max_background=3)
    assert any("unreadable cache" in str(w.message) for w in caught) and torch.equal(third.images, first.images)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 10}, "num_classes"), ({"max_background": 17}, "max_background"),
    ({"image_size": 31}, "image_size"), ({"num_images": 0}, "num_images"), ({"seed": -1}, "seed"),
])
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("parts", "train", cache=False, **{"num_images": 4, "image_size": 32, **kwargs})


def test_bad_render_arguments_are_clear_errors(test_split):
    with pytest.raises(ValueError, match=r"removed_parts must have shape \(2, 5\)"):
        test_split.render([0, 1], torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(IndexError, match="render indices"):
        test_split.render([N])


def test_cli_preview_shows_images_maps_and_interventions(tmp_path):
    out = tmp_path / "parts.png"
    res = CliRunner().invoke(main, ["datasets", "preview", "parts", "--out", str(out), "--root", str(tmp_path),
                                    "--image-size", "32", "-o", "num_images=8", "--rows", "2", "--cols", "4"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(out) as img:
        pixels = np.asarray(img.convert("RGB"))
    # 2 rows of images, each above its part maps, then one row of 7 interventions (width max(4, 7))
    assert pixels.shape == (5 * 34 - 2, 7 * 34 - 2, 3)
    tiles = [pixels[r * 34:r * 34 + 32, c * 34:c * 34 + 32] for r in range(5) for c in range(7)]
    interventions = tiles[28:35]
    assert all((t != interventions[0]).any() for t in interventions[1:]), "an intervention changed nothing"
