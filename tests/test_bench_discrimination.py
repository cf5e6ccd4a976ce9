"""Issue 22 in the benchmark: grid games and class sensitivity as table columns, layer rows, digits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from camzoo.bench.config import PRESETS, resolve_config
from camzoo.bench.plan import ConfigError, build_plan
from camzoo.cli import main
from camzoo.methods import get_method, one_pass_groups, select_methods, split_layer
from camzoo.metrics import METRICS, EvalSettings, score_maps

DIGITS = """
preset = "custom"
seeds = [0, 1]
kinds = ["baseline"]
backbones = ["resnet8"]
methods = ["gradcam", "eigencam", "layercam", "gradcam@layer2", "random"]

[[datasets]]
name = "digits"
image_size = 32
options = {train = {num_images = 800}}

[train]
epochs = 3
batch_size = 32
lr = 0.05

[eval]
images = 64
batch_size = 32
deletion_steps = 4
substrates = []
gallery_images = 2
grid_games = ["gridpg_2x2", "difull_2x2"]
grid_threshold = 0.3
grid_count = 16
sensitivity = ["random_logit_similarity"]
"""


@pytest.mark.slow
def test_a_digits_bench_tells_the_methods_apart(tmp_path: Path) -> None:
    """Every row gets the new columns; random sits at chance; Eigen-CAM is class-agnostic (significantly
    above Grad-CAM); LayerCAM stays in the target cell on DiFull; a layer row is its own row."""
    config = tmp_path / "digits.toml"
    config.write_text(DIGITS, encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "— discrimination" in result.output and "Grid games: up to" in result.output and "GridPG 2x2 ↑" in result.output
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert list(summary.index) == ["gradcam", "eigencam", "layercam", "gradcam@layer2", "random"]
    assert summary["gridpg_2x2_mean"].notna().all() and summary["random_logit_similarity_mean"].notna().all()
    assert summary.drop(index="gradcam@layer2")["difull_2x2_mean"].notna().all()
    assert pd.isna(summary.loc["gradcam@layer2", "difull_2x2_mean"])  # the wrapper explains its own map
    for game in ("gridpg_2x2", "difull_2x2"):  # random: chance (1/4) inside its CI
        assert summary.loc["random", f"{game}_ci_low"] <= 0.25 <= summary.loc["random", f"{game}_ci_high"]
    assert summary.loc["layercam", "difull_2x2_mean"] >= 0.9
    assert summary.loc["eigencam", "random_logit_similarity_mean"] > 0.95
    assert summary.loc["eigencam", "random_logit_similarity_mean"] > summary.loc["gradcam", "random_logit_similarity_mean"]
    pairwise = pd.read_csv(out / "pairwise.csv")
    test = pairwise[(pairwise["metric"] == "random_logit_similarity") & pairwise["a"].str.endswith("/gradcam")
                    & pairwise["b"].str.endswith("/eigencam")]
    assert len(test) == 1 and bool(test["significant"].iloc[0])
    # the same grids for every row of a model (paired), counted in each cell
    from camzoo.bench.store import ResultsStore

    with ResultsStore(out) as store:
        rows = pd.DataFrame(store.results())
    counts = rows[rows["metric"] == "grid_count_2x2"]
    assert len(counts) == 10 and (counts["value"] == 16).all()


class ColourNet(nn.Module):
    """A fixed 4-class classifier by colour (R, G, B, dark): logits = fc(GAP(relu(conv(x)))), with a
    ``cam_hook`` so CAMs and the DiFull/DiPart wrappers find its final feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]])[:, :, None, None])
            self.conv.bias.zero_()
        self.cam_hook = nn.Identity()
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(4) * 20)
            self.fc.bias.zero_()
        self.num_classes = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cam_hook(torch.relu(self.conv(x))).mean((2, 3)))


def colour_images(count: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(count) % 4
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]])[labels]
    images = torch.zeros(count, 3, 16, 16)
    images[:, :, 4:12, 4:12] = colours[:, :, None, None]  # a coloured square on a neutral background
    return images, labels


@pytest.mark.parametrize("method, expected", [("oracle", 1.0), ("random", None)])
def test_controls_on_every_grid_game(method: str, expected: float | None) -> None:
    """The oracle gets the target cell(s) as ground truth and scores 1 on every game; random sits at
    chance (1/N², 0.5 for Focus) — exactly, since its map does not depend on the target."""
    model = ColourNet().eval()
    images, labels = colour_images()
    masks = torch.zeros(24, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    settings = EvalSettings(deletion_steps=2, substrates=(), grid_games=("gridpg_2x2", "gridpg_3x3", "difull_2x2",
                            "dipart_2x2", "focus"), grid_count=8, grid_threshold=0.9)
    from camzoo import explain

    maps = explain(model, images, method=method, target=labels, ground_truth={"mask": masks}).maps
    memo: dict = {}
    scores = score_maps(model, images, maps, labels, masks, None, settings, model_memo=memo, method=method)
    chance = {"gridpg_2x2": 0.25, "gridpg_3x3": None, "difull_2x2": 0.25, "dipart_2x2": 0.25, "focus": 0.5}
    assert "gridpg_3x3" not in scores and scores["grid_count_3x3"][0] == 0  # 4 classes cannot fill a 3x3 grid
    assert scores["grid_count_2x2"][0] == 8 and scores["grid_qualified"][0] == 24
    for game in ("gridpg_2x2", "difull_2x2", "dipart_2x2", "focus"):
        value, per_image = scores[game]
        assert per_image.shape[0] == (8 if game == "focus" else 32)
        assert value == pytest.approx(expected if expected is not None else chance[game], abs=1e-6 if expected else 0.1)
    assert ("grids", 2, 8, 0.9) in memo  # built once per model, shared by the model's cells
    without = score_maps(model, images, maps, labels, masks, None, settings)  # no method: those columns skipped
    assert not {"gridpg_2x2", "focus"} & set(without)


def test_layer_rows_select_group_and_plan() -> None:
    assert split_layer("gradcam@layer2") == ("gradcam", "layer2") and split_layer("@one-pass") == ("@one-pass", None)
    assert get_method("gradcam@layer2") is get_method("gradcam")
    with pytest.raises(ValueError, match="module name"):
        split_layer("gradcam@2 x")
    chosen = select_methods(["gradcam", "Grad-CAM@layer2", "@family:gradient@layer2"])
    assert chosen[:2] == ["gradcam", "gradcam@layer2"] and all(m.endswith("@layer2") for m in chosen[1:])
    assert one_pass_groups(["gradcam", "gradcam@layer2", "layercam", "layercam@layer2", "random"]) == [
        ["gradcam", "layercam"], ["gradcam@layer2", "layercam@layer2"], ["random"]]
    shapes = [PRESETS["quick"]["datasets"][0]]  # the classification track (a baseline trains no segmenter)
    config = resolve_config("quick", overrides={"kinds": ["baseline"], "seeds": [0], "datasets": shapes,
                                                "methods": ["gradcam", "gradcam@layer2", "random"]})
    job = build_plan(config, "cpu").jobs[0]
    assert job.methods == ("gradcam", "gradcam@layer2", "random")
    assert job.layer("gradcam@layer2") == "layer2" and job.layer("gradcam") is None
    assert job.groups == (("gradcam",), ("gradcam@layer2",), ("random",))
    bad = resolve_config("quick", overrides={"kinds": ["baseline"], "seeds": [0], "datasets": shapes,
                                             "methods": ["gradcam@layer9"]})
    with pytest.raises(ConfigError, match="layer9"):
        build_plan(bad, "cpu")


def test_settings_and_presets() -> None:
    problems = EvalSettings.__new__(EvalSettings)
    object.__setattr__(problems, "__dict__", {**EvalSettings().__dict__, "grid_games": ("gridpg_4x4",),
                                              "grid_threshold": 1.5, "grid_count": 0, "sensitivity": ("x",),
                                              "randomisation_draws": 0})
    found = " ".join(EvalSettings.problems(problems))
    for key in ("eval.grid_games", "eval.grid_threshold", "eval.grid_count", "eval.sensitivity",
                "eval.randomisation_draws"):
        assert key in found
    with pytest.raises(ConfigError, match="eval.grid_games"):
        build_plan(resolve_config("quick", overrides={"eval": {"grid_games": ["gridpg_5x5"]}}), "cpu")
    assert EvalSettings().discrimination == ()  # the default plays none: existing configs are unchanged
    quick = EvalSettings.from_config(resolve_config("quick")["eval"])
    assert {"gridpg_2x2", "difull_2x2", "random_logit_similarity"} <= set(quick.discrimination)
    standard = resolve_config("standard")
    names = ("gridpg_2x2", "gridpg_3x3", "difull_2x2", "dipart_2x2", "focus", "randomisation_spearman",
             "random_logit_similarity")
    assert set(EvalSettings.from_config(standard["eval"]).discrimination) == set(names)
    assert [d.get("task", "classification") for d in standard["datasets"] if d["name"] == "scenes"] == [
        "segmentation", "detection"]
    assert any(m.endswith("@layer2") for m in standard["methods"])
    for name in names:
        assert METRICS[name].group == "discrimination" and METRICS[name].column and "method" in METRICS[name].needs
