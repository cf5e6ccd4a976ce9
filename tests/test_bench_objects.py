"""The benchmark's object tracks: a segmenter and a detector trained on "scenes", each object explained in
turn and scored against the scene's other objects (docs/benchmark.md, "Segmentation and detection: the
object track")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from camzoo.bench.config import resolve_config
from camzoo.bench.objects import load_object_set
from camzoo.bench.plan import ConfigError, DatasetSpec, build_plan
from camzoo.cli import main
from camzoo.data import load
from camzoo.targets import BoxTarget

# the documented [[datasets]] entry (docs/benchmark.md), at a size a test affords
OBJECT_GRID = """
preset = "custom"
seeds = [0, 1]
backbones = ["resnet8"]
methods = ["gradcam", "eigencam", "random", "centre", "oracle"]

[[datasets]]
name = "scenes"
task = "{task}"
root = "{cache}"
image_size = 32
options = {{train = {{num_images = 256}}, test = {{num_images = 24}}}}

[train]
epochs = 1
batch_size = 32
lr = 0.2

[eval]
images = 12
batch_size = 16
gallery_images = 2
"""


KIND = {"segmentation": "segmenter", "detection": "detector"}
MODEL_SCORES = {"segmentation": ["pixel_accuracy_mean", "miou_mean"], "detection": ["box_ap50_mean"]}


@pytest.fixture(scope="module", params=["segmentation", "detection"])
def object_run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"objects-{request.param}")
    config = root / "objects.toml"
    config.write_text(OBJECT_GRID.format(cache=root / "cache", task=request.param), encoding="utf-8")
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(root / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    return root / "out", request.param


def test_the_object_track_writes_summary_rows_with_the_oracle_above_random(object_run):
    out, task = object_run
    summary = pd.read_csv(out / "summary.csv")
    rows = summary.set_index("method")
    assert set(summary["kind"]) == {KIND[task]}, "kinds left out: the kinds of the dataset's task"
    assert set(summary["dataset"]) == {f"scenes-{task}"}, "the object track's rows name their task"
    assert {"gradcam", "eigencam", "random", "centre", "oracle"} <= set(rows.index)
    assert rows.loc["oracle", "object_share_mean"] == pytest.approx(1.0)
    assert rows.loc["oracle", "object_share_mean"] > rows.loc["random", "object_share_mean"]
    assert rows.loc["oracle", "pointing_game_mean"] > rows.loc["random", "pointing_game_mean"]
    assert summary[MODEL_SCORES[task]].notna().all().all()
    assert summary["deletion_mean"].isna().all(), "the maps are scored alone: no game queries the segmenter"
    assert "Object share" in (out / "summary.md").read_text(encoding="utf-8")


def test_a_map_blind_to_the_object_asked_for_scores_the_chance_share_exactly(object_run):
    """Per image, the shares of one map over its objects sum to 1, and so do their area ratios: a map
    that does not depend on the object asked for (the random and centre controls, positive everywhere)
    has a mean object share equal to the mean chance share, whatever it looks like."""
    out, _ = object_run
    rows = pd.read_csv(out / "summary.csv").set_index("method")
    for control in ("random", "centre"):
        assert rows.loc[control, "object_share_mean"] == pytest.approx(rows.loc[control, "object_share_chance_mean"],
                                                                       abs=1e-6)


def test_every_object_of_every_image_is_one_pair(tmp_path):
    split = load("scenes", "test", root=str(tmp_path), image_size=32, num_images=6)
    pairs = load_object_set(split, 4, torch.device("cpu"))
    objects = split.get_objects(torch.arange(4))
    assert len(pairs.images) == int((objects["object_labels"] >= 0).sum())
    assert not (pairs.masks & pairs.other_masks).any() and pairs.masks.flatten(1).any(1).all()
    assert [t.category for t in pairs.targets.targets] == (pairs.labels + 1).tolist()  # class 0: background
    union = pairs.masks | pairs.other_masks  # each pair's objects are all of its image's objects
    instances = objects["instances"][np.repeat(np.arange(4), (objects["object_labels"] >= 0).sum(1).numpy())]
    assert torch.equal(union, instances > 0)


def test_a_detection_track_explains_each_object_by_its_box(tmp_path):
    """The detection track's pairs: BoxTarget(class + 1, the object's box), silent on a miss."""
    split = load("scenes", "test", root=str(tmp_path), image_size=32, num_images=3)
    pairs = load_object_set(split, 3, torch.device("cpu"), task="detection")
    targets = pairs.targets.targets
    assert all(isinstance(t, BoxTarget) and not t.warn for t in targets)
    assert torch.equal(torch.stack([t.box.float() for t in targets]), pairs.boxes[:, 0])
    assert [t.category for t in targets] == (pairs.labels + 1).tolist()


def test_a_task_without_its_kind_or_without_objects_is_a_config_error():
    with pytest.raises(ConfigError, match="none of the kinds"):
        build_plan(resolve_config(overrides={"kinds": ["baseline"], "datasets": [
            {"name": "scenes", "task": "segmentation", "options": {"test": {"num_images": 4}}}]}))
    with pytest.raises(ConfigError, match="no per-object masks"):
        build_plan(resolve_config(overrides={"kinds": ["segmenter"], "datasets": [
            {"name": "shapes", "task": "segmentation"}]}))
    for task in ("segmentation", "classification"):  # the same cells twice: the second would be taken as done
        _, problems = DatasetSpec.parse_all([{"name": "scenes", "task": task}, {"name": "scenes", "task": task}])
        assert any("listed twice" in problem for problem in problems)
    both = DatasetSpec.parse_all([{"name": "scenes", "task": "segmentation"}, {"name": "scenes", "task": "detection"}])
    assert not both[1] and [spec.key for spec in both[0]] == ["scenes-segmentation", "scenes-detection"]
    with pytest.raises(ConfigError, match="task must be one of"):
        build_plan(resolve_config(overrides={"datasets": [{"name": "scenes", "task": "counting"}]}))


def test_the_estimate_probes_the_object_track_without_problems(tmp_path):
    """--check's estimate explains a segmenter's probe images with their object targets (classes 1..K:
    0 is the background) and charges the track no grids."""
    from camzoo.bench.estimate import calibrate, job_cost

    config = tmp_path / "seg.toml"
    config.write_text(OBJECT_GRID.format(cache=tmp_path / "cache", task="segmentation"), encoding="utf-8")
    plan = build_plan(resolve_config(file=config))
    calibration = calibrate(plan, budget_s=0.0)
    assert not calibration.problems, calibration.problems
    costs = [job_cost(plan, calibration, job) for job in plan.jobs]
    assert all(cost.grids == 0 and cost.train > 0 and cost.explain > 0 for cost in costs)
