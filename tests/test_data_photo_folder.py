"""A photo folder as a user brings one (scikit-image's bundled photos at awkward sizes, ImageFolder +
boxes.csv + masks/): boxes on a photo's far edge at 224 px, errors that name file and row, images left
out and the counts actually used, objects that vanish at a small --image-size, and --images N taken
class by class."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import camzoo.data as data
from camzoo.bench.datasets import class_order, stratified_order
from camzoo.data import DatasetError
from camzoo.data.coverage import Truth, remedy_side, vanished
from camzoo.groundtruth import covered_pixels, scale_boxes
from helpers import cli, photo_folder

TINY_NET = """
from torch import nn


def build(num_classes=6):
    return nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""
LIGHT = "[eval]\nsubstrates = []\ndeletion_steps = 2\ngrid_games = []\nsensitivity = []\nperturbation_draws = 1\n"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six classes of two photos each, 423x487 and 487x423, every box on its photo's far edges."""
    return photo_folder(tmp_path_factory.mktemp("photos") / "set")


@pytest.fixture
def tiny_net(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A 6-class network of two convolutions (fast at 224 px) as ``tinynet:build``, and its state dict."""
    (tmp_path / "tinynet.py").write_text(TINY_NET, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tinynet

    torch.manual_seed(0)
    torch.save(tinynet.build().state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "light.toml").write_text(LIGHT, encoding="utf-8")
    return "tinynet:build", tmp_path / "tiny.pth"


def test_float32_scaling_pushes_a_far_edge_out_and_scale_boxes_keeps_it_on_the_edge():
    sides = np.arange(1, 2049)
    old = np.float32(sides) * (np.float32(224) / np.float32(sides))  # what the loader computed before
    assert (old > 224).any() and np.float32(423) * np.float32(224 / 423) > 224  # the reported case
    for size in (8, 32, 224, 299, 448):
        for side in sides:
            whole = scale_boxes([[0, 0, side, side]], (int(side), int(side)), (size, size))
            assert whole.tolist() == [[0.0, 0.0, float(size), float(size)]], (side, size)
    # inside stays inside, order is kept, and a half-way box lands half-way
    boxes = scale_boxes([[141.5, 0.25, 423, 487], [0, 0, 211.5, 243.5]], (423, 487), (224, 224))
    assert (boxes >= 0).all() and (boxes <= 224).all() and boxes[1].tolist() == [0, 0, 112, 112]


def test_far_edge_boxes_at_224_load_verify_and_preview(photos, tmp_path):
    ds = data.load("annotated", "test", root=photos, image_size=224)
    assert len(ds) == 12 and ds.annotations == ("mask", "boxes")
    for index in range(len(ds)):
        _, _, target = ds[index]
        boxes = target["boxes"]
        assert (boxes >= 0).all() and (boxes <= 224).all(), ds.records[index].record
        if "horse" not in str(ds.records[index].path):
            assert boxes[0, 2:].tolist() == [224.0, 224.0]  # the far edges, exactly
    checked = cli("datasets", "check", "annotated", "--root", photos, "--image-size", "224", "--verify")
    assert checked.exit_code == 0 and "annotated/test: all 12 items read" in checked.output, checked.output
    out = tmp_path / "grid.png"
    shown = cli("datasets", "preview", "annotated", "--root", photos, "--split", "test", "--image-size", "224",
                "--out", out, "--rows", "2", "--cols", "6")
    assert shown.exit_code == 0 and out.stat().st_size > 0, shown.output


def test_annotation_errors_name_the_file_and_the_row(photos, tmp_path):
    ds = data.load("annotated", "test", root=photos)
    names = {r.path.name: r.record for r in ds.records}
    assert names["cat1.png"] == "annotated image 'cat/cat1.png' (boxes.csv line 5)"
    assert names["horse0.png"] == "annotated image 'horse/horse0.png' (mask masks/horse/horse0.png)"
    # a box past the far edge by more than the 1 px tolerance: the file, its line, the row's image
    root = photo_folder(tmp_path / "bad", per_class=1, horse=False)
    rows = (root / "boxes.csv").read_text().splitlines()
    rows[3] = rows[3].rsplit(",", 2)[0] + ",490,423"  # coffee0 is 423 wide, 487 tall
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"boxes\.csv' line 4 \(coffee/coffee0\.png\): box 0 .* outside the 423x487"):
        data.load("annotated", "test", root=root)
    # an image that fails only when its pixels are read names its rows too
    root = photo_folder(tmp_path / "cut", per_class=1, horse=False)
    path = root / "rocket" / "rocket0.png"
    path.write_bytes(path.read_bytes()[:2000])
    ds = data.load("annotated", "test", root=root)
    index = [r.path for r in ds.records].index(path)
    with pytest.raises(DatasetError, match=r"annotated image 'rocket/rocket0\.png' \(boxes\.csv line 5\): cannot read"):
        ds[index]


@pytest.mark.slow
def test_dropped_images_are_said_with_counts_and_the_counts_used_everywhere(tmp_path, tiny_net):
    """coffee has no box: its image is left out; eval.images asks for 96 and games for 48, 5 are used."""
    root = photo_folder(tmp_path / "set", per_class=1, unboxed=("coffee",))
    checked = cli("datasets", "check", "annotated", "--root", root)
    dropped = "left out 1 of 6 images (coffee 1 of 1): they have neither a row in boxes.csv nor a mask in masks/"
    assert "annotated/test: 5 images" in checked.output and dropped in checked.output, checked.output
    assert "-o unannotated=error" in checked.output and "no image of coffee is left" in checked.output
    model, weights = tiny_net
    flags = ["bench", "--model", model, "--checkpoint", weights, "--data", root, "--methods", "gradcam",
             "--config", tmp_path / "light.toml", "--out", tmp_path / "out", "--no-progress", "--no-html"]
    plan = cli(*flags, "--check", "--no-estimate")
    assert plan.exit_code == 0, plan.output
    assert "eval: 5 images" in plan.output and "games on every image" in plan.output, plan.output
    assert "96" not in plan.output.replace("asks for 96", "") and "first 48" not in plan.output
    assert "annotated: 5 evaluation images, all of its test split (eval.images asks for 96)" in plan.output
    assert f"annotated: {dropped}" in plan.output and 'options = {unannotated = "error"}' in plan.output
    run = cli(*flags)
    assert run.exit_code == 0, run.output
    header = run.output.split("# camzoo benchmark")[0]
    assert f"camzoo bench: annotated: {dropped}" in header, header
    summary = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "; 5 evaluation images" in summary and "first 48" not in summary and f"- annotated: {dropped}" in summary
    scores = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("method")
    assert np.isfinite(scores.loc["gradcam", "pointing_game_mean"]) and scores.loc["oracle", "pointing_game_mean"] == 1


def test_an_object_that_vanishes_at_image_size_8_is_caught_before_any_cell(tmp_path, tiny_net):
    root = photo_folder(tmp_path / "set", thin=("rocket",))  # a 2 px mast: 0.04 px wide at 8 px
    model, weights = tiny_net
    flags = ["bench", "--model", model, "--checkpoint", weights, "--data", root, "--methods", "gradcam",
             "--config", tmp_path / "light.toml", "--out", tmp_path / "out", "--no-progress", "--no-html"]
    refused = cli(*flags, "--image-size", "8", "--check", "--no-estimate")
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    for said in ("at 8 px the object of 2 image(s) covers no pixel", "'rocket/rocket0.png' (boxes.csv line 8)",
                 "'rocket/rocket1.png' (boxes.csv line 9)", "covers no pixel centre"):
        assert said in refused.output, refused.output
    side = int(re.search(r"use --image-size (\d+) \(image_size = \1 in its \[\[datasets\]\] entry\) or larger",
                         refused.output).group(1))
    run = cli(*flags, "--image-size", "8")  # the run refuses as its plan is built: no cell, no store
    assert run.exit_code == 1 and "rocket/rocket0.png" in run.output and not (tmp_path / "out" / "results.sqlite").exists()
    assert cli(*flags, "--image-size", str(side), "--check", "--no-estimate").exit_code == 0
    verified = cli("datasets", "check", "annotated", "--root", root, "--image-size", "8", "--verify")
    assert verified.exit_code == 0 and f"use --image-size {side} or larger" in verified.output, verified.output
    # the remedy holds at every side from it on, and the side below it loses an object
    ds = data.load("annotated", "test", root=root, image_size=8)
    found = vanished(ds, range(len(ds)), 8)
    assert [Path(ds.records[i].path).name for i, *_ in found.images] == ["rocket0.png", "rocket1.png"]
    assert not vanished(ds, range(len(ds)), side) and vanished(ds, range(len(ds)), side - 1)
    assert all(not vanished(ds, [i for i, *_ in found.images], s) for s in range(side, side + 64))


def test_a_thin_mask_vanishes_under_nearest_resizing():
    mask = np.zeros((487, 423), bool)
    mask[:, 200] = True  # one column
    truth = Truth((423, 487), np.array([[200, 0, 201, 487]], np.float32), mask)
    assert truth.empty_at(8) == "its mask covers no pixel at 8 px" and truth.empty_at(423) is None
    side = remedy_side([truth], 8)
    assert side is not None and all(truth.empty_at(s) is None for s in range(side, 500))
    assert not covered_pixels(scale_boxes([[200, 0, 201, 487]], (423, 487), (8, 8))).any()


def test_images_4_are_taken_class_by_class(photos, tmp_path, tiny_net):
    ds = data.load("annotated", "test", root=photos)
    labels = [r.label for r in class_order(ds).records]
    assert len(set(labels[:4])) == 4 and len(set(labels[:6])) == 6  # not four astronauts
    assert [r.path for r in class_order(class_order(ds)).records] == [r.path for r in class_order(ds).records]
    model, weights = tiny_net
    plan = cli("bench", "--model", model, "--checkpoint", weights, "--data", photos, "--images", "4", "--check",
               "--no-estimate")
    listed = re.search(r"annotated: 4 of 12 test images, taken class by class in proportion \(seed 0\): (.*)",
                       plan.output)
    assert plan.exit_code == 0 and listed, plan.output
    counts = dict(item.rsplit(" ", 1) for item in listed.group(1).split(", "))
    assert len(counts) == 4 and set(counts.values()) == {"1"} and set(counts) <= set(ds.folder_classes)


@pytest.mark.parametrize("sizes", [(2, 2, 2), (1, 5, 10), (3, 40), (7, 7, 1, 1, 30)])
def test_every_prefix_holds_each_class_in_proportion(sizes):
    labels = [label for label, n in enumerate(sizes) for _ in range(n)]
    order = stratified_order(labels)
    assert sorted(order) == list(range(len(labels))) and order == stratified_order(labels)
    for count in range(1, len(labels) + 1):
        taken = Counter(labels[i] for i in order[:count])
        for label, n in enumerate(sizes):
            assert abs(taken[label] - count * n / len(labels)) <= 1, (count, label, taken)
    assert stratified_order(labels, seed=1) != order or len(set(labels)) == 1 or len(labels) < 3
