"""The leaderboard: which rows are best on one dataset/backbone, and which differences are real, in one table.

Rows (kind, method), best first by their **mean normalised rank** over the ranked columns: the
columns of any table that score the maps, have paired tests and whose reliability card
(camzoo.bench.reliability) says ``rank`` — no trivial control wins them, they separate some methods,
the images agree on the methods' order (accuracy belongs to the model kind and cost to the machine,
so neither ranks a method).
In one column a row's normalised rank is (rank − 1) / (rows − 1): 0 = the best row, 1 = the worst,
tied means share their mean rank; a row's mean is over the columns it has a value in. Each cell is
the mean over seeds and the column's compact letters (``<metric>_group``: summary.py derives them
from the same Wilcoxon/Holm tests as pairwise.csv): two rows that share a letter are not
significantly different, two with none in common are. Controls follow, apart, as reference lines.

Why ranks: the columns differ in scale and direction; a rank weighs every column alike whatever its
spread, and normalising keeps a column that lacks a row comparable with the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import pandas as pd

from .record import RunRecord
from .reliability import RANKED_SCOPES
from .summary import ALPHA, Column
from .tables import (MAX_COLUMNS, by_family, format_number, latex, latex_table, present_columns, protocol_notes,
                     short_header, shortcut_note)

WIDTH = MAX_COLUMNS - 1  # metric columns of the leaderboard: the row label is its first column


@dataclass(frozen=True)
class Board:
    """One (dataset, backbone)'s leaderboard."""

    dataset: str
    backbone: str
    columns: list[Column]  # the ranked columns, in table order
    ranked: pd.DataFrame  # the competing rows, best first, with their "mean_rank"
    controls: pd.DataFrame  # the control rows (reference lines, not ranked), in the config's order
    why_no_letters: str  # "" when the cells carry letters; else the reason they do not


def group_pairwise(pairwise: pd.DataFrame, dataset: str, backbone: str) -> pd.DataFrame:
    """The rows of pairwise.csv's (or reliability.csv's) frame that belong to one (dataset, backbone)."""
    if pairwise.empty:
        return pairwise
    return pairwise[(pairwise["dataset"] == dataset) & (pairwise["backbone"] == backbone)]


def tested_columns(group: pd.DataFrame, pairwise: pd.DataFrame, table: str | None = "main") -> list[Column]:
    """The columns of ``table`` (None: every table) that score the maps and were tested; every such
    column with values where the run has no paired tests at all (no per-image values)."""
    from ..metrics import METRICS

    columns = [c for c in present_columns(group, table) if METRICS[c.metric].scope in RANKED_SCOPES]
    tested = [c for c in columns if not pairwise.empty and c.metric in set(pairwise["metric"])]
    return tested if tested or not pairwise.empty else columns


def column_ranks(rows: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """Each row's rank in each column among the rows with a value there: 1 = best, ties share their mean rank."""
    return pd.DataFrame({c.metric: rows[f"{c.metric}_mean"].rank(ascending=not c.higher_is_better, method="average")
                         for c in columns}, index=rows.index, dtype=float)


def mean_normalised_rank(rows: pd.DataFrame, columns: Sequence[Column]) -> pd.Series:
    """(rank − 1) / (rows − 1) in each column (0 = best, 1 = worst), averaged over the columns a row has."""
    ranks = column_ranks(rows, columns)
    return ((ranks - 1) / (ranks.count() - 1).clip(lower=1)).mean(axis=1)


def ranked_metrics(cards: pd.DataFrame) -> set[str]:
    """The metrics whose reliability card (camzoo.bench.reliability) says ``rank``."""
    return set() if cards.empty else set(cards.loc[cards["verdict"] == "rank", "metric"])


def board_columns(tested: Sequence[Column], cards: pd.DataFrame) -> list[Column]:
    """The tested columns whose card says ``rank``, in table order; when more than ``WIDTH`` pass, the
    ``WIDTH`` whose images agree most on the methods' order (the cards' Krippendorff's α)."""
    chosen = ranked_metrics(cards)
    columns = [c for c in tested if c.metric in chosen]
    if len(columns) <= WIDTH:
        return columns
    alpha = dict(zip(cards["metric"], cards["alpha"]))
    best = sorted(columns, key=lambda c: -alpha[c.metric] if alpha[c.metric] == alpha[c.metric] else 0.0)[:WIDTH]
    return [c for c in columns if c in best]


def leaderboard(group: pd.DataFrame, pairwise: pd.DataFrame, cards: pd.DataFrame) -> Board:
    """The leaderboard of one (dataset, backbone): ``group`` is its summary frame, ``pairwise`` its tests,
    ``cards`` its reliability cards: only the columns whose card says ``rank`` rank the rows, from every
    table (discrimination included), in table order, at most ``WIDTH`` (:func:`board_columns`)."""
    reference = group["reference"].astype(bool)
    columns = board_columns(tested_columns(group, pairwise, None), cards)
    competing = group[~reference].copy()  # one block per dtype again: assign() then adds a column cheaply
    ranked = competing.assign(mean_rank=mean_normalised_rank(competing, columns))
    ranked = ranked.sort_values("mean_rank", kind="stable", na_position="last")  # ties: the config's order
    return Board(str(group["dataset"].iloc[0]), str(group["backbone"].iloc[0]), columns, ranked, group[reference],
                 _why_no_letters(ranked, columns, pairwise))


def _why_no_letters(ranked: pd.DataFrame, columns: Sequence[Column], pairwise: pd.DataFrame) -> str:
    if not columns:
        return "no column passes its reliability card"
    if any(letters(row, c) for _, row in ranked.iterrows() for c in columns):
        return ""
    if len(ranked) < 2:
        return "one method row, nothing to compare"
    if pairwise.empty:
        return "the store has no per-image values, so there are no paired tests"
    return "one model per kind, and one model's images say nothing about another training run"


def letters(row: pd.Series, column: Column) -> str:
    """A cell's significance letters ("" where the column has none)."""
    found = row.get(f"{column.metric}_group")
    return found if isinstance(found, str) else ""


def note(board: Board, record: RunRecord) -> str:
    """The leaderboard's header lines: its order, how to read the letters, and the protocol."""
    if not board.columns:
        return " ".join(["No column passes its reliability card (see \"Which columns to believe\" and reliability.csv), "
                         "so no row is ranked: the full tables below still hold every number.",
                         *shortcut_note(board.ranked, record)])
    text = (f"Best first, by mean normalised rank over these {len(board.columns)} columns, those whose reliability card "
            "says *rank* (\"Which columns to believe\"; in brackets: 0 = best in each, 1 = worst in each). Cells: mean "
            "over seeds and significance letters: two rows that share a letter are not separated (Wilcoxon "
            f"signed-rank on per-image values averaged over seeds, Holm-corrected within the column, p < {ALPHA}, and "
            "an effect that is not negligible: Cliff's |δ| and the median difference relative to the random–oracle "
            "span; every test is in pairwise.csv), two rows with none in common are.")
    if board.why_no_letters:
        text += f" No letters in this run: {board.why_no_letters}."
    if not board.controls.empty:
        text += " Controls last, for reference (not ranked)."
    return " ".join([text, *protocol_notes(board.columns, record), *shortcut_note(board.ranked, record)])


def label(row: pd.Series) -> str:
    return f"{row['kind']} / {row['method']}"


def rank_text(row: pd.Series) -> str:
    return format_number(row.get("mean_rank", float("nan")), 2)


def markdown(board: Board, record: RunRecord) -> str:
    """The leaderboard as a Markdown table (at most MAX_COLUMNS columns) under its header lines."""
    heads = ["Kind / method (mean rank)"] + [short_header(c) for c in board.columns]
    lines = [f"### {board.dataset} / {board.backbone} — leaderboard", "", note(board, record), "",
             "| " + " | ".join(heads) + " |", "|---|" + "---:|" * len(board.columns)]
    for _, row in board.ranked.iterrows():
        cells = [f"{label(row)} ({rank_text(row)})"]
        cells += [" ".join(filter(None, (format_number(row[f"{c.metric}_mean"], c.digits), letters(row, c))))
                  for c in board.columns]
        lines.append("| " + " | ".join(cells) + " |")
    for _, row in board.controls.iterrows():
        cells = [f"*{label(row)}* (control)"] + [format_number(row[f"{c.metric}_mean"], c.digits) for c in board.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latex_board(board: Board, record: RunRecord) -> str:
    """The leaderboard as a booktabs table: letters as superscripts, controls below a rule."""
    heads = ["Kind / method (mean rank)"] + [latex(short_header(c)) for c in board.columns]
    rows = [[latex(f"{label(row)} ({rank_text(row)})")]
            + [latex(format_number(row[f"{c.metric}_mean"], c.digits)) + (f"$^{{{letters(row, c)}}}$" if letters(row, c) else "")
               for c in board.columns] for _, row in board.ranked.iterrows()]
    controls = [[f"\\textit{{{latex(label(row))}}} (control)"]
                + [latex(format_number(row[f"{c.metric}_mean"], c.digits)) for c in board.columns]
                for _, row in board.controls.iterrows()]
    caption = latex(f"{board.dataset} / {board.backbone}: leaderboard. {note(board, record)}")
    return latex_table(caption, heads, rows, 1, controls)


# --- what the rank plots draw (camzoo.bench.plots): mean ranks per family, and the tests' verdicts ----
def rank_families(group: pd.DataFrame, pairwise: pd.DataFrame) -> dict[str, list[Column]]:
    """The tested map and stability columns of every table, by metric family (tables.family)."""
    return by_family(tested_columns(group, pairwise, None))


def separated_pairs(pairwise: pd.DataFrame, metrics: Sequence[str]) -> set[frozenset[str]]:
    """The pairs of rows ("kind/method", as in pairwise.csv) that a significant test of any of ``metrics`` separates."""
    if pairwise.empty:
        return set()
    chosen = pairwise[pairwise["metric"].isin(list(metrics)) & pairwise["significant"].astype(bool)]
    return {frozenset(pair) for pair in zip(chosen["a"], chosen["b"])}


def joined_runs(order: Sequence[str], separated: set[frozenset[str]]) -> list[tuple[int, int]]:
    """The maximal runs (i, j), j > i, of rows consecutive in ``order`` that no test separates (each pair of
    the run): the bars of a critical-difference diagram."""
    runs: list[tuple[int, int]] = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and all(frozenset((order[k], order[j + 1])) not in separated for k in range(i, j + 1)):
            j += 1
        if j > i and not (runs and runs[-1][1] >= j):  # a run inside the previous one adds nothing
            runs.append((i, j))
    return runs
