"""The leaderboard, its pictures and the paper tables, on the shared tiny run (tests/test_bench_explore.py).

Each claim of docs/benchmark.md's "Results at a glance" is checked here against an independent
computation: the order against scipy's ranks, the letters against pairwise.csv, the bars of the rank
plots against the tests they draw.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import rankdata

from helpers import markdown_tables

from camzoo.bench.leaderboard import joined_runs, leaderboard, mean_normalised_rank, separated_pairs
from camzoo.bench.record import RunRecord
from camzoo.bench.summary import table_columns


@pytest.fixture(scope="module")
def run_dir(tiny_bench_run) -> Path:
    return tiny_bench_run


def test_the_leaderboard_comes_first_ordered_by_mean_normalised_rank(run_dir):
    markdown = (run_dir / "summary.md").read_text(encoding="utf-8")
    summary = pd.read_csv(run_dir / "summary.csv")
    heading, rows = markdown_tables(markdown)[0]
    assert heading == "shapes / resnet8 — leaderboard" and markdown.index("## Full tables") > markdown.index(heading)
    heads, body = rows[0], rows[1:]
    assert heads[0] == "Kind / method (mean rank)" and "Accuracy ↑" not in heads
    assert not any("steps" in h for h in heads) and "ms/image ↓" not in heads  # no protocol in names; cost is not ranked
    by_header = {f"{c.header} {'↑' if c.higher_is_better else '↓'}": c for c in table_columns()}
    columns = [by_header[h] for h in heads[1:]]
    # the ranked columns are exactly those whose reliability card says "rank", in table order
    cards = pd.read_csv(run_dir / "reliability.csv")
    ranked = set(cards.loc[cards["verdict"] == "rank", "metric"])
    assert columns and [c.metric for c in columns] == [c.metric for c in table_columns() if c.metric in ranked]

    competing = summary[~summary["reference"]].reset_index(drop=True)
    # independently: scipy's ranks (1 = best, ties averaged), (rank - 1) / (n - 1), mean over the columns
    normalised = []
    for c in columns:
        values = competing[f"{c.metric}_mean"].to_numpy()
        ranks = rankdata(-values if c.higher_is_better else values, method="average")
        normalised.append((ranks - 1) / (len(values) - 1))
    expected = np.mean(normalised, axis=0)
    shown = [re.fullmatch(r"(\S+) / (\S+) \((\S+)\)", r[0]).groups() for r in body if "(control)" not in r[0]]
    by_row = {(k, m): e for k, m, e in zip(competing["kind"], competing["method"], expected)}
    assert len(shown) == len(competing) and all(abs(float(rank) - by_row[(k, m)]) < 0.006 for k, m, rank in shown)
    order = [by_row[(k, m)] for k, m, _ in shown]
    assert order == sorted(order)  # best first

    # controls: after every ranked row, never ranked, no letters
    controls = [r for r in body if "(control)" in r[0]]
    assert len(controls) == int(summary["reference"].sum()) and body[-len(controls):] == controls
    assert all(re.fullmatch(r"\*\S+ / (random|oracle)\* \(control\)", r[0]) for r in controls)
    assert all(re.fullmatch(r"[–\d.-]+", cell) for r in controls for cell in r[1:])

    # each ranked cell: the mean and the letters of summary.csv's <metric>_group
    table = summary.set_index(["kind", "method"])
    for (kind, method, _), row in zip(shown, body):
        for c, cell in zip(columns, row[1:]):
            letters = table.loc[(kind, method), f"{c.metric}_group"]
            assert cell == f"{table.loc[(kind, method), f'{c.metric}_mean']:.{c.digits}f} {letters}", (kind, method, c.metric)


def test_every_paper_table_is_narrow_with_booktabs_and_superscript_letters(run_dir):
    markdown = (run_dir / "summary.md").read_text(encoding="utf-8")
    tables = markdown_tables(markdown)
    assert len(tables) >= 5 and all(len(rows[0]) <= 10 and {len(r) for r in rows} == {len(rows[0])} for _, rows in tables)
    assert not any("steps" in h for _, rows in tables for h in rows[0])  # the protocol is in the header lines
    # the full tables keep every column of the summary (those that do not rank marked †)
    shown = {h.removesuffix(" †") for _, rows in tables[1:] for h in rows[0][2:]}
    summary = pd.read_csv(run_dir / "summary.csv")
    present = {f"{c.header} {'↑' if c.higher_is_better else '↓'}" for c in table_columns()
               if f"{c.metric}_mean" in summary and summary[f"{c.metric}_mean"].notna().any()}
    assert present <= shown

    tex = (run_dir / "summary.tex").read_text(encoding="utf-8")
    blocks = tex.split("\\begin{table}")[1:]
    assert len(blocks) == len(tables)
    for block in blocks:
        spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", block).group(1)
        assert len(spec) <= 10
        assert block.index("\\toprule") < block.index("\\midrule") < block.index("\\bottomrule")
        body = block.split("\\midrule", 1)[1].split("\\bottomrule")[0]
        assert all(line.count("&") == len(spec) - 1 for line in body.splitlines() if line.endswith("\\\\"))
    letters = re.findall(r"(\d\.\d+)\$\^\{([A-Za-z]+)\}\$", blocks[0])
    groups = {str(v) for c in summary if c.endswith("_group") for v in summary[c].dropna()}
    assert letters and {group for _, group in letters} <= groups
    assert "\\textit{baseline / random} (control)" in blocks[0]


def test_the_pictures_are_written_and_not_blank(run_dir):
    summary = pd.read_csv(run_dir / "summary.csv")
    markdown = (run_dir / "summary.md").read_text(encoding="utf-8")
    names = ["heatmap_shapes_resnet8", "ranks_shapes_resnet8_causal", "ranks_shapes_resnet8_localisation",
             "ranks_shapes_resnet8_stability", "ranks_shapes_resnet8_faithfulness"]
    for name in names:
        assert f"]({name}.png)" in markdown[:markdown.index("## The run")]  # shown under the leaderboard
        with Image.open(run_dir / f"{name}.png") as image:
            pixels = np.asarray(image.convert("L"))
        assert min(pixels.shape) > 100 and pixels.std() > 10 and len(np.unique(pixels)) > 20, name
        root = ElementTree.parse(run_dir / f"{name}.svg").getroot()  # valid SVG that draws, its text kept as text
        drawn = [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] in ("path", "use", "image", "rect", "line")]
        texts = " ".join("".join(e.itertext()) for e in root.iter("{http://www.w3.org/2000/svg}text"))
        assert root.tag.endswith("svg") and len(drawn) >= 5 and "lfi / attention" in texts, name
    assert summary["pointing_game_norm"].notna().any()  # what the heat-map shows, rows in the leaderboard's order
    board = [re.sub(r" \(\S+\)$", "", cells[0]) for cells in markdown_tables(markdown)[0][1][1:] if "(control)" not in cells[0]]
    texts = ["".join(e.itertext()) for e in ElementTree.parse(run_dir / f"{names[0]}.svg").iter("{http://www.w3.org/2000/svg}text")]
    assert [t for t in texts if t in board] == board


def test_rank_plot_bars_join_exactly_the_rows_no_test_separates():
    rng = np.random.default_rng(1)
    for trial in range(300):
        order = [f"r{i}" for i in range(int(rng.integers(2, 10)))]
        separated = {frozenset((a, b)) for i, a in enumerate(order) for b in order[i + 1:] if rng.random() < 0.4}
        runs = joined_runs(order, separated)
        clean = [(i, j) for i in range(len(order)) for j in range(i + 1, len(order))
                 if not any(frozenset((order[a], order[b])) in separated for a in range(i, j + 1) for b in range(a + 1, j + 1))]
        maximal = [(i, j) for i, j in clean if not any((a, b) != (i, j) and a <= i and j <= b for a, b in clean)]
        assert runs == maximal, (trial, order, separated, runs)
    tests = pd.DataFrame({"metric": ["deletion", "insertion", "insertion", "pxap"], "a": ["x", "x", "y", "x"],
                          "b": ["y", "z", "z", "y"], "significant": [False, True, False, True]})
    assert separated_pairs(tests, ["deletion", "insertion"]) == {frozenset(("x", "z"))}
    assert joined_runs(["x", "y", "z"], separated_pairs(tests, ["deletion", "insertion"])) == [(0, 1), (1, 2)]


def test_mean_normalised_rank_by_hand():
    columns = {c.metric: c for c in table_columns()}
    rows = pd.DataFrame({"deletion_mean": [0.1, 0.3, 0.2, np.nan], "pointing_game_mean": [0.5, 0.9, 0.9, 0.1]})
    ranks = mean_normalised_rank(rows, [columns["deletion"], columns["pointing_game"]])
    # deletion (lower is better; three rows have it): 0, 1, 0.5, -; pointing game (ties share): 2/3, 1/6, 1/6, 1
    np.testing.assert_allclose(ranks, [(0 + 2 / 3) / 2, (1 + 0.5 / 3) / 2, (0.5 + 0.5 / 3) / 2, 1.0])


def test_a_run_without_letters_says_why(run_dir):
    summary = pd.read_csv(run_dir / "summary.csv")
    pairwise = pd.read_csv(run_dir / "pairwise.csv")
    one_seed = summary.assign(**{c: np.nan for c in summary if c.endswith("_group")})
    cards = pd.read_csv(run_dir / "reliability.csv")
    board = leaderboard(one_seed, pairwise, cards)
    assert board.why_no_letters.startswith("one model per kind")
    assert leaderboard(one_seed, pairwise.iloc[:0], cards).why_no_letters.startswith("the store has no per-image values")
    assert leaderboard(one_seed[one_seed["method"] != "gradcam"], pairwise.iloc[:0], cards).why_no_letters.startswith(
        "one method row")
    assert leaderboard(summary, pairwise, cards).why_no_letters == ""
    assert leaderboard(summary, pairwise, cards.assign(verdict="report")).why_no_letters.startswith("no column passes")


def test_ties_keep_the_config_order_and_wide_families_continue(monkeypatch):
    from camzoo.bench import tables

    frame = pd.DataFrame({"dataset": "d", "backbone": "b", "kind": "k", "method": ["m1", "m2", "m3", "random"],
                          "reference": [False, False, False, True], "deletion_mean": [0.2, 0.1, 0.1, 0.5],
                          "pointing_game_mean": [0.5, 0.7, 0.7, 0.1], "pxap_mean": [0.5, 0.6, 0.6, 0.2],
                          "energy_pointing_game_mask_mean": [0.3, 0.4, 0.4, 0.1]})
    board = leaderboard(frame, pd.DataFrame(), rank_every(frame))
    assert list(board.ranked["method"]) == ["m2", "m3", "m1"] and list(board.controls["method"]) == ["random"]
    assert "No letters in this run: the store has no per-image values" in tables_note(board)
    monkeypatch.setattr(tables, "MAX_COLUMNS", 4)  # two metric columns per table
    split = [(t.name, t.title, [c.metric for c in t.columns]) for t in tables.full_tables(frame, steps_record(4))]
    assert split == [("causal", "accuracy and deletion / insertion", ["deletion"]),
                     ("localisation", "localization", ["pointing_game", "energy_pointing_game_mask"]),
                     ("localisation-2", "localization", ["pxap"])]


def rank_every(frame: pd.DataFrame) -> pd.DataFrame:
    """Reliability cards that let every metric column of ``frame`` rank."""
    return pd.DataFrame({"metric": [c[:-len("_mean")] for c in frame if c.endswith("_mean")], "verdict": "rank"})


def steps_record(steps: int) -> RunRecord:
    """A run record whose games take ``steps`` steps (the protocol the notes describe)."""
    return RunRecord.from_config({"eval": {"images": 8, "deletion_steps": steps}})


def tables_note(board) -> str:
    from camzoo.bench.leaderboard import note

    return note(board, steps_record(4))


def test_pictures_without_controls_or_letters_say_so(run_dir, tmp_path, monkeypatch):
    from camzoo.bench import plots

    summary = pd.read_csv(run_dir / "summary.csv")
    pairwise = pd.read_csv(run_dir / "pairwise.csv")
    bare = summary.drop(columns=[c for c in summary if c.endswith("_norm")])
    cards = pd.read_csv(run_dir / "reliability.csv")
    assert plots.heatmap(leaderboard(bare, pairwise, cards), bare) is None  # no oracle and random: no heat-map
    drawn = []
    monkeypatch.setattr(plots, "rank_plot", lambda title, labels, ranks, runs: drawn.append((title, runs)))
    monkeypatch.setattr(plots, "save", lambda figure, directory, name: directory / f"{name}.png")
    one_seed = summary.assign(**{c: np.nan for c in summary if c.endswith("_group")})
    plots.write_pictures(leaderboard(one_seed, pairwise, cards), one_seed, pairwise, tmp_path)
    assert drawn and all(runs == [] and "no bars: one model per kind" in title for title, runs in drawn)
    drawn.clear()
    plots.write_pictures(leaderboard(summary, pairwise, cards), summary, pairwise, tmp_path)
    assert all("bars: no paired test" in title for title, _ in drawn)
