"""Planted shortcuts (docs/datasets.md, "Planted shortcuts"; docs/metrics.md, "Shortcut share"): labels
redrawn at random so that an artefact is the only reliable signal, the artefact's region as the maps'
ground truth, and a tiny benchmark that shows a model above its best constant accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import camzoo
from camzoo.data import load
from camzoo.data.shortcuts import CLASSES, KINDS, plant_shortcut, shortcut_region
from camzoo.metrics import best_constant_accuracy, shortcut_share
from camzoo.models import build_model
from camzoo.train import TrainConfig, train

from helpers import cli, write_folder


@pytest.fixture(scope="module")
def digits() -> camzoo.data.base.ArrayDataset:
    return load("digits", "train", image_size=32, num_images=300)


@pytest.mark.parametrize("kind", KINDS)
def test_labels_are_balanced_within_every_original_class_and_the_artefact_follows_the_rate(digits, kind):
    rate = 0.8
    planted = plant_shortcut(digits, kind, rate=rate, seed=3)
    labels, original, marked = planted.labels.numpy(), digits.labels.numpy(), planted.artefact.numpy()
    assert planted.classes == list(CLASSES) and len(set(CLASSES)) == 2
    assert abs(int(labels.sum()) * 2 - labels.size) <= 1  # balanced overall
    for value in np.unique(original):  # and within each original class: the labels say nothing of the digit
        members = labels[original == value]
        assert abs(int(members.sum()) * 2 - members.size) <= 1, (value, members)
    for value, share in ((1, rate), (0, 1 - rate)):
        in_class = marked[labels == value]
        assert int(in_class.sum()) == round(share * in_class.size)
    assert torch.equal(planted.original_labels, digits.labels)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [32, 64])
def test_only_the_region_of_marked_images_changes_and_it_is_every_images_ground_truth(kind, size):
    source = load("digits", "test", image_size=size, num_images=40)
    planted = plant_shortcut(source, kind)
    region = shortcut_region(kind, size)
    assert planted.shortcut == kind and torch.equal(planted.shortcut_region, region)
    assert 0 < region.float().mean() < 0.3  # a part of the image, not all of it
    changed = (planted.images != source.images).any(1)  # (N,S,S)
    assert not changed[:, ~region].any()  # pixels outside the region are never touched
    assert not changed[~planted.artefact].any()  # unmarked images are the source's
    drawn = changed[planted.artefact].flatten(1).float().mean(1) * region.numel() / region.sum()
    assert (drawn > 0.25).all(), drawn  # the artefact visibly covers its region in every marked image
    assert torch.equal(planted.masks, region.expand_as(planted.masks))
    ys, xs = torch.nonzero(region, as_tuple=True)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert torch.equal(planted.boxes, torch.tensor(box).float().view(1, 1, 4).expand(len(planted), 1, 4))
    assert planted.annotations == ("mask", "boxes")
    image, label, target = planted[0]
    assert torch.equal(target["mask"], region) and label == int(planted.labels[0])


def test_planting_is_deterministic_and_each_split_draws_its_own_labels(digits):
    first, again = plant_shortcut(digits, "stripes", seed=1), plant_shortcut(digits, "stripes", seed=1)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(plant_shortcut(digits, "stripes", seed=2).labels, first.labels)
    loaded = load("digits", "train", image_size=32, num_images=300, shortcut="stripes", shortcut_rate=0.9, seed=0)
    assert torch.equal(loaded.labels, plant_shortcut(digits, "stripes", 0.9, 0).labels)
    test = load("digits", "test", image_size=32, num_images=300, shortcut="stripes")
    assert test.split == "test" and not torch.equal(test.labels[:100], loaded.labels[:100])


def test_the_shortcut_option_names_its_choices_and_needs_an_in_memory_dataset(tmp_path):
    with pytest.raises(ValueError, match="digits: option shortcut must be one of watermark, stripes, centre, got 'hue'"):
        load("digits", "test", shortcut="hue")
    with pytest.raises(ValueError, match="shortcut_rate needs it"):
        load("digits", "test", shortcut_rate=0.8)
    with pytest.raises(ValueError, match=r"digits: shortcut_rate must be a number in \[0.5, 1\]"):
        load("digits", "test", shortcut="centre", shortcut_rate=1.5)
    folder = write_folder(tmp_path / "folder")
    with pytest.raises(ValueError, match="annotated: option shortcut needs an in-memory dataset"):
        load("annotated", "test", root=folder, shortcut="centre")


def test_shortcut_share_is_the_mass_inside_the_region_and_its_chance_the_area():
    regions = torch.zeros(3, 4, 4, dtype=torch.bool)
    regions[:, :2, :2] = True  # a quarter of the image
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 1.0, 0.5  # 1 of 1.5 inside
    maps[1] = 1.0  # constant: the area's share
    result = shortcut_share(maps, regions)  # maps[2]: all zero -> 0
    assert torch.allclose(result["shortcut_share"], torch.tensor([1 / 1.5, 0.25, 0.0]))
    assert torch.allclose(result["shortcut_share_chance"], torch.full((3,), 0.25))
    with pytest.raises(ValueError, match="share one"):
        shortcut_share(maps, regions[:, :2])
    assert best_constant_accuracy(torch.tensor([0, 1, 1, 1])) == 0.75
    assert best_constant_accuracy(np.array([2, 2, 5])) == pytest.approx(2 / 3)


def test_oracle_scores_one_and_random_the_area_ratio():
    planted = load("digits", "test", image_size=32, num_images=64, shortcut="stripes")
    images, labels, targets = planted.get_batch(range(len(planted)))
    model = build_model("baseline", "resnet8", 2, image_size=32).eval()
    found = camzoo.explain(model, images, ["oracle", "random"], target=labels, ground_truth={"mask": targets["mask"]})
    regions = targets["mask"]
    oracle = shortcut_share(found["oracle"].maps, regions)
    random = shortcut_share(found["random"].maps, regions)
    assert torch.allclose(oracle["shortcut_share"], torch.ones(len(planted)))
    chance = float(random["shortcut_share_chance"].mean())
    assert chance == pytest.approx(float(planted.shortcut_region.float().mean()))
    assert abs(float(random["shortcut_share"].mean()) - chance) < 0.2 * chance


def test_a_small_cnn_learns_the_artefact_beyond_the_best_constant(tmp_path):
    train_set = load("digits", "train", image_size=32, num_images=384, shortcut="centre")
    test_set = load("digits", "test", image_size=32, num_images=128, shortcut="centre")
    config = TrainConfig(kind="baseline", backbone="resnet8", epochs=4, batch_size=32, lr=0.1, seed=0, device="cpu",
                         progress=False)
    result = train(config, train_set, tmp_path, eval_dataset=test_set)
    constant = best_constant_accuracy(test_set.labels)
    # the labels are random, so without the artefact no model beats the constant by more than chance
    assert result.eval_accuracy > constant + 0.2, (result.eval_accuracy, constant)


SHORTCUT_GRID = """
preset = "custom"
seeds = [0]
kinds = ["baseline"]
backbones = ["resnet8"]
methods = ["gradcam", "eigencam", "@controls"]

[[datasets]]
name = "digits"
image_size = 32
options = {{shortcut = "{kind}", train = {{num_images = 384}}, test = {{num_images = 64}}}}

[train]
epochs = 4
batch_size = 32
lr = 0.1

[eval]
images = 32
batch_size = 16
deletion_steps = 4
substrates = ["zeros"]
gallery_images = 2
"""


def test_a_tiny_shortcut_bench_scores_every_method_and_states_the_best_constant(tmp_path):
    config = tmp_path / "shortcut.toml"
    config.write_text(SHORTCUT_GRID.format(kind="watermark"), encoding="utf-8")
    result = cli("bench", "--config", config, "--out", tmp_path / "out", "--no-progress", "--device", "cpu")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert set(frame["method"]) >= {"gradcam", "eigencam", "random", "oracle"}
    assert frame["shortcut_share_mean"].notna().all(), frame[["method", "shortcut_share_mean"]]
    by_method = frame.set_index("method")
    chance = float(shortcut_region("watermark", 32).float().mean())
    assert by_method.loc["oracle", "shortcut_share_mean"] == pytest.approx(1.0)
    assert by_method["shortcut_share_chance_mean"].to_numpy() == pytest.approx(chance)
    accuracy, constant = by_method.loc["gradcam", "top1_mean"], by_method.loc["gradcam", "best_constant_accuracy_mean"]
    assert accuracy > constant
    text = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("Planted shortcut (watermark)"))
    assert f"baseline {accuracy:.3f} vs {constant:.3f} ({accuracy - constant:+.3f}: beats it)" in line
    assert "every model beats the best constant" in line
    leaderboard = text.split("## Full tables")[0]
    assert "Planted shortcut (watermark)" in leaderboard
