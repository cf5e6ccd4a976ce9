"""The benchmark's parts track: a tiny bench on the parts world writes every FunnyBirds column for the
CAMs, a Captum attribution and LFI-CAM's attention, at a threshold chosen on the calibration split with
the test-set choice beside it (docs/benchmark.md, "What the model uses")."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from camzoo.bench.config import resolve_config
from camzoo.bench.parts_track import PartsStream, is_parts_split
from camzoo.bench.plan import ConfigError, build_plan
from camzoo.cli import main
from camzoo.data import load
from camzoo.metrics.parts_table import PARTS_METRICS

PARTS_GRID = """
preset = "custom"
seeds = [0]
backbones = ["resnet8"]
methods = ["gradcam", "layercam", "eigencam", "captum:IntegratedGradients", "attention", "random", "oracle"]

[[datasets]]
name = "parts"
root = "{cache}"
image_size = 32
kinds = ["lfi"]
options = {{train = {{num_images = 256}}, test = {{num_images = 8}}, max_background = 3}}

[train]
epochs = 1
batch_size = 64
lr = 0.1

[eval]
images = 8
batch_size = 8
deletion_steps = 2
gallery_images = 2
substrates = []
"""


@pytest.fixture(scope="module")
def parts_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts-track")
    config = root / "parts.toml"
    config.write_text(PARTS_GRID.format(cache=root / "cache"), encoding="utf-8")
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(root / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    return root / "out"


def test_every_parts_column_is_written_for_cams_captum_and_lfi_attention(parts_run):
    summary = pd.read_csv(parts_run / "summary.csv")
    assert set(summary["kind"]) == {"lfi"}, "the entry's kinds replace the config's"
    rows = summary.set_index(["kind", "method"])
    explained = [("lfi", m) for m in ("gradcam", "layercam", "eigencam", "captum:IntegratedGradients", "attention")]
    for row in explained + [("lfi", "random")]:
        for name in PARTS_METRICS:
            value = rows.loc[row, f"{name}_mean"]
            if name in ("parts_csdc", "parts_com", "parts_mx", "parts_mx_test") and rows.loc[row, "top1_mean"] == 0:
                continue  # CSDC reads the correctly classified images (here the test split is the 8 evaluated)
            assert not math.isnan(value), f"{row} has no {name}"
            assert PARTS_METRICS[name][1] <= value <= PARTS_METRICS[name][2]
    assert rows.loc[("lfi", "oracle"), ["parts_mx_mean"]].isna().all(), "the oracle is not given the parts"
    mx = rows["parts_mx_mean"].dropna()
    com, cor, con = (rows.loc[mx.index, f"parts_{n}_mean"] for n in ("com", "cor", "con"))
    assert ((com + cor + con) / 3 - mx).abs().max() < 1e-9
    # BI is the model's: the same in every row of a model
    assert rows.loc["lfi", "parts_bi_mean"].dropna().nunique() == 1
    text = (parts_run / "summary.md").read_text(encoding="utf-8")
    assert "what the model uses (FunnyBirds protocol)" in text
    assert "Parts t (calibration)" in text and "Parts t (test)" in text and "Parts mX (test t)" in text


def test_the_threshold_is_one_of_the_protocol_s_and_the_attention_is_class_blind(parts_run):
    summary = pd.read_csv(parts_run / "summary.csv").set_index(["kind", "method"])
    grid = torch.linspace(0.01, 0.50, 80).double()
    for name in ("parts_threshold_mean", "parts_threshold_test_mean"):
        for value in summary[name].dropna():
            assert (grid - value).abs().min() < 1e-6
    # LFI-CAM's attention does not depend on the class asked: target sensitivity can never score it
    assert summary.loc[("lfi", "attention"), "parts_ts_mean"] == 0.0


def test_a_parts_split_streams_with_its_calibration_split(tmp_path):
    split = load("parts", "test", root=tmp_path, image_size=32, num_images=6)
    calibration = load("parts", "val", root=tmp_path, image_size=32, num_images=6)
    assert is_parts_split(split) and not is_parts_split(load("shapes", "test", root=tmp_path, image_size=32,
                                                                num_images=4))
    stream = PartsStream(split, 4, 2, torch.device("cpu"), calibration=lambda size: calibration)
    assert stream.first.parts.test.images is stream.first.images  # the evaluation images, not a second copy
    (block,) = list(stream.blocks())
    assert block.images.shape[0] == 4 and block.parts.test.images.shape[0] == 4
    assert torch.equal(block.parts.calibration.labels, calibration.labels[:4])
    # the renderer serves the set's own positions: nothing removed = the stored images
    none = torch.zeros(2, 5, dtype=torch.bool)
    background = torch.zeros(2, block.parts.test.max_background, dtype=torch.bool)
    assert torch.allclose(block.parts.test.render(torch.tensor([1, 3]), none, background), block.images[[1, 3]])


def test_a_dataset_entry_s_kinds_must_be_registered_kinds(tmp_path):
    config = resolve_config("quick", overrides={"datasets": [{"name": "parts", "root": str(tmp_path), "image_size": 32,
                                                              "kinds": ["lfi", "lfj"]}]})
    with pytest.raises(ConfigError, match="lfj"):
        build_plan(config)


@pytest.mark.parametrize("name, method", [("parts_funnybirds", "captum:IntegratedGradients"),
                                          ("parts_attention", "attention")])
def test_the_documented_parts_configs_build_their_plans(tmp_path, monkeypatch, name, method):
    monkeypatch.setenv("CAMZOO_CACHE", str(tmp_path))
    config = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / f"{name}.toml"
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--check", "--device", "cpu", "--no-estimate"])
    assert result.exit_code == 0, result.output
    assert method in result.output and "datasets parts" in result.output
