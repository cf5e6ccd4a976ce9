"""Render a summary (camzoo.bench.summary) as Markdown and LaTeX tables.

Every cell reads "mean ± std [95 % CI]"; **bold** marks a row significantly better than every other
non-reference row of its column, ≈ the rows tied for the top (no test separates them); control rows
are set apart in italics and never marked. A last table per (dataset, backbone) gives the normalised
scores, 0 = the random control and 1 = the oracle.

Why split by metric family: one table of every column was 15 columns wide, too wide for a page or a
laptop screen. Each table here has at most ``MAX_COLUMNS`` columns, one metric family each, and says
the protocol that made its numbers in a line above it rather than in every column name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping, Sequence

import pandas as pd

from ..metrics.causal import RISE_PROTOCOL
from .grid_status import GridPlay, grid_status
from .labels import model_namer
from .record import RunRecord
from .summary import Column, table_columns

TIE = "≈"
PARTS_NOTE = ("FunnyBirds protocol on the parts world (docs/metrics.md): every number at the importance threshold "
              "chosen on the calibration split (the val split's first images), t (calibration); t (test) and "
              "mX (test t) are the choice FunnyBirds' code makes on the test images themselves, shown beside it.")
MAX_COLUMNS = 10  # per table of summary.md / summary.tex, the row label columns included
# metric family -> the title of its table; a family's columns come from the metrics table (see family())
FAMILIES = {"causal": "accuracy and deletion / insertion", "localisation": "localization",
            "stability": "stability and cost", "faithfulness": "faithfulness across substrates",
            "discrimination": "discrimination", "parts": "what the model uses (FunnyBirds protocol)",
            "other": "other metrics"}


def family(column: Column) -> str:
    """A column's metric family, from what its metric is (camzoo.metrics.METRICS): its own table's
    ``group``, else what it needs and scores: the model (accuracy, deletion/insertion), the ground truth
    (localization), several models or the machine (stability, cost); "other" for anything else."""
    from ..metrics import METRICS

    info = METRICS[column.metric]
    if info.group != "main":
        return info.group
    if info.scope == "model" or "model" in info.needs:
        return "causal"
    if info.scope in ("stability", "cost"):
        return "stability"
    return "localisation" if {"annotations", "masks", "boxes", "shortcut"} & set(info.needs) else "other"


def by_family(columns: list[Column]) -> dict[str, list[Column]]:
    """Columns grouped by metric family, the families in FAMILIES' order (any other one after them)."""
    families: dict[str, list[Column]] = {}
    for column in columns:
        families.setdefault(family(column), []).append(column)
    order = list(FAMILIES)
    return dict(sorted(families.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def present_columns(frame: pd.DataFrame, group: str | None = "main") -> list[Column]:
    return [c for c in table_columns() if (group is None or c.group == group)
            and f"{c.metric}_mean" in frame and frame[f"{c.metric}_mean"].notna().any()]


def format_number(value: float, digits: int) -> str:
    """A table number at ``digits`` decimals; NaN (no value) as an en dash."""
    return f"{value:.{digits}f}" if value == value else "–"


def cell_parts(row: pd.Series, column: Column, pm: str = "±", interval: tuple[str, str] = ("[", "]")
               ) -> tuple[str, str, str]:
    """(mean, " ± std [CI]", mark) of a cell: report.html shows the first and last and hides the middle."""
    name, digits = column.metric, column.digits
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if mean != mean:
        return "–", "", ""
    detail = f" {pm} {format_number(std, digits)}" if std == std else ""
    low, high = row.get(f"{name}_ci_low", float("nan")), row.get(f"{name}_ci_high", float("nan"))
    if low == low:
        detail += f" {interval[0]}{format_number(low, digits)}, {format_number(high, digits)}{interval[1]}"
    mark = f" {TIE}" if row.get(f"{name}_tie", False) and not row.get(f"{name}_best", False) else ""
    return format_number(mean, digits), detail, mark


def cell_text(row: pd.Series, column: Column, bold: tuple[str, str], pm: str, interval: tuple[str, str]) -> str:
    mean, detail, mark = cell_parts(row, column, pm, interval)
    if row.get(f"{column.metric}_best", False) and mean != "–":
        return f"{bold[0]}{mean}{detail}{bold[1]}"
    return mean + detail + mark


def method_label(row: pd.Series, italic: tuple[str, str]) -> str:
    return f"{italic[0]}{row['method']}{italic[1]} (control)" if row.get("reference", False) else str(row["method"])


def short_header(column: Column) -> str:
    """A column's name and direction; the protocol behind it is in the table's header lines."""
    return f"{column.header} {'↑' if column.higher_is_better else '↓'}"


def header(column: Column, record: RunRecord) -> str:
    """A column's header with its direction, and for deletion/insertion the protocol that made it."""
    text = short_header(column)
    if column.metric in ("deletion", "insertion"):
        text += f" ({causal_description(record)})"
    return text


def description(column: Column, record: RunRecord) -> str:
    """What a column means, in full (report.html's header tooltip): the metric's description and protocol."""
    from ..metrics import METRICS

    return f"{header(column, record)}: {METRICS[column.metric].description}"


def causal_description(record: RunRecord) -> str:
    """How the run played deletion/insertion, from its settings: "label, 6 steps over first 15% px"."""
    return _causal_rule(record) + game_images_note(record)


def _causal_rule(record: RunRecord) -> str:
    settings = record.settings
    if settings.protocol == RISE_PROTOCOL.name:  # the protocol's own steps and target, whatever the config says
        return f"RISE protocol: {RISE_PROTOCOL.steps} steps, {RISE_PROTOCOL.target} class"
    fraction = record.game_fraction
    span = "" if fraction >= 1 else f" over first {fraction:.0%} px"
    return f"{settings.deletion_target}, {settings.deletion_steps} steps{span}"


def game_images_note(record: RunRecord) -> str:
    """", first N images" when the perturbation games play on fewer images than the other metrics."""
    return "" if record.game_images >= record.images else f", first {record.game_images} images"


def protocol_notes(columns: list[Column], record: RunRecord) -> list[str]:
    """The header lines of a table: how its deletion/insertion columns were played, if it has any."""
    if any(c.metric in ("deletion", "insertion") for c in columns):
        return [f"Deletion/insertion: {causal_description(record)}."]
    return []


def shortcut_note(group: pd.DataFrame, record: RunRecord) -> list[str]:
    """The header line of a planted-shortcut dataset (camzoo.data.shortcuts): each model kind's accuracy, the
    best constant accuracy and the difference. Why in the header: a model above the best constant can only
    be using the artefact, which is what makes the artefact's region the maps' ground truth."""
    if group.empty or "best_constant_accuracy_mean" not in group or group["best_constant_accuracy_mean"].isna().all():
        return []
    rows = group[~group["reference"].astype(bool)] if "reference" in group and not group["reference"].all() else group
    said, beaten = [], []
    for kind, found in rows.groupby("kind", sort=False):
        row = found.iloc[0]  # model columns: the same on every row of a kind
        accuracy, constant = row.get("top1_mean", float("nan")), row["best_constant_accuracy_mean"]
        low = row.get("top1_ci_low", float("nan"))
        beats = (low if low == low else accuracy) > constant
        beaten.append(beats)
        said.append(f"{kind} {format_number(accuracy, 3)} vs {format_number(constant, 3)} "
                    f"({accuracy - constant:+.3f}: {'beats it' if beats else 'does not beat it'})")
    kind = _shortcut_kind(record, str(group["dataset"].iloc[0]))
    verdict = ("every model beats the best constant, so the models use the artefact" if all(beaten) else
               "a model at the best constant need not use the artefact: read its maps' shortcut share with care")
    return [f"Planted shortcut{f' ({kind})' if kind else ''}: accuracy vs the best constant accuracy (the larger class "
            f"share; beaten = the accuracy's 95 % CI above it): {'; '.join(said)}; {verdict}."]


def _shortcut_kind(record: RunRecord, dataset: str) -> str:
    """The ``shortcut`` option of the run's ``[[datasets]]`` entry whose results are ``dataset`` (its name, or
    its key "shapes+watermark"); "" if none says."""
    for entry in record.config.get("datasets") or []:
        options = (entry.get("options") or {}) if isinstance(entry, Mapping) else {}
        kind = options.get("shortcut") or (options.get("test") or {}).get("shortcut")
        if kind and dataset in (entry.get("name"), f"{entry.get('name')}+{kind}"):
            return str(kind)
    return ""


@dataclass(frozen=True)
class Table:
    """One full table of a (dataset, backbone): a metric family's columns (at most MAX_COLUMNS - 2)."""

    name: str  # "causal", "localisation", ..., "normalised"; "-2" etc. for the rest of a family too wide
    title: str
    columns: list[Column]
    notes: list[str] = field(default_factory=list)  # header lines: the protocol behind the numbers
    normalised: bool = False


NOT_RANKED = "†"  # a full table's column whose reliability card says "report" (not in the leaderboard)


def table_header(column: Column, reported: Mapping[str, str]) -> str:
    """A full table's header: :func:`short_header`, marked † when the column does not rank."""
    return short_header(column) + (f" {NOT_RANKED}" if column.metric in reported else "")


def reported_note(columns: list[Column], reported: Mapping[str, str]) -> list[str]:
    """The header line naming the table's columns that do not rank, with their cards' reasons."""
    found = [f"{c.header}: {reported[c.metric]}" for c in columns if c.metric in reported]
    return [f"{NOT_RANKED} Not ranked (reliability card): " + "; ".join(found) + "."] if found else []


def full_tables(group: pd.DataFrame, record: RunRecord, reported: Mapping[str, str] | None = None,
                plays: Sequence[GridPlay] = ()) -> list[Table]:
    """The full tables of one (dataset, backbone), one per metric family, then the normalised scores;
    ``reported``: metric -> why its reliability card keeps it out of the leaderboard (a † and a note);
    ``plays``: each model's grids (Summary.grids): a grid game that some model could not play says why,
    and one that no model played keeps its column, empty, under that line."""
    reported = reported or {}
    present = present_columns(group, None)
    empty = [c for c in table_columns() if c not in present and _asked_grid_game(c, record)]
    status = grid_status(plays, record.settings.grid_threshold, str(group["backbone"].iloc[0]),
                         model_namer(record.config, with_kind=True), [c.header for c in empty]) if plays else None
    families = by_family([c for c in table_columns() if c in present or (status and c in empty)])
    notes = {"faithfulness": [f"Faithfulness across substrates (SRG = LeRF − MoRF AUC{game_images_note(record)}), "
                              "one column per substrate; controls skip these columns."],
             "discrimination": [discrimination_note(record)] + ([status] if status else []),
             "parts": [PARTS_NOTE], "causal": shortcut_note(group, record)}
    found = [(name, FAMILIES.get(name, name), columns, False) for name, columns in families.items()]
    found.append(("normalised", "normalised (0 = random, 1 = oracle)", normalised_columns(group), True))
    tables = []
    width = MAX_COLUMNS - 2
    for name, title, columns, normalised in found:
        for start in range(0, len(columns), width):
            part = columns[start:start + width]
            lines = notes.get(name, []) + protocol_notes(part, record)
            if not normalised:
                lines += reported_note(part, reported)
            if normalised:
                lines = ["(value − random) / (oracle − random) with the same kind's controls; controls left out."] + lines
            tables.append(Table(name + (f"-{start // width + 1}" if start else ""), title, part, lines, normalised))
    return tables


def _asked_grid_game(column: Column, record: RunRecord) -> bool:
    """Whether ``column`` is a grid game the run asked for (eval.grid_games)."""
    from ..metrics import METRICS

    info = METRICS[column.metric]
    return info.selected_by == "grid_games" and info.selected(record.settings)


def table_rows(group: pd.DataFrame, table: Table) -> pd.DataFrame:
    """The rows a table shows: those with a value in it (controls skip the substrates), controls not normalised;
    every row where none has one (a grid game no model could play: its dashes, under the line that says why)."""
    keep = group[[f"{c.metric}_mean" for c in table.columns]].notna().any(axis=1)
    if not keep.any():
        keep = pd.Series(True, index=group.index)
    if table.normalised:
        keep &= ~group["reference"].astype(bool)
    return group[keep]


def markdown_tables(frame: pd.DataFrame, record: RunRecord,
                    agreement: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
                    reported: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
                    grids: Mapping[tuple[str, str], Sequence[GridPlay]] | None = None) -> str:
    parts = []
    for (dataset, backbone), group in frame.groupby(["dataset", "backbone"], sort=False):
        not_ranked = (reported or {}).get((dataset, backbone), {})
        for table in full_tables(group, record, not_ranked, (grids or {}).get((dataset, backbone), ())):
            heads = ["Kind", "Method"] + [table_header(c, {} if table.normalised else not_ranked) for c in table.columns]
            lines = [f"### {dataset} / {backbone} — {table.title}", ""] + (table.notes + [""] if table.notes else [])
            lines += ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(table.columns)) + "|"]
            for _, row in table_rows(group, table).iterrows():
                cells = [str(row["kind"]), method_label(row, ("*", "*"))]
                cells += [format_number(row[f"{c.metric}_norm"], 2) if table.normalised
                          else cell_text(row, c, ("**", "**"), "±", ("[", "]")) for c in table.columns]
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
            if table.name == "faithfulness" and agreement and (dataset, backbone) in agreement:
                parts.append(agreement_text(agreement[(dataset, backbone)]))
    return "\n\n".join(parts)


def discrimination_note(record: RunRecord) -> str:
    """How the discrimination table's grids were made (the count per model is the ``grid_count_NxN``
    metric of each cell: 0 where too few images were confident; camzoo.bench.grid_status says so)."""
    return (f"Grid games: up to {record.settings.grid_count} grids per model of evaluation images "
            f"classified correctly with confidence ≥ {record.settings.grid_threshold:g}; chance: 1/N² per N×N grid, "
            "0.5 for Focus.")


def agreement_text(found: Mapping[str, Any]) -> str:
    """Kendall's tau between the substrates' rankings of the methods (controls left out)."""
    pairs = ", ".join(f"{a} vs {b}: {tau:.2f}" for (a, b), tau in found["pairs"].items())
    return (f"Rank agreement of the {len(found['methods'])} method rows across substrates (Kendall's tau-b; "
            f"1 = the same ranking, -1 = reversed): {pairs}; mean {found['mean_tau']:.2f}.")


def normalised_columns(frame: pd.DataFrame) -> list[Column]:
    """The columns that have normalised scores (controls present and apart) in this frame."""
    return [c for c in present_columns(frame) if f"{c.metric}_norm" in frame and frame[f"{c.metric}_norm"].notna().any()]


def latex(text: str) -> str:
    """Table text as LaTeX: arrows, ≈, en dashes and the characters LaTeX reserves."""
    for old, new in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#"),
                     ("–", "--"), ("−", "$-$"), ("±", "$\\pm$"), (TIE, "$\\approx$"), ("↑", "$\\uparrow$"),
                     ("↓", "$\\downarrow$"), ("≥", "$\\geq$"), ("†", "$^\\dagger$"), ("α", "$\\alpha$"),
                     ("δ", "$\\delta$"), ("τ", "$\\tau$"), ("ρ", "$\\rho$"), ("<", "$<$"), (">", "$>$"), ("²", "$^2$"),
                     ("×", "$\\times$")):
        text = text.replace(old, new)
    return text


def latex_cell(row: pd.Series, column: Column) -> str:
    """A full table's cell as LaTeX: bold when significantly best."""
    mean, detail, mark = cell_parts(row, column)
    text = latex(mean + detail + mark)
    return f"\\textbf{{{text}}}" if row.get(f"{column.metric}_best", False) and mean != "–" else text


def latex_table(caption: str, heads: list[str], rows: list[list[str]], labels: int,
                controls: list[list[str]] | None = None) -> str:
    """One booktabs table of LaTeX cells: ``labels`` left-aligned columns, then numbers; ``controls``
    below a rule of their own."""
    spec = "l" * labels + "r" * (len(heads) - labels)
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(heads) + " \\\\", "\\midrule"]
    lines += [" & ".join(row) + " \\\\" for row in rows]
    if controls:
        lines += ["\\midrule"] + [" & ".join(row) + " \\\\" for row in controls]
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}", "\\end{table}"])


def latex_tables(frame: pd.DataFrame, record: RunRecord,
                 reported: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
                 grids: Mapping[tuple[str, str], Sequence[GridPlay]] | None = None) -> str:
    """summary.tex's full tables: one booktabs table per metric family, at most MAX_COLUMNS columns each."""
    parts = []
    for (dataset, backbone), group in frame.groupby(["dataset", "backbone"], sort=False):
        not_ranked = (reported or {}).get((dataset, backbone), {})
        for table in full_tables(group, record, not_ranked, (grids or {}).get((dataset, backbone), ())):
            cells = ("normalised scores" if table.normalised else
                     "mean ± sample std over seeds (stability: over seed pairs) [95 % hierarchical bootstrap CI]; bold: "
                     "significantly best (Wilcoxon signed-rank, Holm, p < 0.05); ≈: tied for best; controls in italics")
            caption = latex(" ".join([f"{dataset} / {backbone}, {table.title}.", *table.notes, f"Cells: {cells}."]))
            rows = []
            for _, row in table_rows(group, table).iterrows():
                method = latex(str(row["method"]))
                method = f"\\textit{{{method}}} (control)" if row.get("reference", False) else method
                rows.append([latex(str(row["kind"])), method]
                            + [latex(format_number(row[f"{c.metric}_norm"], 2)) if table.normalised else latex_cell(row, c)
                               for c in table.columns])
            heads = [latex(table_header(c, {} if table.normalised else not_ranked)) for c in table.columns]
            parts.append(latex_table(caption, ["Kind", "Method"] + heads, rows, 2))
    return "\n\n".join(parts) + "\n"
