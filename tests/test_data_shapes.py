"""The built-in "shapes" dataset: exact annotations, determinism, disjoint splits, caching, errors."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import camzoo.data as data
from camzoo.cli import main
from camzoo.data import shapes_gen as gen
from camzoo.data.shapes import MEAN, STD

N = 240  # images per split in these tests: small, and not a multiple of the generator's block size


def render(n=N, size=32, classes=10, seed=0, split="train", content="full"):
    return gen.render(gen.draw_scenes(n, classes, seed, split), size, content)


@pytest.fixture(scope="module")
def full():
    return render()


def test_mask_is_exactly_where_the_object_was_painted(full):
    # Same scenes with the object left out: the pixels that change are the object's, and only those.
    background = render(content="background")
    changed = (full["images"] != background["images"]).any(axis=1)
    assert not (changed & ~full["masks"]).any(), "pixels outside the mask differ from the object-free render"
    covered = changed[full["masks"]].mean()
    assert covered > 0.98, f"only {covered:.3f} of mask pixels differ from the background"


def test_mask_matches_object_on_flat_background():
    # Independent of the generator's internals: on flat grey the object is the set of pixels far from grey.
    obj = render(content="object")
    grey = round(0.45 * 255)
    far = (np.abs(obj["images"].astype(np.int16) - grey) > 45).any(axis=1)
    mismatch = (far != obj["masks"]).mean()
    assert mismatch < 2e-3, f"{mismatch:.4f} of pixels disagree between mask and painted object"


def test_boxes_are_tight_boxes_of_masks_and_inside_image(full):
    masks, boxes = full["masks"], full["boxes"]
    for i in range(0, len(masks), 17):  # a test, not a hot path: check a spread of images one by one
        rows, cols = np.nonzero(masks[i])
        assert rows.size > 20
        np.testing.assert_array_equal(boxes[i], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    assert (boxes >= 0).all() and (boxes <= 32).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_object_size_scales_with_image_size():
    # The same scenes at 64 px: the object covers the same fraction of the image.
    small, large = render(n=64, size=32), render(n=64, size=64)
    np.testing.assert_array_equal(small["labels"], large["labels"])
    frac_small = small["masks"].mean(axis=(1, 2))
    frac_large = large["masks"].mean(axis=(1, 2))
    np.testing.assert_allclose(frac_small, frac_large, atol=0.02)


def test_same_seed_gives_identical_data_and_other_seed_differs(full):
    again = render()
    for key in ("images", "masks", "boxes", "labels"):
        np.testing.assert_array_equal(full[key], again[key])
    other = render(seed=1)
    assert (other["images"] != full["images"]).any(axis=(1, 2, 3)).all()


def test_first_images_do_not_depend_on_split_size(full):
    shorter = render(n=100)
    for key in ("images", "masks", "boxes", "labels"):
        np.testing.assert_array_equal(shorter[key], full[key][:100])


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


def test_splits_do_not_overlap(full):
    test, val = render(split="test"), render(split="val")
    train_h, test_h, val_h = _hashes(full["images"]), _hashes(test["images"]), _hashes(val["images"])
    assert len(train_h) == N and len(test_h) == N and len(val_h) == N
    assert not train_h & test_h and not train_h & val_h and not test_h & val_h
    # Not only the noise: the scene layouts differ too.
    assert not np.isin(gen.draw_scenes(N, 10, 0, "train").cx[:, 0], gen.draw_scenes(N, 10, 0, "test").cx[:, 0]).any()


def test_background_does_not_depend_on_the_class():
    # The same seed with another class layout gives other labels and objects but the very same
    # background, distractors and object placement: without the object, an image says nothing
    # about its class.
    ten = render(n=120, classes=10, content="background")
    three = render(n=120, classes=3, content="background")
    assert (ten["labels"] != three["labels"]).mean() > 0.5
    np.testing.assert_array_equal(ten["images"], three["images"])
    full_ten, full_three = render(n=120, classes=10), render(n=120, classes=3)
    assert (full_ten["images"] != full_three["images"]).any(axis=(1, 2, 3)).mean() > 0.5


def test_labels_balanced_and_classes_laid_out():
    assert gen.class_names(5) == ["circle", "square", "triangle", "plus", "star"]
    assert len(gen.class_names(10)) == 10 and gen.class_names(10)[:5] == gen.class_names(5)
    assert gen.class_names(12) == [f"{s}-{p}" for p in ("solid", "stripes")
                                   for s in ("circle", "square", "triangle", "plus", "star", "ring")]
    assert len(set(gen.class_names(gen.MAX_CLASSES))) == gen.MAX_CLASSES
    labels = render(n=1000, size=32)["labels"]
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 95 and counts.max() <= 105, counts


def test_colour_alone_does_not_give_the_class():
    # Nearest class-centroid on colour statistics (mean, std, coarse RGB histogram) stays near chance.
    def features(images):
        x = images.astype(np.float32) / 255.0
        bins = (x * 3.999).astype(np.int64)
        codes = bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2]
        hist = np.stack([np.bincount(c.ravel(), minlength=64) for c in codes]).astype(np.float32) / codes[0].size
        return np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3)), hist], axis=1)

    train, test = render(n=1500, split="train"), render(n=600, split="test")
    ftr, fte = features(train["images"]), features(test["images"])
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    centroids = np.stack([ftr[train["labels"] == k].mean(0) for k in range(10)])
    pred = ((fte[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    acc = (pred == test["labels"]).mean()
    assert acc < 0.2, f"colour statistics predict the class with accuracy {acc:.3f} (chance 0.1)"


def test_normalisation_constants_match_generated_data():
    images = render(n=1000, size=32)["images"].astype(np.float64) / 255.0
    np.testing.assert_allclose(images.mean(axis=(0, 2, 3)), MEAN, atol=0.03)
    np.testing.assert_allclose(images.std(axis=(0, 2, 3)), STD, atol=0.03)


def test_load_caches_and_contract(tmp_path):
    ds = data.load("shapes", "train", root=tmp_path, image_size=32, num_images=N)
    files = list((tmp_path / "shapes").glob("*.npz"))
    assert len(files) == 1 and f"v{gen.GENERATOR_VERSION}" in files[0].name
    image, label, target = ds[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    assert target["mask"].shape == (32, 32) and target["mask"].dtype == torch.bool
    assert target["boxes"].shape == (1, 4) and target["boxes"].dtype == torch.float32
    assert ds.classes == gen.class_names(10) and ds.image_size == 32
    assert len(ds.mean) == 3 and len(ds.std) == 3
    # Normalised with the dataset's statistics: undoing it gives back the stored pixels.
    restored = image * torch.tensor(ds.std).view(3, 1, 1) + torch.tensor(ds.mean).view(3, 1, 1)
    torch.testing.assert_close(restored, ds.images[5].float() / 255, atol=1e-5, rtol=0)
    # The second load reads the cache and serves the same data.
    again = data.load("shapes", "train", root=tmp_path, image_size=32, num_images=N)
    assert torch.equal(again.images, ds.images) and torch.equal(again.masks, ds.masks)


def test_corrupt_cache_is_regenerated(tmp_path):
    ds = data.load("shapes", "test", root=tmp_path, image_size=32, num_images=50)
    (path,) = (tmp_path / "shapes").glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = data.load("shapes", "test", root=tmp_path, image_size=32, num_images=50)
    assert any("unreadable cache" in str(w.message) for w in caught)
    assert torch.equal(again.images, ds.images)
    assert np.load(path)["images"].shape == (50, 3, 32, 32)  # rewritten whole


def test_loader_batches_and_augmentation_moves_annotations(tmp_path):
    ds = data.load("shapes", "train", root=tmp_path, image_size=32, num_images=N, augment=True)
    batches = list(data.loader(ds, 64, shuffle=True, seed=3))
    assert [len(b[1]) for b in batches] == [64, 64, 64, 48]
    again = list(data.loader(ds, 64, shuffle=True, seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == sorted(ds.labels.tolist())
    images, labels, targets = batches[0]
    assert targets["mask"].shape == (64, 32, 32) and targets["boxes"].shape == (64, 1, 4)
    # After the (random) flips, boxes are still the tight boxes of the masks.
    m = targets["mask"]
    cols, rows = m.any(1), m.any(2)
    ar = torch.arange(32)
    x0 = torch.where(cols, ar, 99).amin(1)
    x1 = torch.where(cols, ar, -1).amax(1) + 1
    y0 = torch.where(rows, ar, 99).amin(1)
    y1 = torch.where(rows, ar, -1).amax(1) + 1
    torch.testing.assert_close(targets["boxes"][:, 0], torch.stack([x0, y0, x1, y1], 1).float())
    # Some masks were flipped (the batch is shuffled, so compare as sets of mask bytes).
    stored = {m.numpy().tobytes() for m in ds.masks}
    assert any(m.numpy().tobytes() not in stored for m in targets["mask"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 31}, "image_size"),
        ({"image_size": 225}, "image_size"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 31}, "num_classes"),
        ({"content": "nothing"}, "content"),
        ({"num_images": 0}, "num_images"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("shapes", "train", root=tmp_path, **{"num_images": 8, "image_size": 32, **kwargs})


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*shapes"):
        data.load("nope", "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.load("shapes", "dev")


def test_cli_list_check_preview(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["datasets", "list"])
    assert res.exit_code == 0 and "shapes" in res.output and "cub200" in res.output
    res = runner.invoke(main, ["datasets", "check", "shapes", "--root", str(tmp_path), "--image-size", "32",
                               "-o", "num_images=40", "-o", "num_classes=6"])
    assert res.exit_code == 0, res.output
    assert "shapes/train: 40 images, 6 classes, 32px, annotations: mask, boxes" in res.output
    assert "shapes/test: 40 images" in res.output
    out = tmp_path / "grid.png"
    res = runner.invoke(main, ["datasets", "preview", "shapes", "--out", str(out), "--root", str(tmp_path),
                               "--image-size", "32", "-o", "num_images=40", "--rows", "2", "--cols", "3"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(out) as img:
        assert img.size == (3 * 32 + 2 * 2, 2 * 32 + 2)
    res = runner.invoke(main, ["datasets", "check", "nope"])
    assert res.exit_code != 0 and "unknown dataset" in res.output
