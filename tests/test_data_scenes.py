"""The built-in "scenes" dataset: distinct-class objects, exact disjoint masks, tight boxes, the
single-object view of object 0, determinism across sizes, caching, augmentation and the preview."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import camzoo.data as data
from camzoo.cli import main
from camzoo.data import _geometry as geo
from camzoo.data import scenes_gen as gen
from camzoo.data.preview import BOX, render_grid
from camzoo.data.scenes import MEAN, STD, SceneDataset

N, M = 48, gen.MAX_OBJECTS


def render(n=N, size=32, classes=6, seed=0, split="train"):
    return gen.render(gen.draw_layouts(n, classes, seed, split), size)


@pytest.fixture(scope="module")
def small():
    return render()


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return data.load("scenes", "train", root=tmp_path_factory.mktemp("cache"), image_size=32, num_images=N)


def _tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(B,4) pixel-edge boxes of non-empty masks (B,H,W), computed independently of the generator."""
    ar = torch.arange(masks.shape[-1])
    cols, rows = masks.any(1), masks.any(2)
    return torch.stack([torch.where(cols, ar, 10**6).amin(1), torch.where(rows, ar, 10**6).amin(1),
                        torch.where(cols, ar, -1).amax(1) + 1, torch.where(rows, ar, -1).amax(1) + 1], 1).float()


def test_two_to_four_objects_of_distinct_classes(small):
    labels, boxes = small["object_labels"], small["object_boxes"]
    present = labels >= 0
    count = present.sum(1)
    assert count.min() >= 2 and count.max() <= M and set(count.tolist()) == {2, 3, 4}
    assert (present == (np.arange(M) < count[:, None])).all(), "objects are not the leading slots"
    assert labels.max() < 6 and (labels[~present] == -1).all()
    for row, k in zip(labels, count):
        assert len(set(row[:k].tolist())) == k, f"repeated class in {row}"
    assert (np.isnan(boxes).all(axis=2) == ~present).all()


def test_masks_are_disjoint_and_each_is_its_instance_region(small):
    # Each object's shape drawn on its own (the implicit function, not the rendered instance map):
    # no pixel belongs to two objects, and instance j+1 is exactly object j's shape.
    layout, size = gen.draw_layouts(N, 6, 0, "train"), 32
    sc, xs = layout.scenes, np.arange(size, dtype=np.float32) + 0.5
    shapes = np.stack([geo.draw_shapes(xs, xs, sc.cx[:, j] * size, sc.cy[:, j] * size, sc.radius[:, j] * size,
                                       sc.angle[:, j], sc.shape[:, j])[0] & sc.active[:, j, None, None]
                       for j in range(M)], axis=1)
    assert shapes.sum(axis=1).max() <= 1, "two objects overlap"
    for j in range(M):
        np.testing.assert_array_equal(small["instances"] == j + 1, shapes[:, j])
    assert (shapes.sum(axis=(2, 3)) > 0).sum(1).tolist() == (small["object_labels"] >= 0).sum(1).tolist()


def test_boxes_are_tight_around_each_mask(small):
    inst, boxes = torch.from_numpy(small["instances"]), torch.from_numpy(small["object_boxes"])
    for j in range(M):
        present = ~boxes[:, j].isnan().any(1)
        torch.testing.assert_close(boxes[present, j], _tight_boxes(inst[present] == j + 1))


def test_primary_view_is_object_zero(ds):
    assert isinstance(ds, SceneDataset) and isinstance(ds, data.ArrayDataset)
    assert torch.equal(ds.labels, ds.object_labels[:, 0]) and (ds.labels >= 0).all()
    assert torch.equal(ds.masks, ds.instances == 1)
    torch.testing.assert_close(ds.boxes, ds.object_boxes[:, :1])
    image, label, target = ds[3]
    assert image.shape == (3, 32, 32) and label == int(ds.object_labels[3, 0])
    assert target["boxes"].shape == (1, 4) and set(target) == {"mask", "boxes"}
    # Object 0 is the largest of its image.
    areas = torch.stack([(ds.instances == j + 1).sum((1, 2)) for j in range(M)], 1)
    assert (areas[:, :1] >= areas[:, 1:]).all()


def test_same_scene_at_two_sizes(small):
    large = render(size=64)
    np.testing.assert_array_equal(small["object_labels"], large["object_labels"])
    present = small["object_labels"] >= 0
    np.testing.assert_allclose(large["object_boxes"][present] / 2, small["object_boxes"][present], atol=1.0)
    # The 64 px instance map sampled at the 32 px pixel centres agrees except along object edges.
    agree = (large["instances"][:, 1::2, 1::2] == small["instances"]).mean()
    assert agree > 0.97, f"only {agree:.3f} of pixels agree between the two sizes"


def test_deterministic_prefix_stable_and_splits_differ(small):
    again, shorter = render(), render(n=20)
    for key in small:
        np.testing.assert_array_equal(again[key], small[key])
        np.testing.assert_array_equal(shorter[key], small[key][:20])
    other = render(split="test")
    assert (other["images"] != small["images"]).any(axis=(1, 2, 3)).all()


def test_get_objects_is_one_batched_gather(ds):
    idx = torch.tensor([5, 0, 17, 5])
    got = ds.get_objects(idx)
    assert torch.equal(got["object_labels"], ds.object_labels[idx])
    torch.testing.assert_close(got["object_boxes"], ds.object_boxes[idx], equal_nan=True)
    assert torch.equal(got["instances"], ds.instances[idx])
    seg, inst, labels = got["segmentation"], got["instances"], got["object_labels"]
    assert seg.dtype == torch.uint8 and (seg[inst == 0] == 0).all()
    for j in range(M):
        where = inst == j + 1
        expected = (labels[:, j] + 1).to(torch.uint8)[:, None, None].expand_as(seg)
        assert torch.equal(seg[where], expected[where])
    assert torch.equal(ds.segmentation[idx], seg)


def test_augment_flips_every_annotation_with_the_pixels(ds):
    flipping = SceneDataset(ds.images, ds.object_labels, ds.object_boxes, ds.instances, ds.classes, ds.mean,
                            ds.std, augment=True)
    idx = torch.arange(N)
    images, _, t = flipping.get_batch(idx, torch.Generator().manual_seed(1), objects=True)
    plain_images, _, plain = flipping.get_batch(idx, torch.Generator().manual_seed(1))
    assert torch.equal(images, plain_images) and torch.equal(t["mask"], plain["mask"])
    flipped = (t["instances"] != ds.instances).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < N
    assert torch.equal(t["mask"], t["instances"] == 1)
    torch.testing.assert_close(t["boxes"], t["object_boxes"][:, :1])
    for j in range(M):
        present = t["object_labels"][:, j] >= 0
        torch.testing.assert_close(t["object_boxes"][present, j], _tight_boxes(t["instances"][present] == j + 1))
    seg = t["segmentation"]
    assert torch.equal(seg, torch.where(flipped[:, None, None], ds.segmentation.flip(-1), ds.segmentation))


def test_normalisation_constants_match_generated_data():
    images = render(n=256)["images"].astype(np.float64) / 255.0
    np.testing.assert_allclose(images.mean(axis=(0, 2, 3)), MEAN, atol=0.03)
    np.testing.assert_allclose(images.std(axis=(0, 2, 3)), STD, atol=0.03)


def test_cache_round_trip_and_corrupt_cache_regenerated(tmp_path):
    first = data.load("scenes", "val", root=tmp_path, image_size=32, num_images=20)
    (path,) = (tmp_path / "scenes").glob("*.npz")
    assert f"v{gen.GENERATOR_VERSION}" in path.name
    again = data.load("scenes", "val", root=tmp_path, image_size=32, num_images=20)
    for key in ("images", "instances", "object_labels"):
        assert torch.equal(getattr(again, key), getattr(first, key))
    path.write_bytes(path.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        third = data.load("scenes", "val", root=tmp_path, image_size=32, num_images=20)
    assert any("unreadable cache" in str(w.message) for w in caught)
    torch.testing.assert_close(third.object_boxes, first.object_boxes, equal_nan=True)
    assert np.load(path)["instances"].shape == (20, 32, 32)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 3}, "num_classes"), ({"image_size": 31}, "image_size"), ({"num_images": 0}, "num_images"),
    ({"content": "background"}, "content"),
])
def test_bad_options_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("scenes", "train", root=tmp_path, **{"num_images": 8, "image_size": 32, **kwargs})


def test_preview_draws_every_object_box(ds):
    grid = render_grid(ds, rows=2, cols=3)
    for k in range(6):
        r, c = divmod(k, 3)
        tile = grid[r * 34: r * 34 + 32, c * 34: c * 34 + 32]
        for x0, y0, x1, y1 in ds.object_boxes[k][ds.object_labels[k] >= 0].int().tolist():
            assert (tile[y0, x0:x1] == BOX).all() and (tile[y1 - 1, x0:x1] == BOX).all(), (k, x0, y0)


def test_cli_list_check_preview(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["datasets", "list"])
    assert res.exit_code == 0 and "scenes" in res.output
    res = runner.invoke(main, ["datasets", "check", "scenes", "--root", str(tmp_path), "--image-size", "32",
                               "-o", "num_images=24"])
    assert res.exit_code == 0, res.output
    assert "scenes/train: 24 images, 6 classes, 32px, annotations: mask, boxes" in res.output
    out = tmp_path / "grid.png"
    res = runner.invoke(main, ["datasets", "preview", "scenes", "--out", str(out), "--root", str(tmp_path),
                               "--image-size", "32", "-o", "num_images=24", "--rows", "2", "--cols", "3"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(out) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape == (2 * 32 + 2, 3 * 32 + 2 * 2, 3)
    assert (pixels == BOX).all(axis=-1).sum() > 6 * 2 * 4 * 4  # >= 2 boxes per tile, each >= 4 px a side
