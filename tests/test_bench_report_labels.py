"""What a report says a number is of: a ``[[models]]`` checkpoint named by its file (never "seed 0"), a
grid game that no model could play said so with the threshold and the best confidence reached, and a
gallery whose labels never overprint one another or its title."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import camzoo
from camzoo.bench import report
from camzoo.bench.grid_status import GridPlay, grid_status
from camzoo.bench.labels import checkpoint_files, model_namer
from camzoo.bench.plots import LABEL_CHARACTERS, gallery_figure, pyplot
from camzoo.bench.record import RunRecord
from camzoo.bench.store import ResultsStore
from camzoo.cli import main
from camzoo.models.checkpoint import save_model
from helpers import write_folder

NAMES = ("first_run.pt", "later/model_v2.pt")  # two files, named nothing like seeds
THRESHOLD = 0.99  # no random-init model reaches it


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> dict:
    """``camzoo bench --checkpoint first_run.pt --checkpoint later/model_v2.pt --data ROOT`` on random-init
    camzoo ResNet-8s (4 classes, 32 px, 8 images; a few seconds), with report.html."""
    root = tmp_path_factory.mktemp("labels")
    photos = write_folder(root / "photos")
    paths = []
    for seed, name in enumerate(NAMES):
        torch.manual_seed(seed)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        paths.append(save_model(camzoo.build_model("baseline", "resnet8", num_classes=4, image_size=32).eval(),
                                root / name))
    lighter = root / "lighter.toml"
    lighter.write_text(f"[eval]\ngame_images = 4\nsubstrates = []\nbatch_size = 8\ngrid_threshold = {THRESHOLD}\n",
                       encoding="utf-8")
    out = root / "out"
    result = CliRunner().invoke(main, ["bench", "--no-progress", "--checkpoint", str(paths[0]), "--checkpoint",
                                       str(paths[1]), "--data", str(photos), "--methods", "gradcam", "--images", "8",
                                       "--image-size", "32", "--out", str(out), "--config", str(lighter)])
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "paths": paths}


def page_data(out: Path) -> dict:
    return json.loads(re.search(r"const DATA = (.*?);\n", (out / "report.html").read_text(encoding="utf-8"), re.S).group(1))


def stored(out: Path, metric: str) -> dict[int, float]:
    """seed -> the value of a per-model metric every method cell of that model stored (the same in each)."""
    with ResultsStore(out) as store:
        record = RunRecord.from_store(store)
        values = {}
        for row in store.results(record.run_id):
            if row["metric"] == metric:
                assert values.setdefault(row["seed"], row["value"]) == row["value"]
    return values


def test_summary_and_report_html_name_the_checkpoint_files(own_run):
    out = own_run["out"]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    line = next(line for line in summary.splitlines() if line.startswith("- checkpoints"))
    assert "`first_run.pt`, `model_v2.pt`" in line and "seed 0" not in line
    assert summary in own_run["output"]  # the terminal shows the same
    browser = page_data(out)["groups"][0]["browser"]
    assert [model["label"] for model in browser["models"]] == ["first_run.pt", "model_v2.pt"]
    assert sorted(browser["labels"].values()) == ["first_run.pt", "model_v2.pt"]


def test_the_gallery_titles_each_column_by_its_checkpoint(own_run, monkeypatch, tmp_path):
    drawn = {}

    def spy(*args, **kwargs):
        drawn["figure"] = figure = gallery_figure(*args, **kwargs)
        return figure

    monkeypatch.setattr(report, "gallery_figure", spy)
    with ResultsStore(own_run["out"]) as store:
        record = RunRecord.from_store(store)
        assert report.gallery_plot(store, record, "annotated", "first_run", tmp_path / "g.png").stat().st_size > 0
    texts = [text.get_text() for text in drawn["figure"].axes[0].texts]
    assert texts.count("first_run.pt") == texts.count("model_v2.pt") > 0
    assert not any(text.startswith("seed") for text in texts)


def test_no_grid_qualified_says_the_threshold_and_the_best_confidence(own_run):
    out = own_run["out"]
    assert set(stored(out, "grid_qualified").values()) == {0.0}  # the case under test: no image qualified
    best = stored(out, "grid_best_confidence")
    assert len(best) == 2 and all(0 < value < THRESHOLD for value in best.values())
    said = [f"{Path(name).name}: no grid qualified (threshold {THRESHOLD:g}, best confidence {best[seed]:.2f})"
            for seed, name in enumerate(NAMES)]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    section = summary.split("— discrimination")[1].split("### ")[0]
    assert all(line in section for line in said), section
    assert "GridPG 2x2, DiFull 2x2: no value" in section
    assert re.search(r"\| checkpoint \| gradcam \| – \| – \|", section)  # the empty columns are shown empty
    notes = next(table["notes"] for table in page_data(out)["groups"][0]["tables"] if table["name"] == "discrimination")
    assert any(all(line in note for line in said) for note in notes)
    assert "no grid qualified (threshold 0.99, best confidence" in (out / "summary.tex").read_text(encoding="utf-8")


def test_grid_status_says_which_model_played_no_grid_and_why():
    name = model_namer({}, with_kind=True)
    played = GridPlay("baseline", "default", 0, {2: 16}, 40, 1.0)
    assert grid_status([played], 0.9, "resnet8", name) is None
    few_classes = GridPlay("baseline", "default", 1, {2: 16, 3: 0}, 5, 0.97)
    none_correct = GridPlay("lfi", "default", 0, {2: 0}, 0, 0.0)
    line = grid_status([played, few_classes, none_correct], 0.9, "resnet8", name, ["GridPG 3x3"])
    assert line.startswith("GridPG 3x3: no value.")
    assert "baseline seed 1: no 3×3 grid (5 images qualified at threshold 0.9, of fewer than 9 classes)" in line
    assert "lfi seed 0: no grid qualified (threshold 0.9, no image classified correctly)" in line
    assert "baseline seed 0" not in line  # it played every grid


def test_checkpoint_names_are_basenames_and_paths_where_two_share_one():
    config = {"models": [{"name": "resnet18", "checkpoints": ["runs/a/model.pt", "runs/b/model.pt", "c.pt"]},
                         {"label": "vit", "checkpoints": ["vit.pt", "vit.pt"]}]}
    assert checkpoint_files(config) == {("resnet18", 0): "runs/a/model.pt", ("resnet18", 1): "runs/b/model.pt",
                                        ("resnet18", 2): "c.pt", ("vit", 0): "vit.pt", ("vit", 1): "vit.pt #2"}
    name = model_namer(config)
    assert name("resnet18", "checkpoint", "default", 2) == "c.pt"
    assert name("resnet18", "baseline", "wide", 1) == "seed 1 wide"  # a trained model keeps its seed


def overlaps(figure) -> list[tuple[str, str]]:
    """Pairs of drawn texts (and the tiles' mosaic, "tiles") whose boxes overlap by more than half a pixel
    each way."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axis = figure.axes[0]
    texts = [text for text in [*axis.texts, axis.title] if text.get_text()]
    boxes = [(text.get_text(), text.get_window_extent(renderer)) for text in texts]
    boxes += [("tiles", image.get_window_extent(renderer)) for image in axis.images]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0) > 0.5
            and min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0) > 0.5]


@pytest.mark.parametrize("images, side, models, class_name, model_name, rows", [
    (1, 32, 1, "cat", "seed 0", 1),  # one column: the old layout put the class on the title
    (1, 224, 1, "a rather long class name for one column", "a_long_checkpoint_name_v2.pt", 3),
    (5, 64, 2, "coffee", "runs/2024-01-01/model_final.pt", 2),
    (8, 48, 3, "n02123045 tabby, tabby cat", "seed 0", 4),
])
def test_gallery_labels_never_overlap(images, side, models, class_name, model_name, rows):
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 255, (images, side, side, 3), dtype=np.uint8)
    columns = [("default", seed) for seed in range(models)]
    kinds = [("baseline", f"method{r}") for r in range(rows)]
    maps = {(kind, method, variant, seed): rng.random((images, side, side), dtype=np.float32)
            for kind, method in kinds for variant, seed in columns}
    figure = gallery_figure(pictures, [f"{class_name} {g}" for g in range(images)], kinds, columns,
                            [f"{model_name}{seed}" for _, seed in columns], maps,
                            "annotated / resnet18: the same test images, every method and model")
    try:
        assert not overlaps(figure)
        texts = [text.get_text() for text in figure.axes[0].texts]
        flat = ["".join(text.split()) for text in texts]  # wrapped class names, whole again
        assert all("".join(f"{class_name} {g}".split()) in flat for g in range(images))
        label = f"{model_name}0"  # a long one keeps its end, which tells two paths apart
        assert texts.count(label if len(label) <= LABEL_CHARACTERS else "…" + label[1 - LABEL_CHARACTERS:]) == images
    finally:
        pyplot().close(figure)
