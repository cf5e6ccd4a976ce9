"""Your own models and data: `camzoo bench --model NAME --checkpoint A --checkpoint B --data ROOT` scores
trained checkpoints on an annotated folder without training; bad checkpoints and class counts fail in
one line before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from camzoo.bench.config import resolve_config
from helpers import timm_weights, write_folder
from camzoo.cli import main

@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("own") / "photos")


def bench(*arguments: str):
    return CliRunner().invoke(main, ["bench", "--no-progress", "--no-html", *arguments])


@pytest.mark.slow
def test_two_resnet18_checkpoints_on_an_annotated_folder(folder, tmp_path):
    a = timm_weights(tmp_path / "a.pth", "resnet18", 0, num_classes=4)
    b = timm_weights(tmp_path / "b.pth", "resnet18", 1, num_classes=4)
    out = tmp_path / "out"
    # the games on 8 images, without MoRF/LeRF: the same code paths, a fifth of the time
    lighter = tmp_path / "lighter.toml"
    lighter.write_text("[eval]\ngame_images = 8\nsubstrates = []\n", encoding="utf-8")
    flags = ["--model", "resnet18", "--checkpoint", str(a), "--checkpoint", str(b), "--data", str(folder),
             "--methods", "gradcam,eigencam", "--images", "16", "--image-size", "64", "--out", str(out),
             "--config", str(lighter)]
    result = bench(*flags)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["method"]) == {"gradcam", "eigencam", "random", "centre", "edges", "oracle"}
    assert set(summary["kind"]) == {"checkpoint"} and set(summary["backbone"]) == {"resnet18"}
    gradcam = summary[summary["method"] == "gradcam"].iloc[0]
    assert np.isfinite(gradcam["stability_iou_mean"]) and np.isfinite(gradcam["pointing_game_mean"])
    assert np.isfinite(gradcam["max_box_acc_v2_mean"]) and np.isfinite(gradcam["top1_mean"])
    assert not (out / "models").exists()  # nothing was trained
    # two random-init models: deletion/insertion sit at chance on every row, the oracle's too; whatever
    # the tests say of differences in the last digits, no row is separated from another (one letter)
    at_chance = [metric for metric in ("deletion", "insertion")
                 if np.ptp(summary[f"{metric}_mean"]) < 0.01 and summary[f"{metric}_mean"].between(0.2, 0.3).all()]
    assert at_chance, summary[["method", "deletion_mean", "insertion_mean"]]
    methods = summary[~summary["reference"]]
    for metric in at_chance:
        assert methods[f"{metric}_group"].nunique() == 1 and len(set(methods[f"{metric}_group"].iloc[0])) == 1, metric
        assert not methods[f"{metric}_best"].any(), metric
    cards = pd.read_csv(out / "reliability.csv").set_index("metric")
    assert all(cards.loc[metric, "verdict"] == "report" for metric in at_chance)
    printed = bench(*flags, "--print-config")
    assert printed.exit_code == 0 and "[[models]]" in printed.output and "a.pth" in printed.output
    again = tmp_path / "again.toml"
    again.write_text(printed.output, encoding="utf-8")
    assert resolve_config(None, again) == resolve_config(
        "quick", None, {"models": [{"name": "resnet18", "checkpoints": [str(a), str(b)]}],
                        "methods": ["gradcam", "eigencam", "@controls"],
                        "eval": {"images": 16, "game_images": 8, "substrates": []},
                        "datasets": [{"name": "annotated", "root": str(folder), "image_size": 64, "options": {}}]})


def test_a_vision_transformer_checkpoint(folder, tmp_path):
    vit = timm_weights(tmp_path / "vit.pth", "vit_tiny_patch16_224", 0, num_classes=4, img_size=64)
    config = tmp_path / "vit.toml"
    config.write_text(f'''
methods = ["gradcam", "@controls"]
[[models]]
name = "vit_tiny_patch16_224"
checkpoints = ["{vit}"]
options = {{img_size = 64}}
[[datasets]]
name = "annotated"
root = "{folder}"
image_size = 64
[eval]
images = 8
game_images = 4
deletion_steps = 4
substrates = []
''', encoding="utf-8")
    result = bench("--config", str(config), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert np.isfinite(summary[summary["method"] == "gradcam"]["deletion_mean"]).all()


def test_a_checkpoint_with_other_classes_fails_in_one_line_and_leaves_nothing(folder, tmp_path):
    ten = timm_weights(tmp_path / "ten.pth", "resnet18", 0, num_classes=10)
    out = tmp_path / "out"
    result = bench("--model", "resnet18", "--checkpoint", str(ten), "--data", str(folder), "--image-size", "32",
                   "--out", str(out))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "the model has 10 outputs but the dataset has 4 classes and no class map" in result.output
    assert not (out / "results.sqlite").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: timm_weights(p, "resnet34", 0, num_classes=4), "does not fit timm model 'resnet18': unexpected keys"),
    (lambda p: torch.save(torch.nn.Linear(2, 2), p) or p, "refuses to unpickle"),  # a pickled module
    (lambda p: p, "does not exist"),
])
def test_bad_checkpoints_are_one_line(folder, tmp_path, make, message):
    path = make(tmp_path / "bad.pth")
    result = bench("--model", "resnet18", "--checkpoint", str(path), "--data", str(folder), "--image-size", "32",
                   "--out", str(tmp_path / "out"))
    assert result.exit_code != 0 and "Traceback" not in result.output and message in result.output, result.output
    assert "nothing was run or written" in result.output


def test_own_model_flags_need_a_checkpoint_and_data(folder, tmp_path):
    assert "give them with --checkpoint" in bench("--data", str(folder)).output
    assert "--checkpoint needs --data" in bench("--checkpoint", str(tmp_path / "a.pth")).output
