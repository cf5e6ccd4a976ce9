"""Render a summary (camzoo.bench.summary) as Markdown and LaTeX tables.

Every cell reads "mean ± std [95 % CI]"; **bold** marks a row significantly better than every other
non-reference row of its column, ≈ the rows tied for the top (no test separates them); control rows
are set apart in italics and never marked. A second table per (dataset, backbone) gives the
normalised scores, 0 = the random control and 1 = the oracle.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import pandas as pd

from .summary import Column, table_columns

TIE = "≈"


def present_columns(frame: pd.DataFrame, group: str | None = "main") -> list[Column]:
    return [c for c in table_columns() if (group is None or c.group == group)
            and f"{c.metric}_mean" in frame and frame[f"{c.metric}_mean"].notna().any()]


def format_number(value: float, digits: int) -> str:
    """A table number at ``digits`` decimals; NaN (no value) as an en dash."""
    return f"{value:.{digits}f}" if value == value else "–"


def cell_text(row: pd.Series, column: Column, bold: tuple[str, str], pm: str, interval: tuple[str, str]) -> str:
    name, digits = column.metric, column.digits
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if mean != mean:
        return "–"
    text = format_number(mean, digits) + (f" {pm} {format_number(std, digits)}" if std == std else "")
    low, high = row.get(f"{name}_ci_low", float("nan")), row.get(f"{name}_ci_high", float("nan"))
    if low == low:
        text += f" {interval[0]}{format_number(low, digits)}, {format_number(high, digits)}{interval[1]}"
    if row.get(f"{name}_best", False):
        return f"{bold[0]}{text}{bold[1]}"
    return text + (f" {TIE}" if row.get(f"{name}_tie", False) else "")


def method_label(row: pd.Series, italic: tuple[str, str]) -> str:
    return f"{italic[0]}{row['method']}{italic[1]} (control)" if row.get("reference", False) else str(row["method"])


def header(column: Column, eval_settings: Mapping[str, Any]) -> str:
    """A column's header with its direction, and for deletion/insertion the protocol that made it."""
    text = f"{column.header} {'↑' if column.higher_is_better else '↓'}"
    if column.metric in ("deletion", "insertion"):
        text += f" ({causal_description(eval_settings)})"
    return text


def causal_description(eval_settings: Mapping[str, Any]) -> str:
    return _causal_rule(eval_settings) + game_images_note(eval_settings)


def _causal_rule(eval_settings: Mapping[str, Any]) -> str:
    if eval_settings.get("protocol") == "rise":
        return "RISE protocol: 28 steps, predicted class"
    fraction = float(eval_settings.get("deletion_fraction", 1.0))
    span = "" if fraction >= 1 else f" over first {fraction:.0%} px"
    return f"{eval_settings.get('deletion_target', 'label')}, {eval_settings['deletion_steps']} steps{span}"


def game_images_note(eval_settings: Mapping[str, Any]) -> str:
    """", first N images" when the perturbation games play on fewer images than the other metrics."""
    games, images = eval_settings.get("game_images", "all"), eval_settings.get("images")
    if games == "all" or images is None or int(games) >= int(images):
        return ""
    return f", first {int(games)} images"


def markdown_tables(frame: pd.DataFrame, eval_settings: Mapping[str, Any],
                    agreement: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> str:
    parts = []
    for (dataset, backbone), group in frame.groupby(["dataset", "backbone"], sort=False):
        faithfulness = f" — faithfulness across substrates (SRG = LeRF − MoRF AUC{game_images_note(eval_settings)})"
        tables = (("", present_columns(group), False),
                  (faithfulness, present_columns(group, "faithfulness"), False),
                  (discrimination_title(eval_settings), present_columns(group, "discrimination"), False),
                  (" — normalised (0 = random, 1 = oracle)", normalised_columns(group), True))
        for title, columns, normalised in tables:
            if not columns:
                continue
            heads = ["Kind", "Method"] + [header(c, eval_settings) for c in columns]
            lines = [f"### {dataset} / {backbone}{title}", "", "| " + " | ".join(heads) + " |",
                     "|" + "|".join(["---"] * 2 + ["---:"] * len(columns)) + "|"]
            for _, row in group.iterrows():
                if normalised and row.get("reference", False):
                    continue
                if all(row[f"{c.metric}_mean"] != row[f"{c.metric}_mean"] for c in columns):
                    continue  # nothing in this table for the row (controls skip the substrates)
                cells = [str(row["kind"]), method_label(row, ("*", "*"))]
                cells += [format_number(row[f"{c.metric}_norm"], 2) if normalised
                          else cell_text(row, c, ("**", "**"), "±", ("[", "]"))
                          for c in columns]
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
            if "faithfulness" in title and agreement and (dataset, backbone) in agreement:
                parts.append(agreement_text(agreement[(dataset, backbone)]))
    return "\n\n".join(parts)


def discrimination_title(eval_settings: Mapping[str, Any]) -> str:
    """The discrimination table's title: how its grids were made (the count per model is the
    ``grid_count_NxN`` metric of each cell: 0 where too few images were confident)."""
    return (f" — discrimination (grid games: up to {eval_settings.get('grid_count', 64)} grids per model of "
            f"evaluation images classified with confidence ≥ {eval_settings.get('grid_threshold', 0.99):g}; "
            "chance: 1/N² per N×N grid, 0.5 for Focus)")


def agreement_text(found: Mapping[str, Any]) -> str:
    """Kendall's tau between the substrates' rankings of the methods (controls left out)."""
    pairs = ", ".join(f"{a} vs {b}: {tau:.2f}" for (a, b), tau in found["pairs"].items())
    return (f"Rank agreement of the {len(found['methods'])} method rows across substrates (Kendall's tau-b; "
            f"1 = the same ranking, -1 = reversed): {pairs}; mean {found['mean_tau']:.2f}.")


def normalised_columns(frame: pd.DataFrame) -> list[Column]:
    """The columns that have normalised scores (controls present and apart) in this frame."""
    return [c for c in present_columns(frame) if f"{c.metric}_norm" in frame and frame[f"{c.metric}_norm"].notna().any()]


def latex_tables(frame: pd.DataFrame, eval_settings: Mapping[str, Any]) -> str:
    parts = []
    for (dataset, backbone), group in frame.groupby(["dataset", "backbone"], sort=False):
        columns = present_columns(group)
        heads = [header(c, eval_settings).replace("↑", "$\\uparrow$").replace("↓", "$\\downarrow$") for c in columns]
        lines = [
            "\\begin{table}[t]", "\\centering", "\\small",
            f"\\caption{{{dataset} / {backbone}: mean $\\pm$ sample std over seeds (stability: over seed pairs) "
            "[95\\,\\% hierarchical bootstrap CI]; bold: significantly best (Wilcoxon, Holm, $p<0.05$); "
            "$\\approx$: tied for best; controls in italics.}",
            "\\begin{tabular}{ll" + "r" * len(columns) + "}", "\\toprule",
            "Kind & Method & " + " & ".join(heads) + " \\\\", "\\midrule",
        ]
        for _, row in group.iterrows():
            cells = [str(row["kind"]), method_label(row, ("\\textit{", "}"))]
            cells += [cell_text(row, c, ("\\textbf{", "}"), "$\\pm$", ("[", "]")) for c in columns]
            line = " & ".join(cells).replace("_", "\\_").replace("–", "--").replace(TIE, "$\\approx$").replace("%", "\\%")
            lines.append(line + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
