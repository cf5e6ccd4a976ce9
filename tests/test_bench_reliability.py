"""Reliability cards and effect sizes (camzoo.bench.reliability, camzoo.bench.summary) on stores whose
truth is known by construction: a column of pure noise, a column a constant map wins, a column
that orders the methods on every image, and rows that differ by a negligible amount.

The statistics themselves are checked against independent computations in test_bench_psychometrics.py;
here: that each card field reads the right numbers and that the verdicts and letters follow from them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from camzoo.bench.config import resolve_config
from camzoo.bench.leaderboard import leaderboard
from camzoo.bench.record import RunRecord
from camzoo.bench.reliability import CARD_COLUMNS
from camzoo.bench.store import CellKey, ResultsStore
from camzoo.bench.summary import summarise
from camzoo.metrics.settings import EvalSettings

METHODS = ["gradcam", "gradcampp", "layercam", "eigencam"]
CONTROLS = ["random", "centre", "edges", "oracle"]
IMAGES, SEEDS = 120, (0, 1)


def write_store(directory, columns: dict[str, dict[str, np.ndarray]], evaluation: dict | None = None) -> dict:
    """A store of one (dataset, backbone, kind) with two seeds; ``columns``: metric -> row -> (S, N) values."""
    config = resolve_config("quick", overrides={"kinds": ["baseline"], "methods": METHODS + CONTROLS,
                                                "eval": evaluation or {}})
    run = {"run_id": "synthetic", "config": config}
    with ResultsStore(directory) as store:
        store.record_run("synthetic", config, {"device": "cpu"})
        for seed_index, seed in enumerate(SEEDS):
            for method in METHODS + CONTROLS:
                cell = {metric: (float(rows[method][seed_index].mean()), rows[method][seed_index])
                        for metric, rows in columns.items() if method in rows}
                store.write_cell("synthetic", CellKey("shapes", "resnet8", "baseline", "default", seed, method), cell,
                                 code_version="test", device="cpu")
    return run


def summary_of(directory, run):
    with ResultsStore(directory) as store:
        return summarise(store, RunRecord.from_store(store, run["run_id"]), resamples=200)


def noise(rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    return np.clip(rng.uniform(0.2, 0.8, (len(SEEDS), IMAGES)) + shift, 0, 1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 0.4, (len(SEEDS), IMAGES))  # each image's difficulty, shared by every row
    ordered = {m: np.clip(base + 0.15 * i + rng.normal(0, 0.01, base.shape), 0, 1) for i, m in enumerate(METHODS)}
    ordered |= {"random": np.clip(base - 0.1, 0, 1), "centre": np.clip(base - 0.05, 0, 1),
                "edges": np.clip(base - 0.05, 0, 1), "oracle": np.clip(base + 0.6, 0, 1)}
    columns = {
        # insertion: the methods in a fixed order on every image (higher is better)
        "insertion": ordered,
        # energy PG (mask): every row, the controls too, the same noise distribution
        "energy_pointing_game_mask": {m: noise(rng) for m in METHODS + CONTROLS},
        # energy PG (box): a constant map (centre) above every method
        "energy_pointing_game_box": {**{m: noise(rng, 0.05 * i) for i, m in enumerate(METHODS)},
                                     "random": noise(rng), "centre": np.full((len(SEEDS), IMAGES), 0.95),
                                     "edges": noise(rng), "oracle": np.ones((len(SEEDS), IMAGES))},
    }
    directory = tmp_path_factory.mktemp("synthetic")
    run = write_store(directory, columns)
    return summary_of(directory, run)


def card(summary, metric: str) -> pd.Series:
    cards = summary.reliability.set_index("metric")
    return cards.loc[metric]


def test_cards_have_every_field_and_one_row_per_rankable_metric(synthetic):
    cards = synthetic.reliability
    assert list(cards.columns) == CARD_COLUMNS
    assert set(cards["metric"]) == {"insertion", "energy_pointing_game_mask", "energy_pointing_game_box"}
    assert set(cards["verdict"]) <= {"rank", "report"} and cards["reason"].str.len().min() > 10


def test_a_column_that_orders_the_methods_on_every_image_ranks(synthetic):
    found = card(synthetic, "insertion")
    assert found["verdict"] == "rank", found["reason"]
    assert found["alpha"] > 0.95 and found["alpha_ci_low"] > 0.9  # every image agrees on the order
    assert found["groups"] == 4 and found["separated_share"] == 1.0
    assert found["oracle_beats_random"] == 1.0 and found["control_wins"] == ""
    assert found["inter_method"] > 0.9  # the shared difficulty correlates the methods across images
    assert found["icc"] < 0.5  # the two seeds' values are independent draws around each image's difficulty...
    assert math.isnan(found["cronbach_alpha"])  # no curve items stored in this synthetic run


def test_a_column_of_pure_noise_is_reported(synthetic):
    found = card(synthetic, "energy_pointing_game_mask")
    assert found["verdict"] == "report"
    assert abs(found["alpha"]) < 0.1 and found["alpha_ci_low"] < 0 < found["alpha_ci_high"]
    assert "the images disagree on the order" in found["reason"]
    assert "separates no method" in found["reason"] and found["groups"] == 1
    assert "the oracle beats random on only" in found["reason"]


def test_a_column_a_constant_map_wins_names_the_control(synthetic):
    found = card(synthetic, "energy_pointing_game_box")
    assert found["verdict"] == "report"
    assert found["control_wins"].startswith("centre 0.950") and "edges" not in found["control_wins"]
    assert "a trivial control (centre" in found["reason"]


def test_the_leaderboard_ranks_only_on_rank_columns(synthetic):
    board = leaderboard(synthetic.frame, synthetic.pairwise, synthetic.reliability)
    assert [c.metric for c in board.columns] == ["insertion"]
    assert list(board.ranked["method"]) == METHODS[::-1]  # insertion: the last method is best


def test_pairwise_records_carry_effect_sizes(synthetic):
    pairs = synthetic.pairwise
    assert {"cliffs_delta", "relative_difference", "negligible", "significant"} <= set(pairs.columns)
    ordered = pairs[pairs["metric"] == "insertion"]
    assert (ordered["cliffs_delta"].abs() > 0.147).all() and not ordered["negligible"].any()
    # the span is |oracle - random| of the kind, so the relative difference is median / span
    span = abs(synthetic.frame.set_index("method").loc["oracle", "insertion_mean"]
               - synthetic.frame.set_index("method").loc["random", "insertion_mean"])
    np.testing.assert_allclose(ordered["relative_difference"], ordered["median_difference"] / span)


def test_significant_but_negligible_differences_do_not_separate_rows(tmp_path):
    """Every row at chance, differing by a consistent 1e-4: Wilcoxon calls it significant, the effect
    size does not, so every row keeps one letter and no cell is bold (two random-init models' columns)."""
    rng = np.random.default_rng(1)
    chance = 1 / 6 + rng.normal(0, 0.02, (len(SEEDS), IMAGES))
    rows = {m: chance + 1e-4 * i for i, m in enumerate(METHODS + CONTROLS)}
    run = write_store(tmp_path, {"deletion": rows})
    summary = summary_of(tmp_path, run)
    tests = summary.pairwise
    assert (tests["p_holm"] < 0.05).all()  # every pair "significant" by the test alone...
    assert tests["negligible"].all() and not tests["significant"].any()  # ...and none separates
    methods = summary.frame[~summary.frame["reference"]]
    assert set(methods["deletion_group"]) == {"a"} and not methods["deletion_best"].any()
    found = summary.reliability.set_index("metric").loc["deletion"]
    assert found["verdict"] == "report" and "separates no method" in found["reason"]

    # the same store with the effect-size rule switched off separates them: the rule is what decides
    lenient = write_store(tmp_path / "lenient", {"deletion": rows}, {"negligible_delta": 0.0, "negligible_span": 0.0})
    assert summary_of(tmp_path / "lenient", lenient).pairwise["significant"].all()


def test_verdict_thresholds_live_in_eval_settings():
    with pytest.raises(ValueError, match="eval.min_alpha"):
        EvalSettings(min_alpha=2.0)
    with pytest.raises(ValueError, match="eval.input_noise"):
        EvalSettings(input_noise=(0.5, 0.1))
    with pytest.raises(ValueError, match="eval.reliability"):
        EvalSettings(reliability="everything")


def test_when_more_columns_pass_than_fit_the_leaderboard_keeps_the_most_reliable():
    from camzoo.bench.leaderboard import WIDTH, board_columns
    from camzoo.bench.summary import table_columns

    columns = [c for c in table_columns() if c.source in ("method", "stability")][:WIDTH + 2]
    alphas = np.linspace(0.9, 0.3, len(columns))[::-1]  # the first columns are the least reliable
    cards = pd.DataFrame({"metric": [c.metric for c in columns], "verdict": "rank", "alpha": alphas})
    chosen = board_columns(columns, cards)
    assert [c.metric for c in chosen] == [c.metric for c in columns[2:]]  # table order, the two lowest α left out
    assert board_columns(columns, cards.assign(verdict=["report"] * 3 + ["rank"] * (len(columns) - 3))) == columns[3:]


def test_a_real_run_writes_a_card_per_column_with_its_cost(tiny_bench_run):
    """The shared tiny bench: reliability.csv and camzoo.bench.load(...).reliability() agree, every
    map column's card has a cost (seconds per image, recorded while scoring) and reasons in words."""
    from camzoo.bench import load

    written = pd.read_csv(tiny_bench_run / "reliability.csv")
    loaded = load(tiny_bench_run).reliability(resamples=200)
    assert list(loaded["metric"]) == list(written["metric"]) and list(loaded["verdict"]) == list(written["verdict"])
    pd.testing.assert_series_equal(loaded["alpha"], written["alpha"], check_dtype=False, rtol=1e-9)
    maps = written[written["metric"].isin(["deletion", "pointing_game", "pxap", "srg_zeros"])]
    assert len(maps) == 4 and (maps["seconds_per_image"] > 0).all()
    assert written.loc[written["metric"].str.startswith("stability_"), "seconds_per_image"].isna().all()
    assert (written["reason"].str.len() > 10).all() and set(written["verdict"]) <= {"rank", "report"}
    markdown = (tiny_bench_run / "summary.md").read_text(encoding="utf-8")
    believe = markdown[markdown.index("## Which columns to believe"):markdown.index("## The run")]
    assert all(f"(`{metric}`): **{verdict}**" in believe for metric, verdict in zip(written["metric"], written["verdict"]))
