"""eval.reliability = "full": MetaQuantus' perturbed passes (camzoo.bench.perturbation), their arrays in the store."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from camzoo.batchnorm_folding import fold_batchnorm
from camzoo.bench.evaluation import EvalSet, explain_block, score_block
from camzoo.bench.perturbation import (
    STRENGTHS,
    TESTS,
    array_name,
    draw_seed,
    perturb_model,
    perturbed_arrays,
    perturbed_block,
)
from camzoo.cli import main
from camzoo.methods import one_pass_groups
from camzoo.metrics import METRICS, EvalSettings

METHODS = ["gradcam", "eigencam", "random", "centre", "edges", "oracle"]


def tabulated(rows: dict) -> set[str]:
    """The metrics a cell's perturbed arrays must cover: per-image values, a table column, scope "map"."""
    return {name for name, (_, per_image) in rows.items()
            if per_image is not None and METRICS[name].column and METRICS[name].scope == "map"}


class ColourNet(nn.Module):
    """A fixed 4-class classifier by the colour of a square (R, G, B, dark): logits = fc(GAP(relu(bn(conv(x))))),
    with a BatchNorm (its running statistics must survive the model perturbation) and dense weights (a zero
    weight stays zero under x N(1, σ), so the large σ must have non-zeros to move)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.cam_hook = nn.Identity()
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            detectors = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]]) + 0.1
            self.conv.weight.copy_(detectors[:, :, None, None])
            self.conv.bias.fill_(0.05)
            self.fc.weight.copy_(torch.eye(4) * 10 + 1)
            self.fc.bias.fill_(0.1)
            self.bn.running_mean.fill_(0.01)
            self.bn.running_var.fill_(1.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cam_hook(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def colour_block(count: int = 16, size: int = 16) -> EvalSet:
    """A coloured square (the class) at a random place on a noisy background; the square is the mask."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(count) % 4
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]])[labels]
    images = torch.randn(count, 3, size, size, generator=generator) * 0.1
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for index, (top, left) in enumerate(torch.randint(0, size // 2, (count, 2), generator=generator).tolist()):
        images[index, :, top:top + size // 2, left:left + size // 2] = colours[index, :, None, None]
        masks[index, top:top + size // 2, left:left + size // 2] = True
    return EvalSet(images, labels, masks, None, (0.0,) * 3, (1.0,) * 3, ["red", "green", "blue", "dark"])


@pytest.fixture(scope="module")
def scored() -> dict:
    """ColourNet on 16 masked images: every method's unperturbed rows (a model memo holding the grids), then
    every perturbed pass (K = 2)."""
    model = ColourNet().eval()
    settings = EvalSettings(deletion_steps=2, substrates=(), chunk_size=16, grid_games=("gridpg_2x2",), grid_count=4,
                            grid_threshold=0.5, sensitivity=("random_logit_similarity",), reliability="full",
                            perturbation_draws=2)
    block = colour_block()
    scorer = fold_batchnorm(model)
    groups = one_pass_groups(METHODS)
    memo: dict = {}
    rows = {}
    for group in groups:
        explained, _ = explain_block(model, block, group, 8, torch.device("cpu"), warm_up=False)
        for method in group:
            maps = explained[method][0]
            rows[method] = score_block(scorer, block, method, maps, settings, memo, block.memo, None, None)
    state = copy.deepcopy(model.state_dict())
    grids = {key: value["images"].clone() for key, value in memo.items() if key[0] == "grids"}
    found = perturbed_block(model, scorer, block, groups, settings, batch_size=8, model_memo=memo)
    return {"model": model, "scorer": scorer, "block": block, "settings": settings, "rows": rows, "memo": memo,
            "state": state, "grids": grids, "found": found}


def test_arrays_pair_with_the_unperturbed_values(scored: dict) -> None:
    """(K, N) per tabulated metric, N that of the unperturbed per-image values (tables reduced to one value per
    image); the original model, its state and the unperturbed memo's grids untouched."""
    model, rows = scored["model"], scored["rows"]
    for name, value in scored["state"].items():
        assert torch.equal(model.state_dict()[name], value), name
    assert scored["grids"] and all(torch.equal(scored["memo"][key]["images"], images)
                                   for key, images in scored["grids"].items())
    assert {"gridpg_2x2", "random_logit_similarity", "max_box_acc_v2", "pxap", "deletion"} <= tabulated(rows["gradcam"])
    for method in METHODS:
        arrays = perturbed_arrays([scored["found"]], method, reference=rows[method])
        expected = {array_name(t, s, m) for t in TESTS for s in STRENGTHS for m in tabulated(rows[method])}
        expected |= {array_name(t, s, "kept") for t in TESTS for s in STRENGTHS}
        assert set(arrays) == expected, method
        for name in tabulated(rows[method]):
            count = rows[method][name][1].shape[0]
            for test in TESTS:
                for strength in STRENGTHS:
                    values = arrays[array_name(test, strength, name)]
                    assert values.shape == (2, count) and values.dtype == np.float32, (method, name)
                    assert np.isfinite(values).all()
    # the prediction: small noise keeps more of it than large noise, on the model and on the inputs
    arrays = perturbed_arrays([scored["found"]], "gradcam")
    for test in TESTS:
        small, large = arrays[array_name(test, "small", "kept")], arrays[array_name(test, "large", "kept")]
        assert small.shape == large.shape == (2,) and small.mean() > large.mean(), test
    assert arrays[array_name("model", "small", "kept")].min() >= 0.75


def test_every_method_gets_the_same_draws(scored: dict) -> None:
    """Draw k comes from (test, strength, k) only: the same perturbed model whoever asks, and a method's values do
    not depend on which other methods share its passes."""
    model, images = scored["model"], scored["block"].images
    seed = draw_seed("model", "small", 0)
    assert seed == draw_seed("model", "small", 0) != draw_seed("model", "small", 1) != draw_seed("input", "small", 1)
    with torch.no_grad():
        first, second = perturb_model(model, 0.01, seed)(images), perturb_model(model, 0.01, seed)(images)
        other = perturb_model(model, 0.01, draw_seed("model", "small", 1))(images)
    assert torch.equal(first, second) and not torch.equal(first, other)
    alone = perturbed_block(model, scored["scorer"], scored["block"], ["eigencam"], scored["settings"], batch_size=8,
                            model_memo=scored["memo"])
    together = perturbed_arrays([scored["found"]], "eigencam")
    by_itself = perturbed_arrays([alone], "eigencam")
    assert set(by_itself) == set(together)
    for name, values in together.items():
        np.testing.assert_array_equal(by_itself[name], values, err_msg=name)
    kept = [perturbed_arrays([scored["found"]], m)[array_name("input", "large", "kept")] for m in ("gradcam", "random")]
    np.testing.assert_array_equal(*kept)


DIGITS = """
preset = "custom"
seeds = [0]
kinds = ["baseline"]
backbones = ["resnet8"]
methods = ["gradcam", "eigencam", "random", "centre", "edges"]

[[datasets]]
name = "digits"
image_size = 32
options = {{train = {{num_images = 400}}, test = {{num_images = 32}}}}

[train]
epochs = 2
batch_size = 16
lr = 0.05

[eval]
images = 16
block_images = {block}
batch_size = 8
deletion_steps = 4
substrates = []
chunk_size = 32
gallery_images = 2
grid_games = ["gridpg_2x2"]
grid_threshold = 0.0
grid_count = 4
sensitivity = ["random_logit_similarity"]
reliability = "{reliability}"
perturbation_draws = 2
"""


def bench(tmp_path: Path, out: Path, reliability: str, block: int = 1000) -> None:
    config = tmp_path / f"{reliability}.toml"
    config.write_text(DIGITS.format(reliability=reliability, block=block), encoding="utf-8")
    command = ["bench", "--config", str(config), "--out", str(out), "--no-progress", "--no-html"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_a_full_bench_stores_perturbed_arrays_and_a_quick_one_none(tmp_path: Path, monkeypatch) -> None:
    """Every method cell of a "full" run holds (K, N) arrays for every tabulated map metric with per-image values
    (grid games and class tests included), in blocks as in one; a "quick" run does no perturbed pass at all."""
    import sqlite3

    import pandas as pd

    from camzoo.bench import perturbation
    from camzoo.bench.store import ResultsStore

    out = tmp_path / "out"
    bench(tmp_path, out, "full", block=12)  # two blocks: the grids and class tests from the first one only
    with ResultsStore(out) as store:
        (run,) = store.runs()
        rows = pd.DataFrame(store.results(run["run_id"], with_per_image=True))
        methods = rows[~rows["method"].isin(["model", "gallery"]) & (rows["seed"] >= 0)]
        assert set(methods["method"]) == set(METHODS) - {"oracle"}  # digits: no ground truth, no oracle
        for (seed, method), cell in methods.groupby(["seed", "method"]):
            expected = {name: per_image for name, per_image in zip(cell["metric"], cell["per_image"])
                        if name in tabulated({n: (0.0, p) for n, p in zip(cell["metric"], cell["per_image"])})}
            assert {"gridpg_2x2", "random_logit_similarity", "deletion", "insertion"} <= set(expected), method
            assert expected["deletion"].shape == (16,) and expected["gridpg_2x2"].shape == (16,)  # 4 grids x 4 cells
            assert expected["random_logit_similarity"].shape == (12,)  # the first block
            for test in TESTS:
                for strength in STRENGTHS:
                    for name, per_image in expected.items():
                        (array,) = [a for key, a in store.arrays(run["run_id"], array_name(test, strength, name),
                                                                  method=method) if key.seed == seed]
                        assert array.shape == (2, per_image.shape[0]), (method, name)
                    (kept,) = [a for key, a in store.arrays(run["run_id"], array_name(test, strength, "kept"),
                                                            method=method) if key.seed == seed]
                    assert kept.shape == (2,) and ((0 <= kept) & (kept <= 1)).all()

    # the report turns them into the cards' MetaQuantus fields: MC for every column that ranks (and every
    # method column with per-image values), each of the four in [0, 1]
    cards = pd.read_csv(out / "reliability.csv")
    maps = cards[~cards["metric"].str.startswith("stability_") & (cards["methods"] >= 2)]
    assert set(cards.loc[cards["verdict"] == "rank", "metric"]) <= set(maps["metric"])
    assert {"deletion", "gridpg_2x2", "random_logit_similarity"} <= set(maps["metric"])
    fields = ["iac_nr", "iac_ar", "iec_nr", "iec_ar", "mc", "mc_input", "mc_model"]
    assert maps[fields].notna().all().all() and ((maps[fields] >= 0) & (maps[fields] <= 1)).all().all()
    np.testing.assert_allclose(maps["mc"], maps[["iac_nr", "iac_ar", "iec_nr", "iec_ar"]].mean(axis=1), atol=1e-12)

    def refuse(*args, **kwargs):
        raise AssertionError("a quick run must not perturb anything")

    monkeypatch.setattr(perturbation, "perturbed_block", refuse)
    monkeypatch.setattr(perturbation, "perturb_model", refuse)
    bench(tmp_path, out, "quick")  # the same store: the models are reused, not trained again
    with sqlite3.connect(out / "results.sqlite") as db:
        runs = [r for (r,) in db.execute("SELECT DISTINCT run_id FROM arrays")]
        quick = [r for r in runs if r != run["run_id"]]
        assert len(quick) == 1
        names = [n for (n,) in db.execute("SELECT name FROM arrays WHERE run_id = ?", quick)]
    assert "maps" in names and not any(n.startswith("perturbed_") for n in names)
