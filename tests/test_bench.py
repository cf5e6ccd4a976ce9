"""The benchmark harness end to end: a tiny grid, its store and outputs, and resuming after a kill."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from camzoo.bench.config import PRESETS, resolve_config, run_id
from camzoo.bench.report import write_report
from camzoo.bench.plan import build_plan
from camzoo.bench.runner import BenchRunner
from camzoo.bench.store import ResultsStore
from camzoo.cli import main
from camzoo.methods import method_names, reference_method_names
from camzoo.metrics import lfi_script_maps, pairwise_stability
from forked import Forked, camzoo_main
from helpers import tiny_config, write_cifar10


# baseline: model + gradcam + eigencam + 2 controls; lfi: model + the three methods + 2 controls; per
# seed. Then stability per (kind, method) and the gallery cell.
EXPECTED_CELLS = 2 * (5 + 6) + (4 + 5) + 1


def cell_counts(out: Path) -> pd.DataFrame:
    with sqlite3.connect(out / "results.sqlite") as db:
        return pd.read_sql("SELECT * FROM cells", db)


@dataclass(frozen=True)
class TinyGrid:
    """The tiny grid run once for the tests below: its folder, output directory and CLI result."""

    base: Path
    out: Path
    exit_code: int
    output: str


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory: pytest.TempPathFactory) -> TinyGrid:
    """``camzoo bench`` on :data:`helpers.TINY_GRID`, once for this file's end-to-end tests (each checks
    one part of it, so one failure does not hide the rest)."""
    base = tmp_path_factory.mktemp("tiny-grid")
    out = base / "out"
    result = CliRunner().invoke(main, ["bench", "--config", str(tiny_config(base)), "--out", str(out), "--no-progress"])
    return TinyGrid(base, out, result.exit_code, result.output)


def finished(grid: TinyGrid) -> Path:
    """The grid's output directory, once the run is known to have finished."""
    assert grid.exit_code == 0, grid.output
    return grid.out


def stored_rows(out: Path) -> tuple[pd.DataFrame, dict]:
    with ResultsStore(out) as store:
        (run,) = store.runs()
        return pd.DataFrame(store.results(with_per_image=True)), run


@pytest.mark.slow
def test_tiny_grid_finishes_and_prints_its_table(tiny_grid):
    finished(tiny_grid)
    assert "| Kind | Method |" in tiny_grid.output  # the final table goes to the terminal


@pytest.mark.slow
def test_tiny_grid_writes_every_cell_once_with_its_provenance(tiny_grid):
    out = finished(tiny_grid)
    cells = cell_counts(out)
    assert len(cells) == EXPECTED_CELLS
    assert not cells.duplicated(["dataset", "backbone", "kind", "variant", "seed", "method"]).any()
    rows, run = stored_rows(out)
    assert run["provenance"]["torch"] and run["provenance"]["device"].startswith("cpu")
    assert set(rows["run_id"]) == {run["run_id"]}


@pytest.mark.slow
def test_tiny_grid_stores_every_metric_with_per_image_values(tiny_grid):
    rows, _ = stored_rows(finished(tiny_grid))
    lfi_attention = rows[(rows["kind"] == "lfi") & (rows["method"] == "attention") & (rows["seed"] == 0)]
    metrics = set(lfi_attention["metric"])
    assert {"deletion", "insertion", "pointing_game", "pointing_game_class_mean", "energy_pointing_game_mask",
            "energy_pointing_game_box", "max_box_acc_v2", "pxap", "srg_zeros", "ms_per_image"} <= metrics
    deletion = lfi_attention[lfi_attention["metric"] == "deletion"].iloc[0]
    assert deletion["per_image"].shape == (16,) and abs(deletion["per_image"].mean() - deletion["value"]) < 1e-6
    assert rows[rows["metric"] == "deletion_curve"].iloc[0]["per_image"].shape == (16, 5)


@pytest.mark.slow
def test_tiny_grid_stability_cells_and_the_lfi_compatible_iou(tiny_grid):
    out = finished(tiny_grid)
    rows, run = stored_rows(out)
    stability = rows[(rows["seed"] == -1) & (rows["metric"] == "stability_iou")]
    assert len(stability) == 9 and stability["value"].between(0, 1).all()
    assert stability.iloc[0]["per_image"].shape == (1, 16)  # one seed pair x the images
    # the LFI-CAM-compatible IoU reads what the official script reads: the raw attention resized, not
    # the stored normalised maps (metrics.lfi_script_maps)
    with ResultsStore(out) as store:
        raw = [torch.from_numpy(a) for _, a in store.arrays(run["run_id"], "raw_maps", kind="lfi", method="attention")]
    assert len(raw) == 2 and raw[0].shape[0] == 16 and raw[0].shape[-1] < 32  # the layer's resolution
    expected = pairwise_stability([lfi_script_maps(r, (32, 32), unit_scale=True) for r in raw], lfi_compat=True)
    compat = rows[(rows["seed"] == -1) & (rows["kind"] == "lfi") & (rows["method"] == "attention")
                  & (rows["metric"] == "stability_iou_lfi_compat")].iloc[0]
    assert compat["value"] == pytest.approx(float(expected["mean"]["iou"]), abs=1e-6)


@pytest.mark.slow
def test_tiny_grid_summary_csv_has_controls_intervals_and_normalised_scores(tiny_grid):
    out = finished(tiny_grid)
    for name in ("summary.md", "summary.csv", "pairwise.csv", "summary.tex", "curves_shapes_resnet8.png",
                 "gallery_shapes_resnet8.png"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 9 and {"top1_mean", "deletion_mean", "deletion_ci_low", "deletion_ci_high", "deletion_norm",
                                  "stability_iou_mean", "ms_per_image_mean", "reference"} <= set(summary)
    assert set(summary[summary["reference"]]["method"]) == {"random", "oracle"}
    assert not summary[summary["reference"]][[c for c in summary if c.endswith("_best")]].any().any()
    finite = summary.dropna(subset=["deletion_ci_low"])
    assert ((finite["deletion_ci_low"] <= finite["deletion_mean"] + 1e-9)
            & (finite["deletion_mean"] <= finite["deletion_ci_high"] + 1e-9)).all()
    oracle = summary[summary["method"] == "oracle"]
    assert (oracle["pointing_game_norm"].round(9) == 1).all()  # the oracle is its own ceiling
    # one epoch: oracle and random delete alike, so no normalised deletion (it would be noise / noise)
    gap = (summary.set_index(["kind", "method"])["deletion_mean"].unstack()[["oracle", "random"]].diff(axis=1).abs())
    assert summary[summary["method"] == "gradcam"]["deletion_norm"].isna().all() == bool((gap.iloc[:, 1] < 0.02).all())
    assert summary["srg_mean_mean"].isna().all()  # not asked for, not computed
    assert summary[summary["reference"]]["srg_zeros_mean"].isna().all()  # controls skip the substrates
    assert summary[~summary["reference"]]["srg_road_mean"].notna().all()


@pytest.mark.slow
def test_tiny_grid_pairwise_tests_agree_with_the_letters(tiny_grid):
    out = finished(tiny_grid)
    summary, pairwise = pd.read_csv(out / "summary.csv"), pd.read_csv(out / "pairwise.csv")
    assert {"metric", "a", "b", "median_difference", "p", "p_holm", "significant"} <= set(pairwise)
    assert_letters_agree_with_pairwise(summary, pairwise)
    assert not pairwise["a"].str.contains("random|oracle").any() and (pairwise["p_holm"] >= pairwise["p"] - 1e-12).all()


@pytest.mark.slow
def test_tiny_grid_summary_markdown_and_latex(tiny_grid):
    out = finished(tiny_grid)
    assert "\\begin{tabular}" in (out / "summary.tex").read_text()
    markdown = (out / "summary.md").read_text()
    assert markdown.split("\n### ")[1].startswith("shapes / resnet8 — leaderboard")  # summary.md starts with it
    assert "| Deletion AUC ↓" in markdown and "Insertion AUC ↑" in markdown and "(label, 4 steps)" not in markdown
    assert "Deletion/insertion: label, 4 steps." in markdown  # the protocol: a header line, not a column name
    assert "*random* (control)" in markdown and "normalised (0 = random, 1 = oracle)" in markdown
    assert "SRG zeros ↑" in markdown and "SRG road ↑" in markdown and "Rank agreement of the 5 method rows" in markdown
    assert "SRG mean" not in markdown  # not asked for, not computed
    assert "fingerprint (sha256 of pixels and labels): shapes `" in markdown


@pytest.mark.slow
def test_tiny_grid_benchmark_scripts_read_its_store(tiny_grid, benchmark_script):
    out = finished(tiny_grid)
    # the paper-claims study reads the same store (this grid has no ABN: it says so, no traceback)
    claims = benchmark_script("paper_claims").claims(out)
    assert "| lfi/attention |" in claims and "| baseline/gradcam |" in claims and "LFI-CAM minus baseline" in claims
    assert "| abn/attention |" not in claims
    # the cost script runs on this directory (8 images: a smoke test, not a measurement)
    assert benchmark_script("verdict_cost").main([str(out), "--images", "8"]) == 0
    # the quick preset's separations, checked on this run: the oracle must beat random in every check
    from camzoo.bench import load

    found = benchmark_script("quick_separations").checks(load(out))
    listed = {(c.group, c.better, c.worse, c.metric) for c in found}
    for kind in ("baseline", "lfi"):
        group = f"shapes / resnet8 / {kind}"
        assert {(group, "oracle", "random", m) for m in ("deletion", "insertion", "pointing_game", "pxap")} <= listed
        assert {(group, m, "random", "deletion") for m in ("gradcam", "eigencam")} <= listed
    assert all(c.right_way for c in found if c.better == "oracle") and not any("abn" in c.group for c in found)


@pytest.mark.slow
def test_tiny_grid_report_needs_only_the_store_and_a_rerun_does_nothing(tiny_grid):
    """Last of the tiny-grid tests: it removes the run's models and data to prove neither is read."""
    import shutil

    out = finished(tiny_grid)
    markdown = (out / "summary.md").read_text()
    for name in ("summary.md", "summary.csv", "pairwise.csv", "summary.tex"):
        (out / name).unlink()
    shutil.rmtree(out / "models")
    shutil.rmtree(tiny_grid.base / "cache")
    # a report killed while writing left its hidden temp file: the next report removes it (a younger one,
    # maybe another writer's, stays)
    stale, fresh = out / ".gallery_x.png.abc123.tmp", out / ".summary.md.def456.tmp"
    stale.write_bytes(b"")
    fresh.write_bytes(b"")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    rebuilt = CliRunner().invoke(main, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert (out / "summary.md").read_text() == markdown
    assert not stale.exists() and fresh.exists()
    fresh.unlink()

    # a rerun finds everything finished: nothing is trained or scored again
    again = CliRunner().invoke(main, ["bench", "--config", str(tiny_config(tiny_grid.base)), "--out", str(out),
                                      "--no-progress"])
    assert again.exit_code == 0, again.output
    assert len(cell_counts(out)) == EXPECTED_CELLS
    assert not (out / "models").exists(), "finished cells must not retrain their models"


@pytest.mark.slow
def test_interrupted_run_resumes_with_every_cell_once(tmp_path):
    config = tiny_config(tmp_path)  # one kind: two model jobs, a kill after the first (resuming is kind-blind)
    config.write_text(config.read_text(encoding="utf-8").replace('kinds = ["baseline", "lfi"]', 'kinds = ["baseline"]'),
                      encoding="utf-8")
    planned = build_plan(resolve_config(None, config)).cells
    assert planned == 2 * 5 + 4 + 1  # per seed the model, 2 methods, 2 controls; stability of 4 rows; the gallery
    out = tmp_path / "out"
    command = ["bench", "--config", str(config), "--out", str(out), "--no-progress", "--no-html"]
    process = Forked(camzoo_main, command, log=tmp_path / "first.log")  # a process of its own, to SIGKILL
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            store = out / "results.sqlite"
            if store.exists():
                try:
                    done = len(cell_counts(out))
                except (sqlite3.OperationalError, pd.errors.DatabaseError):
                    done = 0
                if done >= 3:  # partway: the gallery and a first model's cells are in
                    break
            time.sleep(0.2)
        assert process.poll() is None, "the run finished before it could be interrupted: " + \
            (tmp_path / "first.log").read_text(encoding="utf-8")[-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    partial = len(cell_counts(out))
    assert 3 <= partial < planned
    rerun = CliRunner().invoke(main, command)  # the same command, in this process
    assert rerun.exit_code == 0, rerun.output
    cells = cell_counts(out)
    assert len(cells) == planned
    assert not cells.duplicated(["dataset", "backbone", "kind", "variant", "seed", "method"]).any()
    with sqlite3.connect(out / "results.sqlite") as db:
        duplicates = db.execute(
            "SELECT COUNT(*) FROM (SELECT COUNT(*) AS n FROM results GROUP BY run_id, dataset, backbone, kind, "
            "variant, seed, method, metric HAVING n > 1)"
        ).fetchone()[0]
    assert duplicates == 0


def test_print_config_round_trips(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--preset", "quick", "--print-config"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "resolved.toml"
    path.write_text(result.output, encoding="utf-8")
    assert resolve_config(None, path) == resolve_config("quick")


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('kinds = ["baseline", "gan"]\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["bench", "--config", str(bad), "--print-config"])
    assert result.exit_code != 0 and "kinds must be a non-empty subset" in result.output
    bad.write_text("sedes = [0]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown config key 'sedes'"):
        resolve_config("quick", bad)
    bad.write_text("seeds = [0, \n", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid TOML"):
        resolve_config("quick", bad)
    with pytest.raises(ValueError, match="unknown method"):
        resolve_config("quick", overrides={"methods": ["gradcam", "magic"]})
    with pytest.raises(ValueError, match="unknown method selector '@magic'"):
        resolve_config("quick", overrides={"methods": ["@magic"]})
    with pytest.raises(ValueError, match="train.seed is set by the grid"):
        build_plan(resolve_config("quick", overrides={"train": {"seed": 3}}))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_runs_one_tiny_cell(preset, tmp_path):
    """Each preset as shipped (its dataset, first backbone, training recipe and eval protocol), made
    tiny by overrides: a preset that cannot start fails here, not on a user's GPU."""
    config = resolve_config(preset)
    dataset = dict(config["datasets"][0])
    if dataset["name"] == "cifar10":  # the paper preset reads a local CIFAR-10 in the official layout
        write_cifar10(tmp_path / "data", per_batch=6)
        dataset["root"] = str(tmp_path / "data" / "cifar-10-batches-py")
    else:
        dataset["root"] = str(tmp_path / "cache")
        dataset["options"] = {**dataset["options"], "train": {"num_images": 32}, "test": {"num_images": 8}}
    tiny = resolve_config(preset, overrides={
        "seeds": [0], "kinds": ["baseline"], "backbones": config["backbones"][:1], "datasets": [dataset],
        "methods": ["gradcam", "random"], "train": {"epochs": 1, "batch_size": 16},
        # the standard preset's reliability = "full" re-scores every cell 4 x K times (13 s more here even with
        # K = 1): tests/test_bench_perturbation.py runs that path on a smaller model, with grids and blocks
        "eval": {"images": 8, "batch_size": 8, "deletion_steps": 4, "substrates": ["zeros"], "gallery_images": 1,
                 "grid_count": 4, "randomisation_draws": 1, "reliability": "quick"},
    })
    out = tmp_path / "out"
    BenchRunner(build_plan(tiny, "cpu"), out, progress=False).run()
    assert {"summary.md", "summary.csv", "pairwise.csv"} <= set(write_report(out))
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["method"]) == ["gradcam", "random"] and summary["deletion_mean"].notna().all()
    # one seed: no significance letters, and the report says why
    assert summary[[c for c in summary if c.endswith("_group")]].isna().all().all()
    assert "none in this run: one model per kind" in (out / "summary.md").read_text()


def test_the_gpu_presets_run_the_whole_zoo():
    from camzoo.methods.registry import method_names

    from camzoo.methods import split_layer

    for preset in ("standard", "paper"):  # every registered method, controls last
        methods = [m for m in resolve_config(preset)["methods"] if split_layer(m)[1] is None]
        assert sorted(methods) == method_names() and len(methods) == len(method_names())
        assert {m for m in methods[-4:]} == set(reference_method_names())


def test_the_quick_preset_runs_the_gradient_family_in_one_pass():
    from camzoo.methods import get_method, one_pass_groups, shares_one_pass

    methods = resolve_config("quick")["methods"]
    one_pass = [m for m in method_names() if shares_one_pass(get_method(m))]
    assert {"gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "eigengradcam"} <= set(one_pass)
    assert set(one_pass) | set(reference_method_names()) | {"attention"} == set(methods)
    assert [m for m in methods if m in one_pass] in one_pass_groups(methods)  # one forward and backward for all


def test_committed_configs_resolve():
    for path in sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "configs").glob("*.toml")):
        config = resolve_config(None, path)
        assert config["seeds"] and config["methods"], path


def test_run_identity_ignores_where_it_runs():
    config = resolve_config("quick")
    assert run_id(config) == run_id({**config, "device": "cuda"})
    assert run_id(config) != run_id({**config, "seeds": [0, 1, 2]})


def test_report_on_a_directory_without_a_store(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "holds no results store" in result.output


def test_missing_dataset_root_is_a_clear_error(tmp_path):
    config = tmp_path / "paper.toml"
    config.write_text(f'preset = "paper"\n[[datasets]]\nname = "cifar10"\nroot = "{tmp_path / "nowhere"}"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code != 0
    assert "does not exist" in result.output and "nothing was run or written" in result.output
    assert "fix the config and rerun" in result.output


def test_the_bench_explains_the_gradient_family_in_one_pass():
    """One forward per batch for every gradient-family method of a job, the same maps as one at a time."""
    from camzoo.bench.evaluation import EvalSet, explain_all, explain_group
    from camzoo.methods import one_pass_groups
    from camzoo.models import build_model

    assert one_pass_groups(["gradcam", "random", "eigencam", "attention", "gradcampp"]) == [
        ["gradcam", "eigencam", "gradcampp"], ["random"], ["attention"]]
    torch.manual_seed(0)
    model = build_model("lfi", "resnet8", num_classes=3).eval()
    images = torch.randn(6, 3, 32, 32)
    eval_set = EvalSet(images, torch.tensor([0, 1, 2, 0, 1, 2]), None, None, (0.0,) * 3, (1.0,) * 3, ["a", "b", "c"])
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        explained, _ = explain_group(model, eval_set, ["gradcam", "eigencam", "gradcampp"], 4, torch.device("cpu"))
    finally:
        handle.remove()
    assert len(forwards) == 3  # the untimed warm-up batch, then two batches of 4 and 2 images
    for method, (maps, raw) in explained.items():
        alone, alone_raw, _ = explain_all(model, eval_set, method, 4, torch.device("cpu"))
        torch.testing.assert_close(maps, alone)
        torch.testing.assert_close(raw, alone_raw)
        assert maps.shape == (6, 32, 32) and float(maps.amax()) > 0


def assert_letters_agree_with_pairwise(summary: pd.DataFrame, pairwise: pd.DataFrame) -> None:
    """Every tested pair of a column: the two rows share a letter exactly when the test is not significant."""
    checked = 0
    for metric, tests in pairwise.groupby("metric"):
        column = f"{metric}_group"
        assert column in summary, column
        if metric == "top1":  # a model-level column compares kinds: every row of a kind has its letters
            letters = summary.groupby("kind")[column].first().to_dict()
        else:
            letters = {f"{r.kind}/{r.method}": r[column] for _, r in summary.iterrows()}
        for _, test in tests.iterrows():
            a, b = str(letters[test["a"]]), str(letters[test["b"]])
            assert a != "nan" and b != "nan", (metric, test["a"], test["b"])
            assert bool(set(a) & set(b)) == (not test["significant"]), (metric, test["a"], a, test["b"], b)
            checked += 1
    assert checked > 0


def test_compact_letters_agree_with_the_tests_in_both_directions():
    from camzoo.bench.stats import compact_letters

    rng = np.random.default_rng(0)
    for trial in range(200):
        rows = [f"r{i}" for i in range(int(rng.integers(2, 12)))]
        pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
        significant = {pair for pair in pairs if rng.random() < rng.random()}
        letters = compact_letters(rows, sorted(significant))
        for a, b in pairs:
            assert bool(set(letters[a]) & set(letters[b])) == ((a, b) not in significant), (trial, a, b, letters)
        assert letters[rows[0]].startswith("a")  # the best row's group is "a"
    assert compact_letters(["x", "y", "z"], []) == {"x": "a", "y": "a", "z": "a"}
    assert compact_letters(["x", "y", "z"], [("x", "z")]) == {"x": "a", "y": "ab", "z": "b"}
